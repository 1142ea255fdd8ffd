"""Two-head ResNet18_32x32 for Maximum Classifier Discrepancy (registered ``resnet18_32x32_mcd``).

MCD here is Yu & Aizawa's "Unsupervised Out-of-Distribution Detection by Maximum Classifier
Discrepancy" (ICCV 2019), not Monte-Carlo dropout. A shared backbone feeds two linear heads.
Head 1 is the ``fc`` of an unmodified :class:`ResNet18_32x32` held as ``backbone`` (parameter
names ``backbone.*`` match OpenOOD's ResNet18_32x32, so ``net.backbone`` alone is a normal
classifier); head 2 is ``fc2``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from moodcat_plugin.networks.resnet18_32x32 import ResNet18_32x32, ResNetConfig, forward_with_extra_head
from moodcat_plugin.registry import register_network


@register_network("resnet18_32x32_mcd")
class ResNet18_32x32_MCD(nn.Module):
    """Input (B, 3, 32, 32) normalised; ``forward(x)`` -> head-1 logits (B, num_classes).

    ``forward(x, return_double=True)`` -> (head-1 logits, head-2 logits), both (B, num_classes);
    ``return_feature`` / ``return_feature_list`` behave as in ResNet18_32x32 (head-1 logits).
    """

    config_schema = ResNetConfig

    def __init__(self, num_classes: int = 10, width: float = 1.0):
        super().__init__()
        self.backbone = ResNet18_32x32(num_classes=num_classes, width=width)
        self.feature_size = self.backbone.feature_size
        self.num_classes = num_classes
        self.fc2 = nn.Linear(self.feature_size, num_classes)

    def forward(self, x: torch.Tensor, return_double: bool = False, return_feature: bool = False,
                return_feature_list: bool = False):
        return forward_with_extra_head(self.backbone, self.fc2, x, return_double, return_feature, return_feature_list)
