"""Postprocessors: importing this package registers every built-in postprocessor (one per module)."""
from moodcat_plugin.postprocessors.base_postprocessor import BasePostprocessor
from moodcat_plugin.postprocessors.ebo_postprocessor import EBOPostprocessor
from moodcat_plugin.postprocessors.mcd_postprocessor import MCDPostprocessor
from moodcat_plugin.postprocessors.moodcat_postprocessor import MoodcatPostprocessor
from moodcat_plugin.postprocessors.odin_postprocessor import ODINPostprocessor

__all__ = ["BasePostprocessor", "EBOPostprocessor", "MCDPostprocessor", "MoodcatPostprocessor", "ODINPostprocessor"]
