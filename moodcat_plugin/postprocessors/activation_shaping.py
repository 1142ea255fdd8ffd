"""Shared pieces of the post-hoc detectors that reshape the penultimate features (ReAct, ASH,
SCALE, DICE) or fit statistics on them (MDS, RMDS, SHE, ...).

Every function works on whole tensors of cached outputs (features (N, D), logits (N, C)); the
detectors that use them declare ``needs = "features"``. For ResNet18_32x32 OpenOOD v1.5 applies
ReAct, ASH and SCALE to the pooled penultimate feature right before ``fc`` (its ReactNet, ASHNet
and ScaleNet wrappers call ``backbone(x, return_feature=True)`` and then ``get_fc_layer()``), so
the cached features are exactly their input.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

from moodcat_plugin.postprocessors.base_postprocessor import final_layer


def final_layer_tensors(net) -> Tuple[torch.Tensor, torch.Tensor]:
    """(weight (C, D), bias (C,)) of ``net.fc`` as float32 CPU tensors."""
    weight, bias = final_layer(net)
    return torch.from_numpy(weight), torch.from_numpy(bias)


def energy_of(logits: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(argmax (N,), logsumexp (N,)) of logits (N, C): the energy score with T = 1."""
    return logits.argmax(dim=1), torch.logsumexp(logits, dim=1)


def kept_count(size: int, percentile: float) -> int:
    """How many of ``size`` activations ASH/SCALE keep at ``percentile``: size - round(size * p / 100)."""
    return size - int(np.round(size * percentile / 100.0))


def top_k_mask(features: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean (N, D): True at each row's ``k`` largest entries (``torch.topk``'s choice on ties)."""
    index = torch.topk(features, k, dim=1).indices
    return torch.zeros_like(features, dtype=torch.bool).scatter_(1, index, True)


def linear(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The final layer applied to (reshaped) features: (N, D) -> (N, C)."""
    return F.linear(features, weight, bias)


def class_means(features: torch.Tensor, keep: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, D) mean feature of the rows of each class c where ``keep & labels == c`` (NaN rows for
    a class with none, as a mean over nothing is)."""
    return torch.stack([features[keep & labels.eq(c)].mean(0) for c in range(num_classes)])
