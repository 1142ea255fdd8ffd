"""Postprocessors: importing this package registers every built-in postprocessor (one per module)."""
from moodcat_plugin.postprocessors.base_postprocessor import BasePostprocessor
from moodcat_plugin.postprocessors.ash_postprocessor import ASHPostprocessor
from moodcat_plugin.postprocessors.dice_postprocessor import DICEPostprocessor
from moodcat_plugin.postprocessors.ebo_postprocessor import EBOPostprocessor
from moodcat_plugin.postprocessors.gen_postprocessor import GENPostprocessor
from moodcat_plugin.postprocessors.klm_postprocessor import KLMPostprocessor
from moodcat_plugin.postprocessors.knn_postprocessor import KNNPostprocessor
from moodcat_plugin.postprocessors.mcd_postprocessor import MCDPostprocessor
from moodcat_plugin.postprocessors.mds_postprocessor import MDSPostprocessor
from moodcat_plugin.postprocessors.mls_postprocessor import MLSPostprocessor
from moodcat_plugin.postprocessors.moodcat_postprocessor import MoodcatPostprocessor
from moodcat_plugin.postprocessors.odin_postprocessor import ODINPostprocessor
from moodcat_plugin.postprocessors.react_postprocessor import ReActPostprocessor
from moodcat_plugin.postprocessors.rmds_postprocessor import RMDSPostprocessor
from moodcat_plugin.postprocessors.scale_postprocessor import SCALEPostprocessor
from moodcat_plugin.postprocessors.she_postprocessor import SHEPostprocessor
from moodcat_plugin.postprocessors.temp_scaling_postprocessor import TempScalingPostprocessor
from moodcat_plugin.postprocessors.vim_postprocessor import ViMPostprocessor

__all__ = ["BasePostprocessor", "ASHPostprocessor", "DICEPostprocessor", "EBOPostprocessor", "GENPostprocessor", "KLMPostprocessor", "KNNPostprocessor", "MCDPostprocessor", "MDSPostprocessor", "MLSPostprocessor", "MoodcatPostprocessor", "ODINPostprocessor", "RMDSPostprocessor", "ReActPostprocessor", "SCALEPostprocessor", "SHEPostprocessor", "TempScalingPostprocessor", "ViMPostprocessor"]
