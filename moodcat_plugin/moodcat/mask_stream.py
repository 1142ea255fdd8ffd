"""Test-time masks drawn per image from (seed, set name, index in the set, draw number).

Scoring draws each image's mask with its own ``torch.Generator`` seeded from a hash of
``(seed, set name, index, draw)``, so a set's masks -- and so its scores -- are the same in every
run that scores it, whichever sets were scored before it, and whatever the batch size. (Drawing
from one generator set after set made a set's AUROC depend on the list of sets: Texture 51.06 in a
paper table against 51.19 in BENCHMARKS.md with the same weights.) ``draw`` numbers the K masks
of ``num_masks`` > 1. The masking itself is :func:`moodcat_plugin.moodcat.masking.apply_mask`.

Usage: ``stream.start(set_name)`` before a set's first batch, then ``stream.masks(x, draw=k)``
for each of the K draws of a batch and ``stream.advance(len(x))`` after it.
"""
from __future__ import annotations

import hashlib
from typing import Tuple

import torch

from moodcat_plugin.moodcat.masking import apply_mask

UNNAMED_SET = "unnamed"  # images scored without start() (e.g. OpenOOD calling postprocess directly)


def image_seed(seed: int, set_name: str, index: int, draw: int = 0) -> int:
    """A 63-bit generator seed for one image's mask: sha256 of ``seed|set_name|index|draw``."""
    digest = hashlib.sha256(f"{int(seed)}|{set_name}|{int(index)}|{int(draw)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


class MaskStream:
    """Per-image test masks of one style; ``seed`` chooses the whole draw (``mask_seed``)."""

    def __init__(self, seed: int, style: str, area: Tuple[float, float]):
        self.seed, self.style, self.area = int(seed), style, tuple(area)
        self.set_name, self.next_index = UNNAMED_SET, 0

    def start(self, set_name: str, seed: int | None = None) -> None:
        """Begin the set ``set_name`` at index 0 (``seed`` replaces the stream's seed if given)."""
        if seed is not None:
            self.seed = int(seed)
        self.set_name, self.next_index = str(set_name), 0

    def masks(self, x: torch.Tensor, draw: int = 0) -> torch.Tensor:
        """Masked copy of ``x`` ``[B,C,H,W]`` in [-1,1]: image ``b`` masked as image
        ``next_index + b`` of the current set, draw ``draw``."""
        rows = []
        for offset in range(len(x)):
            generator = torch.Generator().manual_seed(image_seed(self.seed, self.set_name, self.next_index + offset,
                                                                 draw))
            rows.append(apply_mask(x[offset:offset + 1], self.style, area=self.area, generator=generator))
        return torch.cat(rows) if rows else x.clone()

    def advance(self, count: int) -> None:
        """The next ``count`` images of the set are done."""
        self.next_index += int(count)
