"""Seeded random weights in the layout of the authors' MOODCAT state dicts (test helper).

The equality test (``tests/test_authors_weights.py``) and the script that wrote its fixture both
call :func:`reference_layout_state` with the (key, shape) list stored in the fixture, so the same
tensors come out on both sides without committing millions of numbers. Only torch is used; the
recipe is part of the fixture's definition, so changing it invalidates the fixture.

Recipe (one ``torch.Generator`` seeded with ``seed``, keys visited in list order, float32):

* ``*running_var`` / ``*stored_var``: ``0.5 + U[0,1)`` (positive variances);
* ``*running_mean`` / ``*stored_mean``: ``0.1 * N(0,1)``;
* ``*num_batches_tracked``: int64 0 (no draw);
* ``*sv0``: ones (no draw; only logged by the reference);
* ``*u0``, ``*weight_u``, ``*weight_v``: ``N(0,1)``, L2-normalised along the last dim;
* ``*.sigma`` (Cb attention gain, 0 at init): ``0.5 * N(0,1)`` so the attention path is active;
* other 1-D tensors whose key ends in ``gain`` or a BatchNorm ``weight``: ``1 + 0.1 * N(0,1)``;
  other 1-D tensors: ``0.1 * N(0,1)``;
* tensors of 2+ dims: ``N(0,1) / sqrt(prod(shape[1:]))``.

Then every Cb spectral-norm layer (``X.weight_orig`` with ``X.weight_u``, ``X.weight_v``) gets
``POWER_STEPS`` power iterations on ``weight_orig.flatten(1)`` (``v = normalize(W^T u)``,
``u = normalize(W v)``), as a trained Cb's vectors would be; fresh random vectors make
``sigma = u.(W v)`` near zero and the logits explode (1e11-1e18).
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

POWER_STEPS = 30

KeyShapes = Sequence[Tuple[str, Sequence[int]]]


def _is_unit_vector(key: str) -> bool:
    return key.endswith(("u0", "weight_u", "weight_v"))


def _one_tensor(key: str, shape: Sequence[int], generator: torch.Generator, bn_weights: set) -> torch.Tensor:
    shape = tuple(int(s) for s in shape)
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    if key.endswith("sv0"):
        return torch.ones(shape)
    if key.endswith(("running_var", "stored_var")):
        return 0.5 + torch.rand(shape, generator=generator)
    if key.endswith(("running_mean", "stored_mean")):
        return 0.1 * torch.randn(shape, generator=generator)
    if _is_unit_vector(key):
        return F.normalize(torch.randn(shape, generator=generator), dim=-1)
    if key.endswith(".sigma"):
        return 0.5 * torch.randn(shape, generator=generator)
    if len(shape) <= 1:
        centre = 1.0 if key.endswith("gain") or key in bn_weights else 0.0
        return centre + 0.1 * torch.randn(shape, generator=generator)
    return torch.randn(shape, generator=generator) / math.sqrt(math.prod(shape[1:]))


def _warm_spectral_vectors(state: Dict[str, torch.Tensor]) -> None:
    for key in [k for k in state if k.endswith(".weight_orig")]:
        stem = key[: -len("weight_orig")]
        matrix = state[key].flatten(1)
        u, v = state[stem + "weight_u"], state[stem + "weight_v"]
        for _ in range(POWER_STEPS):
            v = F.normalize(matrix.t() @ u, dim=0)
            u = F.normalize(matrix @ v, dim=0)
        state[stem + "weight_u"], state[stem + "weight_v"] = u, v


def reference_layout_state(key_shapes: KeyShapes, seed: int) -> Dict[str, torch.Tensor]:
    """State dict ``{key: tensor}`` for the (key, shape) list, by the recipe of the module docstring."""
    generator = torch.Generator().manual_seed(int(seed))
    bn_weights = {k[: -len("running_var")] + "weight" for k, _ in key_shapes if k.endswith("running_var")}
    state = {key: _one_tensor(key, shape, generator, bn_weights) for key, shape in key_shapes}
    _warm_spectral_vectors(state)
    return state


def key_shape_list(state: Dict[str, torch.Tensor]) -> List[Tuple[str, List[int]]]:
    """(key, shape) pairs of a state dict, in its order."""
    return [(key, list(value.shape)) for key, value in state.items()]
