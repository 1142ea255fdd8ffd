"""OOD-like images made from in-distribution training images alone (Cb variant, not in the paper).

MOODCAT's Cb learns from label mismatch only: an ID image under a WRONG label. At deployment an
OOD image arrives under the label the classifier finds most plausible for it, which Cb never
saw in training. These builders turn a batch of ID images into images that no ID class explains,
so Cb can be trained on ``(x_ood, G(M(x_ood), C(x_ood)), C(x_ood))`` as mismatches, conditioned
the way the test conditions OOD inputs (by the classifier's prediction). No outlier data is used.

Each builder: x ``[B,3,H,W]`` in [-1,1], y ``[B]`` -> images ``[B',3,H,W]`` in [-1,1], B' <= B.

* ``shuffled_patches`` -- the image cut into 8x8-pixel patches (a 4x4 grid at 32 px), randomly
  permuted: colours and local texture of ID data, no object shape.
* ``mixed_classes`` -- the pixel average of two images of DIFFERENT classes (pairs of equal
  class are dropped): two half-visible objects, neither class.
"""
from __future__ import annotations

from typing import Callable, Dict

import torch

from moodcat_plugin.moodcat.masking import shuffle_patches

SHUFFLE_PATCH_SIZE = 8


def shuffled_patches(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return shuffle_patches(x, patch_size=SHUFFLE_PATCH_SIZE)


def mixed_classes(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    partner = torch.roll(torch.arange(len(x), device=x.device), 1)
    different = y != y[partner]
    return (0.5 * (x + x[partner]))[different]


SYNTHETIC_OUTLIERS: Dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "shuffled_patches": shuffled_patches,
    "mixed_classes": mixed_classes,
}
