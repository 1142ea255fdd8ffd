"""Batches of in-memory :class:`ImageArray`s, made on the compute device, as OpenOOD-style dicts.

Every batch is ``{'data': float (B, 3, H, W) normalised with the benchmark mean/std,
'label': int64 (B,) (-1 for OOD), 'index': int64 (B,) positions in the array}``, on ``device``.

Two kinds, both iterable like a DataLoader (``len()`` = batches per pass, ``.dataset`` = the array):

* :class:`ArrayBatches` (evaluation): the whole array in order, no augmentation.
* :class:`ShuffledBatches` (training): an endless, seeded stream of passes. Pass ``p`` takes its
  permutation and every sample's augmentation (crop offsets, flip) from a generator seeded with
  ``(seed, p)`` alone, so batch ``k`` of pass ``p`` is the same whatever ran before, however many
  threads run and wherever the stream was interrupted. Its position (pass, batch) is all the state
  there is: ``state_dict()`` / ``load_state_dict()`` resume it exactly. With ``shard=(rank, N)``
  (training across N processes, :mod:`moodcat_plugin.distributed`) ``batch_size`` is the global
  batch: batch k of a pass is the one-process batch k split into N consecutive slices of
  ``batch_size / N`` images, and this stream yields slice ``rank``.

Where we differ from OpenOOD: no ``DataLoader`` workers. The images are uint8 tensors resident on
the device, and augmentation (RandomCrop(size, padding=4) with zero fill, horizontal flip, as
OpenOOD's CIFAR train transform) is applied to the whole batch at once, which is faster than
per-sample Python on CPU and keeps a GPU fed without worker processes.
"""
from __future__ import annotations

from typing import Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from moodcat_plugin.data.arrays import ImageArray
from moodcat_plugin.errors import ConfigError
from moodcat_plugin.schema import choice, list_of

AUGMENTATIONS = ("crop", "flip")
AUGMENT_LIST = list_of(choice(*AUGMENTATIONS), expect=f"a list of augmentations out of {', '.join(AUGMENTATIONS)}")
CROP_PADDING = 4


def check_augmentations(augment: Sequence[str]) -> Tuple[str, ...]:
    unknown = set(augment) - set(AUGMENTATIONS)
    if unknown:
        raise ConfigError(f"unknown augmentation(s) {sorted(unknown)}; valid: {', '.join(AUGMENTATIONS)}")
    return tuple(augment)


