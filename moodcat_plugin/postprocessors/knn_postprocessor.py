"""Deep nearest neighbours (KNN; Sun et al. 2022): conf = -(squared L2 distance from the
normalised penultimate feature to its K-th nearest normalised ID-training feature), in [-4, 0];
pred = argmax logits.

As OpenOOD v1.5: features normalised as f / ||f|| + 1e-10 (the constant is added after the
division, as there), an exact ``faiss.IndexFlatL2`` over the ID training set (faiss-cpu), APS
over K. Needs: features; fit: the index over ID train.
"""
from __future__ import annotations

import logging

logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing logs at INFO

import faiss  # noqa: E402
import numpy as np
import torch

from moodcat_plugin.errors import ConfigError
from moodcat_plugin.postprocessors.base_postprocessor import BasePostprocessor
from moodcat_plugin.registry import register_postprocessor
from moodcat_plugin.schema import Schema, integer


class KNNArgs(Schema):
    K: integer(ge=1)


def normalised(features: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm, then + 1e-10 (OpenOOD's normaliser), float32 contiguous."""
    return np.ascontiguousarray(features / np.linalg.norm(features, axis=-1, keepdims=True) + 1e-10, dtype=np.float32)


@register_postprocessor("knn")
class KNNPostprocessor(BasePostprocessor):
    """Args: K (which neighbour). Needs: features; fit: ID train."""

    fits_on = "ID train"

    needs = "features"
    args_schema = KNNArgs

    def setup(self, net, id_loader_dict, ood_loader_dict) -> None:
        bank = normalised(self.outputs_of(net, id_loader_dict["train"]).features.numpy())
        largest_k = max([self.K, *self.args_dict.get("K", [])])
        if largest_k > len(bank):
            raise ConfigError(f"knn: K = {largest_k} exceeds the {len(bank)} ID training images; lower "
                              "postprocessor_args.K / postprocessor_sweep.K in configs/postprocessors/knn.yml")
        self.index = faiss.IndexFlatL2(bank.shape[1])
        self.index.add(bank)

    def postprocess_features(self, logits: torch.Tensor, features: torch.Tensor):
        distances, _ = self.index.search(normalised(features.numpy()), self.K)
        return logits.argmax(dim=1), torch.from_numpy(-distances[:, -1])
