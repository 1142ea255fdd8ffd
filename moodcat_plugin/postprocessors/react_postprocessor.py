"""ReAct (Sun et al. 2021): clip the penultimate features at the ``percentile``-th percentile of
all ID-validation activations, re-apply the final layer, conf = logsumexp (energy); pred =
argmax of the clipped logits.

As OpenOOD v1.5 (ReactNet on ResNet18_32x32): the threshold comes from the ID *validation*
features (flattened, ``numpy.percentile``), APS over the percentile. Needs: features + final layer.
"""
from __future__ import annotations

import numpy as np
import torch

from moodcat_plugin.postprocessors.activation_shaping import energy_of, final_layer_tensors, linear
from moodcat_plugin.postprocessors.base_postprocessor import BasePostprocessor
from moodcat_plugin.registry import register_postprocessor
from moodcat_plugin.schema import Schema, number


class PercentileArgs(Schema):
    percentile: number(ge=0, le=100)


@register_postprocessor("react")
class ReActPostprocessor(BasePostprocessor):
    """Args: percentile. Needs: features + final layer; fit: threshold on ID val."""

    fits_on = "ID val"

    needs = "features"
    args_schema = PercentileArgs

    def setup(self, net, id_loader_dict, ood_loader_dict) -> None:
        self.weight, self.bias = final_layer_tensors(net)
        activations = self.outputs_of(net, id_loader_dict["val"]).features.numpy()
        self.threshold = float(np.percentile(activations.flatten(), self.percentile))
        self.run_meta = {"react_threshold": self.threshold}

    def postprocess_features(self, logits: torch.Tensor, features: torch.Tensor):
        return energy_of(linear(features.clip(max=self.threshold), self.weight, self.bias))
