"""Virtual-logit matching (ViM; Wang et al. 2022): conf = logsumexp(logits) - alpha *
||(f - u) projected on the residual space||, unbounded; pred = argmax logits.

Fit on the ID training features as OpenOOD v1.5 does: u = -pinv(W) b (W, b the final layer),
``sklearn.covariance.EmpiricalCovariance(assume_centered=True)`` of f - u, eigenvectors by
``numpy.linalg.eig``, residual space = the eigenvectors after the ``dim`` largest eigenvalues,
alpha = mean max training logit / mean training residual norm. ``dim`` must be below the feature
size D (OpenOOD's grid [256, 1000] for D = 512 includes 1000, which gives NaN scores there and is
never chosen; our configs list only valid values per profile). Needs: features and the final layer.
"""
from __future__ import annotations

import numpy as np
import torch
from numpy.linalg import norm, pinv
from scipy.special import logsumexp
from sklearn.covariance import EmpiricalCovariance

from moodcat_plugin.errors import ConfigError
from moodcat_plugin.postprocessors.base_postprocessor import BasePostprocessor, final_layer
from moodcat_plugin.registry import register_postprocessor
from moodcat_plugin.schema import Schema, integer


class ViMArgs(Schema):
    dim: integer(ge=1)


@register_postprocessor("vim")
class ViMPostprocessor(BasePostprocessor):
    """Args: dim (principal-space size). Needs: features + final layer; fit: ID train."""

    fits_on = "ID train"

    needs = "features"
    args_schema = ViMArgs

    def setup(self, net, id_loader_dict, ood_loader_dict) -> None:
        self.w, self.b = final_layer(net)
        features = self.outputs_of(net, id_loader_dict["train"]).features.numpy()
        if self.dim >= features.shape[1]:
            raise ConfigError(f"vim: dim = {self.dim} must be below the feature size {features.shape[1]}; lower "
                              "postprocessor_args.dim / postprocessor_sweep.dim in configs/postprocessors/vim.yml")
        self.u = -np.matmul(pinv(self.w), self.b)
        covariance = EmpiricalCovariance(assume_centered=True).fit(features - self.u).covariance_
        eig_vals, eig_vectors = np.linalg.eig(covariance)
        self.NS = np.ascontiguousarray((eig_vectors.T[np.argsort(eig_vals * -1)[self.dim:]]).T)
        train_logits = features @ self.w.T + self.b
        self.alpha = train_logits.max(axis=-1).mean() / self.residual_norm(features).mean()
        self.run_meta = {"vim_alpha": float(self.alpha)}

    def residual_norm(self, features: np.ndarray) -> np.ndarray:
        return norm(np.matmul(features - self.u, self.NS), axis=-1)

    def postprocess_features(self, logits: torch.Tensor, features: torch.Tensor):
        feats = features.numpy()
        own_logits = feats @ self.w.T + self.b
        conf = logsumexp(own_logits, axis=-1) - self.alpha * self.residual_norm(feats)
        return torch.from_numpy(own_logits.argmax(axis=1)), torch.from_numpy(conf)
