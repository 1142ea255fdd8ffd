"""Relative Mahalanobis distance score (RMDS; Ren et al. 2021): conf = max_c [-(f - mu_c)^T P
(f - mu_c) + (f - mu_0)^T P_0 (f - mu_0)], the class-conditional score minus that of one
"background" Gaussian (mu_0, P_0) fitted on all training features; pred = argmax logits.

Fit on the ID training images as OpenOOD v1.5 does (both precisions from
``sklearn.covariance.EmpiricalCovariance``). Needs: features.
"""
from __future__ import annotations

import torch

from moodcat_plugin.postprocessors.mds_postprocessor import (MDSPostprocessor, fit_class_gaussians, mahalanobis,
                                                             shared_precision)
from moodcat_plugin.registry import register_postprocessor


@register_postprocessor("rmds")
class RMDSPostprocessor(MDSPostprocessor):
    """Needs: features; fit: class Gaussians and one background Gaussian on ID train."""

    fits_on = "ID train (labels)"

    def setup(self, net, id_loader_dict, ood_loader_dict) -> None:
        train = self.outputs_of(net, id_loader_dict["train"])
        self.class_mean, self.precision = fit_class_gaussians(train.features, train.labels, train.logits.shape[1])
        self.whole_mean = train.features.mean(0)
        self.whole_precision = shared_precision(train.features - self.whole_mean.view(1, -1))

    def postprocess_features(self, logits: torch.Tensor, features: torch.Tensor):
        background = -mahalanobis(features, self.whole_mean, self.whole_precision)
        return logits.argmax(dim=1), (self.class_scores(features) - background[:, None]).max(dim=1).values

