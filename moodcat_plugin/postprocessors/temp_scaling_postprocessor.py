"""Temperature scaling (Guo et al. 2017): conf = max softmax(logits / T) in (0, 1].

T is fitted on the ID validation set as OpenOOD v1.5 does: a single parameter initialised at
1.5, minimising the mean cross-entropy of logits / T with ``torch.optim.LBFGS(lr=0.01,
max_iter=50)`` (one ``step``). Needs: logits (ID-val logits for the fit come from the shared pass).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from moodcat_plugin.postprocessors.base_postprocessor import BasePostprocessor
from moodcat_plugin.registry import register_postprocessor

INITIAL_TEMPERATURE = 1.5


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 that LBFGS (lr 0.01, at most 50 iterations) reaches from 1.5 on CE(logits / T, labels)."""
    temperature = torch.nn.Parameter(torch.ones(1) * INITIAL_TEMPERATURE)
    optimizer = torch.optim.LBFGS([temperature], lr=0.01, max_iter=50)

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / temperature, labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(temperature.detach())


@register_postprocessor("temp_scaling")
class TempScalingPostprocessor(BasePostprocessor):
    """Needs: logits; fit: T on ID-val labels. Stores the fitted ``temperature`` in ``run_meta``."""

    fits_on = "ID val (labels)"

    def setup(self, net, id_loader_dict, ood_loader_dict) -> None:
        val = self.outputs_of(net, id_loader_dict["val"])
        self.temperature = fit_temperature(val.logits, val.labels)
        self.run_meta = {"fitted_temperature": self.temperature}

    def postprocess_logits(self, logits: torch.Tensor):
        conf, pred = torch.softmax(logits / self.temperature, dim=1).max(dim=1)
        return pred, conf
