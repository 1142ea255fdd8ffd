"""Input masking for MOODCAT (train/test masks and the ablation styles of the paper).

All functions take images ``x`` of shape ``[B,C,H,W]`` in [-1,1] and return a masked *copy*
(the input is never modified). Masked pixels are set to ``fill`` (0 = mid-grey in [-1,1]).
Every sample gets its own random mask; results are reproducible given a ``torch.Generator``
(random numbers are drawn on the generator's device, or on ``x``'s device without one).
``shard=(rank, N)`` (training across N processes): ``x`` is this process's slice of a global batch
N times larger; the random numbers are drawn for the global batch and this slice's rows kept, so
the N processes together draw exactly the masks one process draws for the global batch.

Styles (``apply_mask``):

* ``"random_rectangle"`` -- one rectangle per image, torchvision ``RandomErasing`` style: area
  fraction ~ U(area), log aspect ratio (height/width) ~ U(log ratio), uniform position. The
  integer rectangle is re-drawn (up to 10 tries) until its exact pixel area lies in ``area``.
  Training uses area (0.10, 0.33), testing (0.15, 0.33); aspect ratio (0.5, 2.5).
* ``"none"`` -- unchanged copy.
* ``"fixed_low"`` -- centred 10x10 square at 32 px (9.8 % of the image; scaled with size).
* ``"fixed_high"`` -- centred 18x18 square at 32 px (31.6 %; scaled with size).
* ``"patched"`` -- image cut into ``patch_size`` x ``patch_size`` patches (8x8 grid of 4x4 at
  32 px); exactly ``round(patch_fraction * n_patches)`` random patches are filled (0.5 or
  0.3125 in the paper).
* ``"shuffle"`` -- the same patches randomly permuted within each image; nothing erased.
"""
from __future__ import annotations

import math
from typing import Annotated, Optional, Sequence, Tuple

import torch
from pydantic import AfterValidator

from moodcat_plugin.schema import list_of, number

VALID_STYLES = ("random_rectangle", "none", "fixed_low", "fixed_high", "patched", "shuffle")
TRAIN_AREA = (0.10, 0.33)
TEST_AREA = (0.15, 0.33)
ASPECT_RATIO = (0.5, 2.5)
FIXED_LOW_SIDE_32 = 10
FIXED_HIGH_SIDE_32 = 18
MAX_RECTANGLE_TRIES = 10
AREA_WORDS = "[lo, hi] area fractions with 0 < lo <= hi < 1"


def _ordered_area(area: list) -> list:
    if area[0] > area[1]:
        raise ValueError(f"must be {AREA_WORDS}")
    return area


#: Config type of a masked-area range (``test_area``, ``train_area``).
AREA_RANGE = Annotated[list_of(number(gt=0, lt=1), length=2, expect=AREA_WORDS), AfterValidator(_ordered_area)]


def _uniform(shape: Sequence[int], generator: Optional[torch.Generator],
             device: torch.device, shard: Tuple[int, int] = (0, 1)) -> torch.Tensor:
    """U[0,1) float64 samples drawn with ``generator`` (on its device), moved to ``device``;
    with ``shard`` drawn for the global batch (``shape[0]`` x N rows) and this rank's rows kept."""
    draw_device = generator.device if generator is not None else device
    rank, world = shard
    sample = torch.rand((shape[0] * world, *shape[1:]), generator=generator, device=draw_device,
                        dtype=torch.float64)
    if world > 1:
        sample = sample[rank * shape[0]:(rank + 1) * shape[0]]
    return sample.to(device)


def box_mask(height: int, width: int, top: torch.Tensor, left: torch.Tensor,
             box_h: torch.Tensor, box_w: torch.Tensor) -> torch.Tensor:
    """Boolean ``[B,H,W]`` mask, True inside each sample's box (all int tensors of shape [B])."""
    device = top.device
    rows = torch.arange(height, device=device)[None, :]
    cols = torch.arange(width, device=device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + box_h)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + box_w)[:, None])
    return in_rows[:, :, None] & in_cols[:, None, :]


