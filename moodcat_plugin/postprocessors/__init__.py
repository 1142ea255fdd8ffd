"""Postprocessors: importing this package registers every built-in postprocessor."""
from moodcat_plugin.postprocessors.base_postprocessor import BasePostprocessor
from moodcat_plugin.postprocessors.ebo_postprocessor import EBOPostprocessor
from moodcat_plugin.postprocessors.odin_postprocessor import ODINPostprocessor

__all__ = ["BasePostprocessor", "EBOPostprocessor", "ODINPostprocessor"]
