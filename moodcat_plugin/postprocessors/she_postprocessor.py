"""Simplified Hopfield energy (SHE; Zhang et al. 2023): conf = similarity between the penultimate
feature and the stored pattern of its predicted class; pred = argmax logits.

The pattern of class c is the mean feature of the ID training images of class c that the
classifier also predicts as c (OpenOOD v1.5). Similarity (``metric``): inner_product (default,
unbounded), euclidean (minus the distance, <= 0) or cosine ([-1, 1]). Needs: features; fit: ID train.
"""
from __future__ import annotations

import torch

from moodcat_plugin.postprocessors.activation_shaping import class_means
from moodcat_plugin.postprocessors.base_postprocessor import BasePostprocessor
from moodcat_plugin.registry import register_postprocessor
from moodcat_plugin.schema import Schema, choice


class SHEArgs(Schema):
    metric: choice("inner_product", "euclidean", "cosine")


def similarity(features: torch.Tensor, patterns: torch.Tensor, metric: str) -> torch.Tensor:
    """(N,) similarity of each row of features (N, D) to the matching row of patterns (N, D)."""
    if metric == "inner_product":
        return torch.sum(features * patterns, dim=1)
    if metric == "euclidean":
        return -torch.sqrt(torch.sum((features - patterns) ** 2, dim=1))
    return torch.cosine_similarity(features, patterns, dim=1)


@register_postprocessor("she")
class SHEPostprocessor(BasePostprocessor):
    """Args: metric. Needs: features; fit: class patterns on correctly classified ID train."""

    fits_on = "ID train (labels)"

    needs = "features"
    args_schema = SHEArgs

    def setup(self, net, id_loader_dict, ood_loader_dict) -> None:
        train = self.outputs_of(net, id_loader_dict["train"])
        preds = train.logits.argmax(dim=1)
        self.patterns = class_means(train.features, preds.eq(train.labels), train.labels, train.logits.shape[1])

    def postprocess_features(self, logits: torch.Tensor, features: torch.Tensor):
        pred = logits.argmax(dim=1)
        return pred, similarity(features, self.patterns[pred], self.metric)
