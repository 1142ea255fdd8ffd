"""Generalized entropy (GEN; Liu et al. 2023): conf = -sum over the M largest softmax
probabilities p of p^gamma * (1 - p)^gamma, in [-M * 0.5^(2 gamma), 0]; pred = argmax.

Needs: logits. APS over gamma x M as OpenOOD v1.5's gen.yml (M larger than the class count
keeps every class, as slicing does).
"""
from __future__ import annotations

import torch

from moodcat_plugin.postprocessors.base_postprocessor import BasePostprocessor
from moodcat_plugin.registry import register_postprocessor
from moodcat_plugin.schema import Schema, integer, number


class GENArgs(Schema):
    gamma: number(gt=0)
    M: integer(ge=1)


@register_postprocessor("gen")
class GENPostprocessor(BasePostprocessor):
    """Args: gamma (exponent), M (how many top probabilities)."""

    args_schema = GENArgs

    def postprocess_logits(self, logits: torch.Tensor):
        probs = torch.softmax(logits, dim=1)
        top = torch.sort(probs, dim=1).values[:, -self.M:]
        conf = -torch.sum(top ** self.gamma * (1 - top) ** self.gamma, dim=1)
        return probs.argmax(dim=1), conf
