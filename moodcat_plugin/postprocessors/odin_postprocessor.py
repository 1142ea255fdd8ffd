"""ODIN (Liang et al. 2018): temperature scaling plus a small input perturbation.

The perturbation follows OpenOOD: gradient of CE(logits / T, argmax) w.r.t. the normalised
input, its sign divided by the per-channel normalisation std (so the step is ``noise`` in pixel
units), x <- x - noise * grad, then conf = max softmax(logits(x) / T).
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


@register_postprocessor("odin")
class ODINPostprocessor(BasePostprocessor):
    """Args: temperature (T), noise (pixel-space step). conf in (0, 1]."""

    uses_logits_only = False
    args_schema = ODINArgs

    def __init__(self, config):
        super().__init__(config)
        self.std = torch.tensor(config.dataset.normalization.std, dtype=torch.float32).view(1, 3, 1, 1)

    def postprocess(self, net, data: torch.Tensor):
        data = data.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            logits = net(data)
            pred = logits.argmax(dim=1)
            loss = F.cross_entropy(logits / self.temperature, pred)
            (grad,) = torch.autograd.grad(loss, data)
        step = grad.sign() / self.std.to(data.device)
        with torch.no_grad():
            perturbed_logits = net(data.detach() - self.noise * step)
            conf = torch.softmax(perturbed_logits / self.temperature, dim=1).max(dim=1).values
        return pred, conf
