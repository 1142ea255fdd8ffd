"""Image value-range conversions and sample grids for MOODCAT.

The MOODCAT networks (encoder, decoder, discriminators, Cb) work on images in [-1,1] ("signed
unit" range, mid-grey = 0, the fill value of the masks). Loaders yield images normalised with the
benchmark mean/std; these helpers convert between the two.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import torch

from moodcat_plugin.data.loaders import denormalize
from moodcat_plugin.utils import atomic_write_with

GRID_CELL_INCHES = 0.95  # one 32x32 image per cell, drawn with nearest upscaling
GRID_DPI = 100


def to_signed_unit(data: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalised loader images ``[B,3,H,W]`` -> the same images in [-1,1] (clamped)."""
    return denormalize(data, mean, std) * 2.0 - 1.0


def from_signed_unit(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Inverse of :func:`to_signed_unit`: images ``[B,3,H,W]`` in [-1,1] -> normalised with mean/std."""
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (signed_to_unit(images) - mean_t) / std_t


def signed_to_unit(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1,1] -> [0,1] (clamped), e.g. for IQA metrics or saving."""
    return ((images + 1.0) * 0.5).clamp(0.0, 1.0)


def class_name(label: int, names: Optional[Sequence[str]]) -> str:
    """Readable class of ``label``: its name when the benchmark lists names, else ``class k``."""
    return str(names[label]) if names and 0 <= label < len(names) else f"class {label}"


def save_labelled_grid(path: Path | str, rows: Mapping[str, torch.Tensor], column_titles: Sequence[str],
                       title: str) -> Path:
    """PNG grid, one labelled row per entry of ``rows`` (e.g. input / masked / synthesis), one
    column per image with its title (e.g. the label the synthesis was conditioned on).

    rows: name -> ``[B,3,H,W]`` in [-1,1]; the first ``len(column_titles)`` images are drawn,
    each about 95 px wide. Written atomically (matplotlib Figure, no pyplot state).
    """
    from matplotlib.figure import Figure

    columns = min(len(column_titles), *(len(images) for images in rows.values()))
    figure = Figure(figsize=(GRID_CELL_INCHES * columns + 1.1, GRID_CELL_INCHES * len(rows) + 0.8),
                    layout="constrained")
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for r, (row_name, images) in enumerate(rows.items()):
        pictures = signed_to_unit(images[:columns].detach().float().cpu()).permute(0, 2, 3, 1).numpy()
        for c in range(columns):
            ax = axes[r, c]
            ax.imshow(pictures[c], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(column_titles[c], fontsize=7)
        axes[r, 0].set_ylabel(row_name, fontsize=9)
    figure.suptitle(title, fontsize=10)
    path = Path(path)
    atomic_write_with(path, lambda tmp: figure.savefig(tmp, format="png", dpi=GRID_DPI))
    return path


GRID_IMAGES = 16
GRID_SEED = 777


def grid_loaders(id_loader_dict: Mapping, ood_loader_dict: Mapping) -> dict:
    """{set name: loader} of the sets MOODCAT draws sample grids of: ID test (``id_test``) and
    every near/far OOD set."""
    loaders = {}
    if "test" in id_loader_dict:
        loaders["id_test"] = id_loader_dict["test"]
    for group in ("near", "far"):
        for name, loader in (ood_loader_dict.get(group) or {}).items():
            loaders[name] = loader
    return loaders


@torch.no_grad()
def save_synthesis_grids(folder: Path, loaders: Mapping, net, synthesize: Callable, mean: Sequence[float],
                         std: Sequence[float], device, benchmark: str,
                         class_names: Optional[Sequence[str]] = None) -> None:
    """``<folder>/<set>.png``: input / masked / synthesis rows for the first :data:`GRID_IMAGES`
    images of each loader, each conditioned on the classifier ``net``'s prediction (its column
    title). ``synthesize(x, y, generator=...)`` -> (masked, synthesis), all in [-1,1]; the masks
    come from one generator seeded with :data:`GRID_SEED`."""
    generator = torch.Generator().manual_seed(GRID_SEED)
    for name, loader in loaders.items():
        data = first_images(loader, GRID_IMAGES)
        if data is None:
            continue
        data = data.to(device)
        x = to_signed_unit(data, mean, std)
        pred = net(data).argmax(dim=1)
        masked, synthesis = synthesize(x, pred, generator=generator)
        save_labelled_grid(Path(folder) / f"{name}.png",
                           {"input": x, "masked": masked, "synthesis": synthesis},
                           [class_name(int(label), class_names) for label in pred],
                           f"{benchmark}: {name}; each column conditioned on the classifier's "
                           "prediction (its title)")


def first_images(loader, count: int) -> Optional[torch.Tensor]:
    """The first ``count`` images (B,3,H,W normalised) of a loader, or None if it is empty."""
    taken, seen = [], 0
    for batch in loader:
        taken.append(batch["data"][: count - seen])
        seen += len(taken[-1])
        if seen >= count:
            break
    return torch.cat(taken) if taken else None
