"""Maximum Classifier Discrepancy score (Yu & Aizawa 2019), registered as postprocessor ``mcd``.

Needs a two-head network (``resnet18_32x32_mcd``, trained by trainer ``mcd``):
``conf = -sum_c |softmax(head1)_c - softmax(head2)_c|`` in [-2, 0] (0 = the heads agree = ID-like);
``pred`` = argmax of head 1, as in OpenOOD.
"""
from __future__ import annotations

from typing import Tuple

import torch

from moodcat_plugin.errors import ConfigError
from moodcat_plugin.postprocessors.base_postprocessor import BasePostprocessor
from moodcat_plugin.registry import register_postprocessor


def head_discrepancy(logits1: torch.Tensor, logits2: torch.Tensor) -> torch.Tensor:
    """L1 distance between the heads' softmax outputs: (B, C) x 2 -> (B,) in [0, 2]."""
    return (torch.softmax(logits1, dim=1) - torch.softmax(logits2, dim=1)).abs().sum(dim=1)


@register_postprocessor("mcd")
class MCDPostprocessor(BasePostprocessor):
    """conf = -L1(softmax head 1, softmax head 2); pred from head 1."""

    needs = "forward"

    @torch.no_grad()
    def postprocess(self, net, data: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """data (B, 3, H, W) normalised -> (pred (B,) int64, conf (B,) in [-2, 0])."""
        try:
            logits1, logits2 = net(data, return_double=True)
        except TypeError as exc:
            raise ConfigError(
                f"postprocessor 'mcd' needs a two-head network whose forward accepts return_double=True "
                f"({type(net).__name__} does not); use network resnet18_32x32_mcd trained by trainer 'mcd' "
                "(configs/postprocessors/mcd.yml sets both)") from exc
        return logits1.argmax(dim=1), -head_discrepancy(logits1, logits2)