def fill_mask(x: torch.Tensor, mask: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Copy of ``x`` ``[B,C,H,W]`` with pixels where ``mask`` ``[B,H,W]`` is True set to fill."""
    return torch.where(mask[:, None], torch.full_like(x, fill), x)


def sample_rectangle_sizes(batch: int, height: int, width: int, area: Tuple[float, float],
                           ratio: Tuple[float, float], generator: Optional[torch.Generator],
                           device: torch.device, shard: Tuple[int, int] = (0, 1)) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-sample rectangle heights and widths (int64 ``[B]``) whose area fraction is in ``area``.

    Draws ``MAX_RECTANGLE_TRIES`` candidates per sample at once and keeps the first valid one
    (fits the image, rounded pixel area within ``area``); a sample with none valid (practically
    impossible at 32x32) gets a near-square rectangle of the mid-range area.
    """
    total = height * width
    tries = MAX_RECTANGLE_TRIES
    target = total * (area[0] + (area[1] - area[0]) * _uniform((batch, tries), generator, device, shard))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * _uniform((batch, tries), generator, device, shard))
    box_h = torch.round(torch.sqrt(target * aspect)).long()
    box_w = torch.round(torch.sqrt(target / aspect)).long()
    pixels = box_h * box_w
    valid = ((box_h >= 1) & (box_w >= 1) & (box_h <= height) & (box_w <= width)
             & (pixels >= math.ceil(area[0] * total - 1e-9))
             & (pixels <= math.floor(area[1] * total + 1e-9)))
    first_valid = torch.argmax(valid.int(), dim=1)  # index of first True (0 when none)
    chosen_h = box_h.gather(1, first_valid[:, None]).squeeze(1)
    chosen_w = box_w.gather(1, first_valid[:, None]).squeeze(1)
    fallback_h, fallback_w = _fallback_rectangle(height, width, area)
    none_valid = ~valid.any(dim=1)
    chosen_h = torch.where(none_valid, torch.full_like(chosen_h, fallback_h), chosen_h)
    chosen_w = torch.where(none_valid, torch.full_like(chosen_w, fallback_w), chosen_w)
    return chosen_h, chosen_w


def _fallback_rectangle(height: int, width: int, area: Tuple[float, float]) -> Tuple[int, int]:
    """Deterministic near-square rectangle with the middle target area, clipped to the image."""
    mid_pixels = 0.5 * (area[0] + area[1]) * height * width
    box_h = min(height, max(1, round(math.sqrt(mid_pixels))))
    box_w = min(width, max(1, round(mid_pixels / box_h)))
    return box_h, box_w


def random_rectangle_mask(x: torch.Tensor, area: Tuple[float, float] = TRAIN_AREA,
                          ratio: Tuple[float, float] = ASPECT_RATIO, fill: float = 0.0,
                          generator: Optional[torch.Generator] = None,
                          shard: Tuple[int, int] = (0, 1)) -> torch.Tensor:
    """Erase one random rectangle per image (RandomErasing style, see module docstring).

    x ``[B,C,H,W]`` in [-1,1] -> masked copy, same shape; masked area fraction in ``area``.
    """
    batch, _, height, width = x.shape
    box_h, box_w = sample_rectangle_sizes(batch, height, width, area, ratio, generator, x.device, shard)
    top = (_uniform((batch,), generator, x.device, shard) * (height - box_h + 1)).long()
    left = (_uniform((batch,), generator, x.device, shard) * (width - box_w + 1)).long()
    return fill_mask(x, box_mask(height, width, top, left, box_h, box_w), fill)


def centre_square_mask(x: torch.Tensor, side_at_32: int, fill: float = 0.0) -> torch.Tensor:
    """Fill a centred square whose side is ``side_at_32`` px at 32 px, scaled to the image size.

    x ``[B,C,H,W]`` -> masked copy. 10 px -> 9.8 %, 18 px -> 31.6 % of a 32x32 image.
    """
    batch, _, height, width = x.shape
    side_h = max(1, round(side_at_32 * height / 32))
    side_w = max(1, round(side_at_32 * width / 32))
    full = torch.full((batch,), 1, dtype=torch.long, device=x.device)
    mask = box_mask(height, width, full * ((height - side_h) // 2), full * ((width - side_w) // 2),
                    full * side_h, full * side_w)
    return fill_mask(x, mask, fill)


def _check_patch_grid(x: torch.Tensor, patch_size: int) -> Tuple[int, int]:
    """Grid size (rows, cols) of ``patch_size`` patches; H and W must be multiples of it."""
    height, width = x.shape[-2:]
    if height % patch_size or width % patch_size:
        raise ValueError(f"image size {height}x{width} is not a multiple of patch size {patch_size}")
    return height // patch_size, width // patch_size


def _random_permutations(batch: int, n: int, generator: Optional[torch.Generator],
                         device: torch.device, shard: Tuple[int, int] = (0, 1)) -> torch.Tensor:
    """``batch`` independent random permutations of ``range(n)``, int64 ``[B,n]``."""
    return torch.argsort(_uniform((batch, n), generator, device, shard), dim=1)


def patched_mask(x: torch.Tensor, patch_fraction: float = 0.5, patch_size: int = 4,
                 fill: float = 0.0, generator: Optional[torch.Generator] = None,
                 shard: Tuple[int, int] = (0, 1)) -> torch.Tensor:
    """Fill exactly ``round(patch_fraction * n_patches)`` random patches per image.

    x ``[B,C,H,W]`` -> masked copy. At 32 px the grid is 8x8 patches of 4x4.
    """
    if not 0.0 <= patch_fraction <= 1.0:
        raise ValueError(f"patch_fraction must be in [0, 1], got {patch_fraction}")
    batch, _, height, width = x.shape
    rows, cols = _check_patch_grid(x, patch_size)
    n_masked = round(patch_fraction * rows * cols)
    ranks = _random_permutations(batch, rows * cols, generator, x.device, shard)
    patch_is_masked = (ranks < n_masked).view(batch, rows, cols)
    mask = patch_is_masked.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2)
    return fill_mask(x, mask, fill)


