"""ResNet18_32x32 with UDG's auxiliary cluster head (registered as ``resnet18_32x32_udg``).

UDG (Yang et al., "Semantically Coherent Out-of-Distribution Detection", ICCV 2021) trains the
classifier together with an auxiliary linear head that predicts each sample's k-means cluster id.
The classifier is an unmodified :class:`ResNet18_32x32` held as ``backbone``: its parameters keep
OpenOOD's names under the ``backbone.`` prefix, so ``net.backbone.state_dict()`` loads strictly
into a plain ``ResNet18_32x32`` (and OpenOOD's) and ``forward(x)`` returns the class logits, as
MSP and the evaluator expect. The auxiliary head ``fc_aux`` is used only during training.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from moodcat_plugin.networks.resnet18_32x32 import ResNet18_32x32, ResNetConfig, forward_with_extra_head
from moodcat_plugin.registry import register_network
from moodcat_plugin.schema import integer


class UDGNetConfig(ResNetConfig):
    num_clusters: integer(ge=1) = 1000  # initial head size only (the trainer resets it)


@register_network("resnet18_32x32_udg")
class ResNet18_32x32_UDG(nn.Module):
    """Input (B, 3, 32, 32) normalised; ``forward(x)`` -> class logits (B, num_classes).

    ``forward(x, return_aux=True)`` -> (class logits (B, num_classes), cluster logits
    (B, num_clusters)); ``return_feature`` / ``return_feature_list`` behave as in ResNet18_32x32.
    ``num_clusters`` is only the initial head size: the UDG trainer calls
    :meth:`reset_cluster_head` with the number of clusters it derives from the data size.
    """

    config_schema = UDGNetConfig

    def __init__(self, num_classes: int = 10, width: float = 1.0, num_clusters: int = 1000):
        super().__init__()
        self.backbone = ResNet18_32x32(num_classes=num_classes, width=width)
        self.feature_size = self.backbone.feature_size
        self.num_classes = num_classes
        self.fc_aux = nn.Linear(self.feature_size, num_clusters)
        self.reset_cluster_head(num_clusters)

    @property
    def num_clusters(self) -> int:
        return self.fc_aux.out_features

    def reset_cluster_head(self, num_clusters: int) -> None:
        """Fresh auxiliary head for ``num_clusters`` clusters (N(0, 0.01) weights, zero bias, as
        OpenOOD re-initialises it after every clustering: cluster ids change meaning each time)."""
        if num_clusters != self.fc_aux.out_features:
            weight = self.fc_aux.weight
            self.fc_aux = nn.Linear(self.feature_size, num_clusters).to(weight.device, weight.dtype)
        with torch.no_grad():
            self.fc_aux.weight.normal_(mean=0.0, std=0.01)
            self.fc_aux.bias.zero_()

    def forward(self, x: torch.Tensor, return_aux: bool = False, return_feature: bool = False,
                return_feature_list: bool = False):
        return forward_with_extra_head(self.backbone, self.fc_aux, x, return_aux, return_feature, return_feature_list)