def pass_generator(seed: int, pass_index: int) -> torch.Generator:
    """A CPU generator whose stream depends only on (seed, pass_index) (numpy SeedSequence mixing)."""
    state = np.random.SeedSequence([int(seed), int(pass_index)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def random_crops(images: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor,
                 padding: int = CROP_PADDING) -> torch.Tensor:
    """Crop each image of ``images`` (B, C, H, W), zero-padded by ``padding``, at its offset.

    tops/lefts: int64 (B,) in [0, 2 * padding]; offset ``padding`` is the uncropped image.
    Returns (B, C, H, W), same dtype.
    """
    batch, _, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = tops[:, None] + torch.arange(height, device=images.device)      # (B, H)
    cols = lefts[:, None] + torch.arange(width, device=images.device)      # (B, W)
    samples = torch.arange(batch, device=images.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[samples, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


class ArrayBatches:
    """The images of ``array`` in order, normalised, in batches of ``batch_size`` (last one partial)."""

    def __init__(self, array: ImageArray, mean: Sequence[float], std: Sequence[float], batch_size: int,
                 device: torch.device | str = "cpu"):
        self.dataset = array
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.mean, self.std = list(mean), list(std)
        self.images = torch.from_numpy(array.images).to(self.device).permute(0, 3, 1, 2)  # uint8 view
        self.labels = torch.from_numpy(array.labels).to(self.device)
        self._mean = torch.tensor(self.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    @property
    def name(self) -> str:
        return self.dataset.name

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def make_batch(self, indices: torch.Tensor, tops: Optional[torch.Tensor] = None,
                   lefts: Optional[torch.Tensor] = None, flips: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """The batch of the images at ``indices`` (int64, on device), optionally cropped/flipped."""
        images = self.images[indices]
        if tops is not None:
            images = random_crops(images, tops, lefts)
        if flips is not None:
            images = torch.where(flips[:, None, None, None], images.flip(-1), images)
        data = (images.float().div_(255.0) - self._mean) / self._std
        return {"data": data, "label": self.labels[indices], "index": indices}

    def __iter__(self) -> Iterator[Dict[str, torch.Tensor]]:
        order = torch.arange(len(self.dataset), device=self.device)
        for start in range(0, len(order), self.batch_size):
            yield self.make_batch(order[start:start + self.batch_size])

    def plain(self, batch_size: Optional[int] = None) -> "ArrayBatches":
        """The same images in order without augmentation (e.g. for feature extraction)."""
        return ArrayBatches(self.dataset, self.mean, self.std, batch_size or self.batch_size, self.device)


class ShuffledBatches(ArrayBatches):
    """Endless seeded training stream over ``array`` (see the module docstring).

    ``len()`` is the number of batches per pass (the last partial batch is dropped when the array
    holds more than one batch). Iterating yields the rest of the current pass and moves to the
    next; ``next()`` yields one batch, crossing into the next pass when one ends.
    """

    def __init__(self, array: ImageArray, mean: Sequence[float], std: Sequence[float], batch_size: int,
                 augment: Sequence[str] = (), seed: int = 0, device: torch.device | str = "cpu",
                 shard: Tuple[int, int] = (0, 1)):
        self.rank, self.world = int(shard[0]), int(shard[1])
        if batch_size % self.world:
            raise ConfigError(f"batch size {batch_size} cannot be split evenly over {self.world} processes: "
                              f"set the section's batch_size to a multiple of {self.world}")
        super().__init__(array, mean, std, batch_size // self.world, device)
        self.global_batch = int(batch_size)
        if len(array) == 0:
            raise ConfigError(f"cannot train on '{array.name}': it holds no images")
        if self.world > 1 and len(array) < self.global_batch:
            raise ConfigError(f"'{array.name}' holds {len(array)} images, fewer than one batch of {self.global_batch} "
                              f"split over {self.world} processes: lower the batch_size or use fewer processes")
        self.augment = check_augmentations(augment)
        self.seed = int(seed)
        self.pass_index, self.position = 0, 0
        self._plan: Optional[tuple] = None  # (pass_index, order, tops, lefts, flips)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.global_batch if n > self.global_batch else 1

    def _pass_plan(self, pass_index: int) -> tuple:
        """Permutation and per-sample augmentation of one pass, drawn on the CPU and moved."""
        if self._plan is None or self._plan[0] != pass_index:
            generator = pass_generator(self.seed, pass_index)
            n = len(self.dataset)
            order = torch.randperm(n, generator=generator)
            offsets = torch.randint(0, 2 * CROP_PADDING + 1, (2, n), generator=generator)
            flips = torch.rand(n, generator=generator) < 0.5
            move = lambda t: t.to(self.device)  # noqa: E731
            self._plan = (pass_index, move(order), move(offsets[0]), move(offsets[1]), move(flips))
        return self._plan

    def batch_at(self, pass_index: int, position: int) -> Dict[str, torch.Tensor]:
        """Batch ``position`` of pass ``pass_index`` (pure: does not move the stream)."""
        _, order, tops, lefts, flips = self._pass_plan(pass_index)
        start = position * self.global_batch + self.rank * self.batch_size
        chosen = order[start:start + self.batch_size]
        crop = "crop" in self.augment
        return self.make_batch(chosen, tops[chosen] if crop else None, lefts[chosen] if crop else None,
                               flips[chosen] if "flip" in self.augment else None)

    def next(self) -> Dict[str, torch.Tensor]:
        if self.position >= len(self):
            self.pass_index, self.position = self.pass_index + 1, 0
        batch = self.batch_at(self.pass_index, self.position)
        self.position += 1
        return batch

    __next__ = next

    def __iter__(self) -> Iterator[Dict[str, torch.Tensor]]:
        if self.position >= len(self):
            self.pass_index, self.position = self.pass_index + 1, 0
        while self.position < len(self):
            yield self.next()

    def start_pass(self, pass_index: int) -> None:
        """Jump to the start of pass ``pass_index`` (e.g. an outlier stream restarted every epoch)."""
        self.pass_index, self.position = int(pass_index), 0

    def state_dict(self) -> Dict[str, int]:
        return {"pass_index": self.pass_index, "position": self.position}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.pass_index, self.position = int(state["pass_index"]), int(state["position"])


def make_loader(array: ImageArray, mean, std, batch_size: int, train: bool = False,
                augment: Sequence[str] = (), seed: int = 0, device: torch.device | str = "cpu",
                shard: Tuple[int, int] = (0, 1)) -> ArrayBatches:
    """Training stream (``train``: shuffled, seeded, augmented; ``shard``: this process's slice of
    each global batch) or in-order evaluation batches (every process sees all of them)."""
    if train:
        return ShuffledBatches(array, mean, std, batch_size, augment=augment, seed=seed, device=device, shard=shard)
    return ArrayBatches(array, mean, std, batch_size, device=device)


def denormalize(data: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo loader normalisation: (B, 3, H, W) normalised -> [0, 1]."""
    mean_t = torch.as_tensor(mean, dtype=data.dtype, device=data.device).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=data.dtype, device=data.device).view(1, 3, 1, 1)
    return (data * std_t + mean_t).clamp(0, 1)
