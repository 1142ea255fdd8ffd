"""ASH-B (Djurisic et al. 2023), OpenOOD v1.5's ``ash`` on ResNet18_32x32: per sample, keep the
k = D - round(D * percentile / 100) largest penultimate activations, set each to (sum of all D
activations) / k and the rest to 0, re-apply the final layer, conf = logsumexp (energy).

OpenOOD's ASHNet applies this to the pooled feature before ``fc`` (not inside the conv stack),
so it reads the cached features. No fit; APS over the percentile. Needs: features + final layer.
"""
from __future__ import annotations

import torch

from moodcat_plugin.postprocessors.activation_shaping import (energy_of, final_layer_tensors, kept_count, linear,
                                                              top_k_mask)
from moodcat_plugin.postprocessors.base_postprocessor import BasePostprocessor
from moodcat_plugin.postprocessors.react_postprocessor import PercentileArgs
from moodcat_plugin.registry import register_postprocessor


def ash_binarize(features: torch.Tensor, percentile: float) -> torch.Tensor:
    """(N, D) -> (N, D): top-k entries replaced by row sum / k, others 0."""
    k = kept_count(features.shape[1], percentile)
    fill = (features.sum(dim=1) / k)[:, None].expand_as(features)
    return torch.where(top_k_mask(features, k), fill, torch.zeros_like(features))


@register_postprocessor("ash")
class ASHPostprocessor(BasePostprocessor):
    """Args: percentile. Needs: features + final layer."""

    needs = "features"
    args_schema = PercentileArgs

    def setup(self, net, id_loader_dict, ood_loader_dict) -> None:
        self.weight, self.bias = final_layer_tensors(net)

    def postprocess_features(self, logits: torch.Tensor, features: torch.Tensor):
        return energy_of(linear(ash_binarize(features, self.percentile), self.weight, self.bias))
