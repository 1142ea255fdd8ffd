"""ResNet-18 for 32x32 inputs with OpenOOD's parameter names and forward signature.

At ``width=1`` the state dict matches OpenOOD v1.5's ``ResNet18_32x32`` key for key and shape
for shape, so its released checkpoints load strictly. ``width`` scales every stage's channels
(64, 128, 256, 512) for CPU-sized variants.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F

from moodcat_plugin.registry import register_network
from moodcat_plugin.schema import NetworkConfig, number


class ResNetConfig(NetworkConfig):
    """``width`` scales every channel count (1.0 = OpenOOD's network, loads its checkpoints)."""

    width: number(gt=0) = 1.0


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or 1x1 conv-BN ``shortcut``."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


@register_network("resnet18_32x32")
class ResNet18_32x32(nn.Module):
    """Input (B, 3, 32, 32) normalised; output logits (B, num_classes).

    ``forward(x, return_feature=True)`` -> (logits, penultimate feature (B, feature_size));
    ``return_feature_list=True`` -> (logits, [stem, layer1, layer2, layer3, pooled layer4]).
    """

    config_schema = ResNetConfig

    def __init__(self, num_classes: int = 10, width: float = 1.0):
        super().__init__()
        widths = [max(1, int(round(c * width))) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = self._make_layer(widths[0], widths[0], stride=1)
        self.layer2 = self._make_layer(widths[0], widths[1], stride=2)
        self.layer3 = self._make_layer(widths[1], widths[2], stride=2)
        self.layer4 = self._make_layer(widths[2], widths[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        self.feature_size = widths[3]
        self.num_classes = num_classes

    @staticmethod
    def _make_layer(in_planes: int, planes: int, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1))

    def features(self, x: torch.Tensor) -> List[torch.Tensor]:
        stem = F.relu(self.bn1(self.conv1(x)))
        f2 = self.layer1(stem)
        f3 = self.layer2(f2)
        f4 = self.layer3(f3)
        pooled = self.avgpool(self.layer4(f4))
        return [stem, f2, f3, f4, pooled]

    def forward(self, x: torch.Tensor, return_feature: bool = False, return_feature_list: bool = False):
        feature_list = self.features(x)
        feature = feature_list[-1].flatten(1)
        logits = self.fc(feature)
        if return_feature:
            return logits, feature
        if return_feature_list:
            return logits, feature_list
        return logits

    def get_fc(self):
        """(weight (C, D), bias (C,)) of ``fc`` as numpy arrays: the accessor OpenOOD's ViM, DICE and
        its ReactNet/ASHNet/ScaleNet wrappers call."""
        return self.fc.weight.detach().cpu().numpy(), self.fc.bias.detach().cpu().numpy()

    def get_fc_layer(self) -> nn.Linear:
        return self.fc


def forward_with_extra_head(backbone: ResNet18_32x32, extra_head: nn.Module, x: torch.Tensor, return_extra: bool,
                            return_feature: bool, return_feature_list: bool):
    """Forward of a ResNet18_32x32 ``backbone`` with a second linear head on its pooled feature.

    ``return_extra`` -> (class logits, extra-head logits); otherwise the backbone's own outputs.
    """
    logits, feature_list = backbone(x, return_feature_list=True)
    feature = feature_list[-1].flatten(1)
    if return_extra:
        return logits, extra_head(feature)
    if return_feature:
        return logits, feature
    if return_feature_list:
        return logits, feature_list
    return logits
