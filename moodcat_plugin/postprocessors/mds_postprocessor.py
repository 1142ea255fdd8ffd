"""Mahalanobis distance score (MDS; Lee et al. 2018, OpenOOD v1.5's variant without input
preprocessing or layer ensembling): conf = max_c -(f - mu_c)^T P (f - mu_c) <= 0 on the
penultimate feature f; pred = argmax logits.

Fit on the ID training images (their true labels), as OpenOOD does: class means mu_c and one
shared precision P = ``sklearn.covariance.EmpiricalCovariance`` of the class-centred features
(float32). The quadratic form is evaluated per sample as sum((d @ P) * d) instead of OpenOOD's
diagonal of the batch's (B, B) product: same values to float32 rounding. Needs: features.
"""
from __future__ import annotations

import numpy as np
import sklearn.covariance
import torch

from moodcat_plugin.postprocessors.activation_shaping import class_means
from moodcat_plugin.postprocessors.base_postprocessor import BasePostprocessor
from moodcat_plugin.registry import register_postprocessor


def shared_precision(centred: torch.Tensor) -> torch.Tensor:
    """(D, D) float32 precision of already centred rows (N, D) (EmpiricalCovariance, mean re-estimated)."""
    fitted = sklearn.covariance.EmpiricalCovariance(assume_centered=False).fit(centred.numpy().astype(np.float32))
    return torch.from_numpy(fitted.precision_).float()


def mahalanobis(features: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """(N,) (f - mean)^T P (f - mean) for every row f of features (N, D)."""
    centred = features - mean.view(1, -1)
    return ((centred @ precision) * centred).sum(dim=1)


def fit_class_gaussians(features: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """(class means (C, D), shared precision (D, D)) from labelled training features."""
    means = class_means(features, torch.ones_like(labels, dtype=torch.bool), labels, num_classes)
    centred = torch.cat([features[labels.eq(c)] - means[c].view(1, -1) for c in range(num_classes)])
    return means, shared_precision(centred)


@register_postprocessor("mds")
class MDSPostprocessor(BasePostprocessor):
    """Needs: features; fit: class Gaussians on ID train."""

    fits_on = "ID train (labels)"

    needs = "features"

    def setup(self, net, id_loader_dict, ood_loader_dict) -> None:
        train = self.outputs_of(net, id_loader_dict["train"])
        self.class_mean, self.precision = fit_class_gaussians(train.features, train.labels, train.logits.shape[1])

    def class_scores(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C) -Mahalanobis distance to each class mean."""
        return torch.stack([-mahalanobis(features, mean, self.precision) for mean in self.class_mean], dim=1)

    def postprocess_features(self, logits: torch.Tensor, features: torch.Tensor):
        return logits.argmax(dim=1), self.class_scores(features).max(dim=1).values
