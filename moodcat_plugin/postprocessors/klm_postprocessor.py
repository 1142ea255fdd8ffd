"""KL matching (KLM; Hendrycks et al. 2022): conf = -min_c KL(softmax(x) || q_c) <= 0.

q_c is the mean softmax of the ID-validation images predicted as class c (one-hot e_c when none
is), fitted as OpenOOD v1.5 does. KL as ``scipy.stats.entropy(p, q)`` (both renormalised to sum
1), computed for all pairs at once with ``scipy.special.rel_entr`` instead of OpenOOD's
per-pair callback (same values to float32 rounding, much faster). Needs: logits.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.special import rel_entr

from moodcat_plugin.postprocessors.base_postprocessor import BasePostprocessor
from moodcat_plugin.registry import register_postprocessor

ROWS_PER_CHUNK = 2048


def min_kl_to_templates(probs: np.ndarray, templates: np.ndarray) -> np.ndarray:
    """(N,) min over the C templates (C, K) of KL(p || q), p and q renormalised; float64."""
    p = probs / probs.sum(axis=1, keepdims=True)
    q = templates / templates.sum(axis=1, keepdims=True)
    out = np.empty(len(p))
    for start in range(0, len(p), ROWS_PER_CHUNK):
        chunk = p[start:start + ROWS_PER_CHUNK, None, :]
        out[start:start + ROWS_PER_CHUNK] = rel_entr(chunk, q[None]).sum(axis=2).min(axis=1)
    return out


@register_postprocessor("klm")
class KLMPostprocessor(BasePostprocessor):
    """Needs: logits; fit: class templates on ID val (predicted classes)."""

    fits_on = "ID val"

    def setup(self, net, id_loader_dict, ood_loader_dict) -> None:
        logits = self.outputs_of(net, id_loader_dict["val"]).logits
        probs, preds = torch.softmax(logits, dim=1), logits.argmax(dim=1)
        num_classes = logits.shape[1]
        templates = np.eye(num_classes)
        for c in range(num_classes):
            if preds.eq(c).any():
                templates[c] = probs[preds.eq(c)].mean(0).numpy()
        self.templates = templates

    def postprocess_logits(self, logits: torch.Tensor):
        probs = torch.softmax(logits, dim=1).numpy().astype(np.float64)
        return logits.argmax(dim=1), torch.from_numpy(-min_kl_to_templates(probs, self.templates))
