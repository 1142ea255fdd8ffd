"""ODIN (Liang et al. 2018): temperature scaling plus a small input perturbation.

Follows OpenOOD v1.5 step for step, so scores are bit-identical on contiguous inputs
(tests/test_openood_equality.py): the gradient of CE(logits / T, argmax) w.r.t. the normalised
input becomes +1 where it is >= 0 and -1 elsewhere (a zero gradient counts as +1, unlike
``torch.sign``), is divided by the per-channel normalisation std (so the step is ``noise`` in
pixel units), x <- x - noise * that (one fused ``torch.add(..., alpha=-noise)``), and conf is the
max of the max-subtracted softmax of logits(x) / T.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from moodcat_plugin.postprocessors.base_postprocessor import BasePostprocessor
from moodcat_plugin.registry import register_postprocessor
from moodcat_plugin.schema import Schema, number


class ODINArgs(Schema):
    temperature: number(gt=0)
    noise: number(ge=0)   # pixel-space step


def stable_softmax(logits: torch.Tensor) -> torch.Tensor:
    """exp(l - max l) / sum exp(l - max l) over dim 1, in that order of operations (OpenOOD's ODIN)."""
    shifted = logits - logits.max(dim=1, keepdim=True).values
    return shifted.exp() / shifted.exp().sum(dim=1, keepdim=True)


@register_postprocessor("odin")
class ODINPostprocessor(BasePostprocessor):
    """Args: temperature (T), noise (pixel-space step). conf in (0, 1]."""

    needs = "forward"
    args_schema = ODINArgs

    def __init__(self, config):
        super().__init__(config)
        self.std = [float(s) for s in config.dataset.normalization.std]

    def postprocess(self, net, data: torch.Tensor):
        data = data.detach().contiguous().clone().requires_grad_(True)
        with torch.enable_grad():
            logits = net(data)
            pred = logits.detach().argmax(dim=1)
            loss = F.cross_entropy(logits / self.temperature, pred)
            (grad,) = torch.autograd.grad(loss, data)
        step = (torch.ge(grad, 0).float() - 0.5) * 2
        for channel, std in enumerate(self.std):
            step[:, channel] = step[:, channel] / std
        with torch.no_grad():
            perturbed = torch.add(data.detach(), step, alpha=-self.noise)
            conf, _ = stable_softmax(net(perturbed) / self.temperature).max(dim=1)
        return pred, conf
