"""DICE (Sun & Li 2022): sparsify the final layer by contribution, conf = logsumexp of the
sparsified logits (energy); pred = their argmax.

Contribution of weight w_cj = mean ID-training activation a_j * w_cj; weights whose contribution
is not above the ``p``-th percentile (``numpy.percentile`` over all C x D) are zeroed, as in
OpenOOD v1.5. Needs: features + final layer; fit: mean activation on ID train.
"""
from __future__ import annotations

import numpy as np
import torch

from moodcat_plugin.postprocessors.activation_shaping import energy_of, final_layer_tensors, linear
from moodcat_plugin.postprocessors.base_postprocessor import BasePostprocessor
from moodcat_plugin.registry import register_postprocessor
from moodcat_plugin.schema import Schema, number


class DICEArgs(Schema):
    p: number(ge=0, le=100)


@register_postprocessor("dice")
class DICEPostprocessor(BasePostprocessor):
    """Args: p (sparsity percentile). Needs: features + final layer; fit: ID train."""

    fits_on = "ID train"

    needs = "features"
    args_schema = DICEArgs

    def setup(self, net, id_loader_dict, ood_loader_dict) -> None:
        weight, self.bias = final_layer_tensors(net)
        mean_act = self.outputs_of(net, id_loader_dict["train"]).features.numpy().mean(0)
        contribution = mean_act[None, :] * weight.numpy()
        self.masked_weight = weight * torch.from_numpy(contribution > np.percentile(contribution, self.p))

    def postprocess_features(self, logits: torch.Tensor, features: torch.Tensor):
        return energy_of(linear(features, self.masked_weight, self.bias))
