"""Postprocessors: importing this package registers every built-in postprocessor."""
from moodcat_plugin.postprocessors.base_postprocessor import BasePostprocessor
from moodcat_plugin.postprocessors.ebo_postprocessor import EBOPostprocessor
from moodcat_plugin.postprocessors.odin_postprocessor import ODINPostprocessor

__all__ = ["BasePostprocessor", "EBOPostprocessor", "ODINPostprocessor"]
from moodcat_plugin.postprocessors.mcd_postprocessor import MCDPostprocessor  # noqa: E402,F401
from moodcat_plugin.postprocessors import moodcat_postprocessor  # noqa: F401
