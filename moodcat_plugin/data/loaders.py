"""Torch datasets and loaders over :class:`ImageArray`s, yielding OpenOOD-style batch dicts.

Every batch is ``{'data': float (B, 3, H, W) normalised with the benchmark mean/std,
'label': int64 (B,) (-1 for OOD), 'index': int64 (B,)}``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from moodcat_plugin.data.arrays import ImageArray
from moodcat_plugin.errors import ConfigError

AUGMENTATIONS = ("crop", "flip")


class ArrayDataset(Dataset):
    """Normalised images of an ImageArray, with optional train-time augmentation.

    augment: subset of ``('crop', 'flip')``: RandomCrop(size, padding=4) and horizontal flip,
    as OpenOOD's CIFAR train transform.
    """

    def __init__(self, array: ImageArray, mean: Sequence[float], std: Sequence[float], augment: Sequence[str] = ()):
        unknown = set(augment) - set(AUGMENTATIONS)
        if unknown:
            raise ConfigError(f"unknown augmentation(s) {sorted(unknown)}; valid: {', '.join(AUGMENTATIONS)}")
        self.name = array.name
        self.images = torch.from_numpy(array.images).permute(0, 3, 1, 2).contiguous()
        self.labels = torch.from_numpy(array.labels)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.augment = tuple(augment)

    def __len__(self) -> int:
        return len(self.labels)

    def _augment(self, image: torch.Tensor) -> torch.Tensor:
        if "crop" in self.augment:
            size = image.shape[-1]
            padded = torch.nn.functional.pad(image, (4, 4, 4, 4))
            top, left = torch.randint(0, 9, (2,)).tolist()
            image = padded[:, top:top + size, left:left + size]
        if "flip" in self.augment and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image

    def __getitem__(self, index: int) -> dict:
        image = self.images[index].float().div_(255.0)
        image = self._augment(image)
        return {"data": (image - self.mean) / self.std, "label": self.labels[index], "index": index}


def make_loader(array: ImageArray, mean, std, batch_size: int, train: bool = False,
                augment: Sequence[str] = (), num_workers: int = 0, seed: int = 0) -> DataLoader:
    """A DataLoader over ``array``; train loaders shuffle (seeded) and drop the last partial batch."""
    dataset = ArrayDataset(array, mean, std, augment if train else ())
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=train, drop_last=train and len(dataset) > batch_size,
        num_workers=num_workers, generator=generator,
    )


def denormalize(data: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo loader normalisation: (B, 3, H, W) normalised -> [0, 1]."""
    mean_t = torch.as_tensor(mean, dtype=data.dtype, device=data.device).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=data.dtype, device=data.device).view(1, 3, 1, 1)
    return (data * std_t + mean_t).clamp(0, 1)
