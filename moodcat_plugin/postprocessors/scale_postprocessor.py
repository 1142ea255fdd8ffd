"""SCALE (Xu et al. 2024): per sample, r = (sum of all D penultimate activations) / (sum of the
k = D - round(D * percentile / 100) largest); the whole feature is multiplied by exp(r), the final
layer re-applied, conf = logsumexp (energy).

As OpenOOD's ``scale`` (ScaleNet on the pooled feature before ``fc``), so it reads the cached
features. No fit; APS over the percentile. Needs: features + final layer.
"""
from __future__ import annotations

import torch

from moodcat_plugin.postprocessors.activation_shaping import (energy_of, final_layer_tensors, kept_count, linear,
                                                              top_k_mask)
from moodcat_plugin.postprocessors.base_postprocessor import BasePostprocessor
from moodcat_plugin.postprocessors.react_postprocessor import PercentileArgs
from moodcat_plugin.registry import register_postprocessor


def scale_features(features: torch.Tensor, percentile: float) -> torch.Tensor:
    """(N, D) -> (N, D) features * exp(total sum / top-k sum)."""
    kept = torch.where(top_k_mask(features, kept_count(features.shape[1], percentile)), features,
                       torch.zeros_like(features))
    ratio = features.sum(dim=1) / kept.sum(dim=1)
    return features * torch.exp(ratio)[:, None]


@register_postprocessor("scale")
class SCALEPostprocessor(BasePostprocessor):
    """Args: percentile. Needs: features + final layer."""

    needs = "features"
    args_schema = PercentileArgs

    def setup(self, net, id_loader_dict, ood_loader_dict) -> None:
        self.weight, self.bias = final_layer_tensors(net)

    def postprocess_features(self, logits: torch.Tensor, features: torch.Tensor):
        return energy_of(linear(scale_features(features, self.percentile), self.weight, self.bias))
