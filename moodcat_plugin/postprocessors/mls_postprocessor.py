"""Maximum logit score (MLS; Hendrycks et al. 2022): conf = max_c logits_c (unbounded), pred = argmax."""
from __future__ import annotations

import torch

from moodcat_plugin.postprocessors.base_postprocessor import BasePostprocessor
from moodcat_plugin.registry import register_postprocessor


@register_postprocessor("mls")
class MLSPostprocessor(BasePostprocessor):
    """Needs: logits. No arguments, no fit."""

    def postprocess_logits(self, logits: torch.Tensor):
        conf, pred = logits.max(dim=1)
        return pred, conf
