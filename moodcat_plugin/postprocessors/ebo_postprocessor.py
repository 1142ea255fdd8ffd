"""Energy-based OOD score (Liu et al. 2020): conf = T * logsumexp(logits / T)."""
from __future__ import annotations

import torch

from moodcat_plugin.postprocessors.base_postprocessor import BasePostprocessor
from moodcat_plugin.registry import register_postprocessor


@register_postprocessor("ebo")
class EBOPostprocessor(BasePostprocessor):
    """Negative free energy; unbounded real conf, higher = more in-distribution. Args: temperature."""

    def postprocess_logits(self, logits: torch.Tensor):
        conf = self.temperature * torch.logsumexp(logits / self.temperature, dim=1)
        return logits.argmax(dim=1), conf
