"""MOODCAT's cascade as one continuous confidence, fixed on in-distribution validation data.

The paper (3.5-3.6) rejects an input when ANY scorer flags it. Its public evaluation turns this
into an envelope over per-scorer thresholds tuned on the test set; a deployed detector needs a
single score fixed beforehand. :class:`CascadeFusion` does that without any OOD or test data:

1. Calibration (``fit``), per scorer ``s``, on the distances of the ID validation split
   (n_s samples): the calibrated confidence is the empirical tail probability
   ``c_s(x) = #{ID-val distances >= d_s(x)} / n_s`` in [0, 1] (1 = as ID as anything seen,
   0 = beyond every ID-val distance). It is the p-value of a one-sided test "x is ID" and puts
   scorers with different units on one scale.
2. Fusion (``transform``): ``conf = min_s c_s + tau * t(x)``. Thresholding the min at level
   alpha rejects exactly when some scorer's p-value is below alpha: the paper's cascade, with
   every scorer at the same ID false-rejection level.
3. Ties: the min is a step function (multiples of 1/n_s) and every input beyond all ID-val
   distances gets 0. The tie-break ``t(x) = mean_s sigmoid(-(d_s - mean_s) / std_s)`` in (0, 1)
   (distances standardised with the ID-val mean/std) is strictly decreasing in every distance,
   and ``tau`` is below half the smallest gap between distinct min values, so it only orders
   inputs whose min is equal and never overturns the cascade order.

``conf`` lies in [0, 1 + tau), higher = more in-distribution, and never increases when any
single distance increases.
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Union

import numpy as np
import torch

Distances = Mapping[str, Union[torch.Tensor, np.ndarray]]
MIN_STD = 1e-8


def _as_tensor(values) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float64).detach().reshape(-1).cpu()


class CascadeFusion:
    """Per-scorer empirical-CDF calibration on ID-val distances, fused by the minimum.

    ``fit({name: (n,) distances})`` then ``transform({name: (B,) distances}) -> (B,) conf``.
    Distances are HIGH = OOD; every name given to ``fit`` must be given to ``transform``.
    """

    def __init__(self):
        self.reference: Dict[str, torch.Tensor] = {}  # name -> sorted ID-val distances (n_s,)
        self.location: Dict[str, float] = {}
        self.scale: Dict[str, float] = {}
        self.tau = 0.0

    @property
    def names(self):
        return list(self.reference)

    def fit(self, distances: Distances) -> "CascadeFusion":
        if not distances:
            raise ValueError("CascadeFusion.fit needs at least one scorer's distances")
        self.reference, self.location, self.scale = {}, {}, {}
        for name, values in distances.items():
            values = _as_tensor(values)
            if values.numel() == 0 or not torch.isfinite(values).all():
                raise ValueError(f"calibration distances of '{name}' are empty or not finite")
            self.reference[name] = torch.sort(values).values
            self.location[name] = float(values.mean())
            self.scale[name] = max(float(values.std(unbiased=False)), MIN_STD)
        self.tau = self._tie_break_weight([len(v) for v in self.reference.values()])
        return self

    @staticmethod
    def _tie_break_weight(sizes) -> float:
        """Half the smallest possible gap between two distinct values k/n_i and l/n_j."""
        product = 1
        for size in sorted(set(sizes)):
            product = product * size // math.gcd(product, size)  # lcm of the sample counts
        return 0.5 / product

    def _check(self, distances: Distances) -> None:
        if not self.reference:
            raise RuntimeError("CascadeFusion is not fitted; call fit() on ID validation distances first")
        missing = set(self.reference) - set(distances)
        if missing:
            raise KeyError(f"distances for scorer(s) {sorted(missing)} are missing; fitted on {self.names}")

    def calibrated(self, distances: Distances) -> Dict[str, torch.Tensor]:
        """name -> (B,) float64 c_s = fraction of ID-val distances >= d, in [0, 1]."""
        self._check(distances)
        out = {}
        for name, reference in self.reference.items():
            values = _as_tensor(distances[name])
            below = torch.searchsorted(reference, values, side="left")  # count of reference < d
            out[name] = (len(reference) - below).double() / len(reference)
        return out

    def tie_break(self, distances: Distances) -> torch.Tensor:
        """(B,) t(x) in (0, 1), strictly decreasing in every distance."""
        self._check(distances)
        parts = [torch.sigmoid(-(_as_tensor(distances[n]) - self.location[n]) / self.scale[n]) for n in self.reference]
        return torch.stack(parts).mean(dim=0)

    def transform(self, distances: Distances) -> torch.Tensor:
        """(B,) float64 fused conf = min_s c_s + tau * t(x); higher = more in-distribution.
        (float64 so that the tiny tie-break term survives next to values near 1.)"""
        calibrated = torch.stack(list(self.calibrated(distances).values()))
        return calibrated.min(dim=0).values + self.tau * self.tie_break(distances)

    def state_dict(self) -> dict:
        return {"reference": dict(self.reference), "location": dict(self.location),
                "scale": dict(self.scale), "tau": self.tau}

    def load_state_dict(self, state: dict) -> None:
        self.reference = {k: _as_tensor(v) for k, v in state["reference"].items()}
        self.location, self.scale, self.tau = dict(state["location"]), dict(state["scale"]), float(state["tau"])