def shuffle_patches(x: torch.Tensor, patch_size: int = 4,
                    generator: Optional[torch.Generator] = None, shard: Tuple[int, int] = (0, 1)) -> torch.Tensor:
    """Randomly permute the ``patch_size`` patches within each image; nothing is erased.

    x ``[B,C,H,W]`` -> shuffled copy with the same multiset of pixel values per image.
    """
    batch, channels, height, width = x.shape
    rows, cols = _check_patch_grid(x, patch_size)
    patches = (x.reshape(batch, channels, rows, patch_size, cols, patch_size)
               .permute(0, 2, 4, 1, 3, 5)
               .reshape(batch, rows * cols, channels, patch_size, patch_size))
    order = _random_permutations(batch, rows * cols, generator, x.device, shard)
    patches = patches[torch.arange(batch, device=x.device)[:, None], order]
    return (patches.reshape(batch, rows, cols, channels, patch_size, patch_size)
            .permute(0, 3, 1, 4, 2, 5)
            .reshape(batch, channels, height, width))


def apply_mask(x: torch.Tensor, style: str = "random_rectangle",
               area: Tuple[float, float] = TRAIN_AREA,
               ratio: Tuple[float, float] = ASPECT_RATIO, fill: float = 0.0,
               patch_fraction: float = 0.5, patch_size: int = 4,
               generator: Optional[torch.Generator] = None, shard: Tuple[int, int] = (0, 1)) -> torch.Tensor:
    """Mask ``x`` ``[B,C,H,W]`` (in [-1,1]) with the named ``style``; returns a new tensor.

    ``area``/``ratio`` apply to "random_rectangle", ``patch_fraction`` to "patched",
    ``patch_size`` to "patched" and "shuffle". Raises ValueError for an unknown style.
    """
    if style == "random_rectangle":
        return random_rectangle_mask(x, area=area, ratio=ratio, fill=fill, generator=generator, shard=shard)
    if style == "none":
        return x.clone()
    if style == "fixed_low":
        return centre_square_mask(x, FIXED_LOW_SIDE_32, fill)
    if style == "fixed_high":
        return centre_square_mask(x, FIXED_HIGH_SIDE_32, fill)
    if style == "patched":
        return patched_mask(x, patch_fraction=patch_fraction, patch_size=patch_size, fill=fill,
                            generator=generator, shard=shard)
    if style == "shuffle":
        return shuffle_patches(x, patch_size=patch_size, generator=generator, shard=shard)
    raise ValueError(f"unknown mask style '{style}'; valid styles: {', '.join(VALID_STYLES)}")


def heatmap_rectangle_mask(x: torch.Tensor, heatmap: torch.Tensor, area: Tuple[float, float] = TEST_AREA,
                           ratio: Tuple[float, float] = ASPECT_RATIO, fill: float = 0.0,
                           generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Erase one rectangle per image, centred where ``heatmap`` is high (issue 27: DiffGuard
    restricts the label's influence to the classifier's Grad-CAM region; we mask that region).

    x ``[B,C,H,W]`` in [-1,1], heatmap ``[B,h,w]`` >= 0 (any resolution, e.g. a class activation
    map; upsampled bilinearly to H x W) -> masked copy. Sizes as ``random_rectangle`` (area
    fraction in ``area``, aspect ratio in ``ratio``); the centre pixel is drawn with probability
    proportional to the heatmap (uniform where a heatmap is all zero), the box clipped to the image.
    """
    batch, _, height, width = x.shape
    box_h, box_w = sample_rectangle_sizes(batch, height, width, area, ratio, generator, x.device)
    weights = torch.nn.functional.interpolate(heatmap[:, None].float().clamp_min(0), size=(height, width),
                                              mode="bilinear", align_corners=False).flatten(1).double()
    weights = torch.where(weights.sum(1, keepdim=True) > 0, weights, torch.ones_like(weights))
    cumulative = (weights / weights.sum(1, keepdim=True)).cumsum(1)
    draw = _uniform((batch, 1), generator, x.device)
    centre = torch.searchsorted(cumulative.contiguous(), draw).squeeze(1).clamp_max(height * width - 1)
    rows, cols = centre // width, centre % width
    top = (rows - box_h // 2).clamp(min=0).minimum(height - box_h)
    left = (cols - box_w // 2).clamp(min=0).minimum(width - box_w)
    return fill_mask(x, box_mask(height, width, top, left, box_h, box_w), fill)
