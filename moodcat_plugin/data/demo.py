"""The embedded demo benchmark, built from real data that ships inside scikit-learn.

- In-distribution: handwritten digits 0-5 (``sklearn.datasets.load_digits``, 8x8 grey images
  upscaled to 32x32 RGB), split 60/10/30 into train/val/test.
- Near-OOD: digits 6-9 (same style, unseen classes); 20% of them form the OOD validation set
  used by APS and calibration, the other 80% the near-OOD test set.
- Far-OOD: 32x32 patches of the 'flower.jpg' photograph (``load_sample_images``).
- Outlier / unlabeled training data: patches of the other photograph, 'china.jpg', so no
  evaluation image is ever trained on.
No file is downloaded; everything is deterministic for a given seed.

The same two sources also give the CIFAR benchmarks a far-OOD VALIDATION set (issue 27,
``splits.ood_val_far: {builtin: digits_and_photos}``, :func:`build_far_validation`): none of their
test sets (CIFAR, Tiny ImageNet, MNIST, SVHN, Texture, Places365) holds scikit-learn's 8x8 UCI
digits or its two sample photographs.
"""
from __future__ import annotations

from typing import Callable, Dict

import numpy as np
import torch
import torch.nn.functional as F

from moodcat_plugin.data.arrays import ImageArray

ID_CLASSES = (0, 1, 2, 3, 4, 5)
PATCH_SIZE = 32


def _digits_to_rgb32(images_8x8: np.ndarray) -> np.ndarray:
    """(N, 8, 8) values 0-16 -> uint8 (N, 32, 32, 3), bilinear upscaling."""
    x = torch.from_numpy(images_8x8.astype(np.float32) / 16.0).unsqueeze(1)
    x = F.interpolate(x, size=(PATCH_SIZE, PATCH_SIZE), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1)
    return x.permute(0, 2, 3, 1).numpy()


def _photo_patches(photo: np.ndarray, count: int, rng: np.random.Generator, downscale: int = 4) -> np.ndarray:
    """Random 32x32 crops of a photograph shrunk by ``downscale`` (so a patch shows a scene part)."""
    x = torch.from_numpy(np.array(photo)).permute(2, 0, 1).unsqueeze(0).float()
    x = F.interpolate(x, scale_factor=1 / downscale, mode="area")[0]
    height, width = x.shape[1:]
    tops = rng.integers(0, height - PATCH_SIZE + 1, size=count)
    lefts = rng.integers(0, width - PATCH_SIZE + 1, size=count)
    patches = [x[:, t:t + PATCH_SIZE, l:l + PATCH_SIZE] for t, l in zip(tops, lefts)]
    return torch.stack(patches).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def build_demo_sets(seed: int = 0) -> Dict[str, ImageArray]:
    """All demo datasets keyed by the names used in ``configs/benchmarks/demo.yml``."""
    from sklearn.datasets import load_digits, load_sample_images

    rng = np.random.default_rng(seed)
    digits = load_digits()
    images, labels = _digits_to_rgb32(digits.images), digits.target.astype(np.int64)
    is_id = np.isin(labels, ID_CLASSES)

    id_idx = rng.permutation(np.flatnonzero(is_id))
    n_train, n_val = int(0.6 * len(id_idx)), int(0.1 * len(id_idx))
    ood_idx = rng.permutation(np.flatnonzero(~is_id))
    n_ood_val = int(0.2 * len(ood_idx))

    china, flower = load_sample_images().images
    sets = {
        "digits_train": ImageArray("digits_train", images[id_idx[:n_train]], labels[id_idx[:n_train]]),
        "digits_val": ImageArray("digits_val", images[id_idx[n_train:n_train + n_val]],
                                 labels[id_idx[n_train:n_train + n_val]]),
        "digits_test": ImageArray("digits_test", images[id_idx[n_train + n_val:]], labels[id_idx[n_train + n_val:]]),
        "digits_6to9_val": ImageArray("digits_6to9_val", images[ood_idx[:n_ood_val]], labels[ood_idx[:n_ood_val]]),
        "digits_6to9": ImageArray("digits_6to9", images[ood_idx[n_ood_val:]], labels[ood_idx[n_ood_val:]]),
        "flower_patches": ImageArray("flower_patches", _photo_patches(flower, 500, rng), np.full(500, -1)),
        "china_patches": ImageArray("china_patches", _photo_patches(china, 800, rng), np.full(800, -1)),
    }
    return sets


FAR_VALIDATION_DIGITS = 500
FAR_VALIDATION_PATCHES = 250  # per photograph
FAR_VALIDATION_SEED = 27


def build_far_validation(seed: int = FAR_VALIDATION_SEED) -> ImageArray:
    """Far-OOD validation images (uint8 (1000, 32, 32, 3), labels -1): 500 of scikit-learn's digits
    upscaled to 32x32 grey RGB (all classes), 250 patches of each sample photograph ('china.jpg',
    'flower.jpg', shrunk by 4). Fixed by the seed, no download."""
    from sklearn.datasets import load_digits, load_sample_images

    rng = np.random.default_rng(seed)
    digits = load_digits().images
    chosen = np.sort(rng.choice(len(digits), FAR_VALIDATION_DIGITS, replace=False))
    china, flower = load_sample_images().images
    images = np.concatenate([_digits_to_rgb32(digits[chosen]), _photo_patches(china, FAR_VALIDATION_PATCHES, rng),
                             _photo_patches(flower, FAR_VALIDATION_PATCHES, rng)])
    return ImageArray("digits_and_photos", images, np.full(len(images), -1, dtype=np.int64))


#: Sets a benchmark file can name as ``builtin: NAME`` (built from scikit-learn's data, any data root).
BUILTIN_SETS: Dict[str, Callable[[], ImageArray]] = {"digits_and_photos": build_far_validation}
