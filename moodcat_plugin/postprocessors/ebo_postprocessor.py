"""Energy-based OOD score (Liu et al. 2020): conf = T * logsumexp(logits / T)."""
from __future__ import annotations

import torch

from moodcat_plugin.postprocessors.base_postprocessor import BasePostprocessor
from moodcat_plugin.registry import register_postprocessor
from moodcat_plugin.schema import Schema, number


class EBOArgs(Schema):
    temperature: number(gt=0)


@register_postprocessor("ebo")
class EBOPostprocessor(BasePostprocessor):
    """Negative free energy; unbounded real conf, higher = more in-distribution. Args: temperature."""

    args_schema = EBOArgs

    def postprocess_logits(self, logits: torch.Tensor):
        conf = self.temperature * torch.logsumexp(logits / self.temperature, dim=1)
        return logits.argmax(dim=1), conf
