"""Score distributions: where a picture beats the leaderboard table.

One panel per evaluated method: the histogram of ``conf`` (higher = more in-distribution) on the
ID test set, filled, against one outline per OOD set (near-OOD solid, far-OOD dashed), each
labelled with its AUROC. Shows at a glance whether a method separates the sets, merely shifts
them, or inverts them. Built from the saved per-sample scores, like the leaderboard, and written
next to it as ``score_distributions.png``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import List

import numpy as np

from moodcat_plugin.evaluation.evaluator import ID_TEST
from moodcat_plugin.utils import atomic_write_with

PANEL_SIZE = (4.2, 3.0)  # inches per method panel
COLUMNS = 3
BINS = 40
CLIP_PERCENTILES = (0.5, 99.5)  # bin range, so a few extreme scores do not flatten the rest


def bin_edges(confs: List[np.ndarray]) -> np.ndarray:
    """Shared histogram edges over all sets of one method: (BINS + 1,) increasing floats."""
    values = np.concatenate([c[np.isfinite(c)] for c in confs])
    low, high = np.percentile(values, CLIP_PERCENTILES)
    if not high > low:  # constant scores: a unit-wide range around the value
        low, high = low - 0.5, high + 0.5
    return np.linspace(low, high, BINS + 1)


def _draw_method(ax, row: dict) -> None:
    """One panel: ID test filled, each OOD set outlined, legend with per-set AUROC."""
    confs = row["confs"]
    edges = bin_edges(list(confs.values()))
    ax.hist(np.clip(confs[ID_TEST], edges[0], edges[-1]), bins=edges, density=True, color="0.75",
            label=f"ID test (acc {100 * row['acc']:.1f})")
    for name, values in row["datasets"].items():
        style = "-" if values["group"] == "near" else "--"
        ax.hist(np.clip(confs[name], edges[0], edges[-1]), bins=edges, density=True, histtype="step",
                linestyle=style, linewidth=1.4, label=f"{name} ({values['group']}, AUROC {100 * values['AUROC']:.1f})")
    outlier = ", outlier data" if row["outlier_data"] else ""
    ax.set_title(f"{row['method']}{outlier}", fontsize=10)
    ax.set_xlabel("conf (higher = more in-distribution)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, frameon=False, loc="best")


def plot_score_distributions(rows: List[dict], path: Path | str) -> Path:
    """Write one panel per row to the PNG ``path`` atomically.

    rows: leaderboard rows (``collect_rows``), each with ``confs``: set name -> conf array (N,),
    the ID test set under ``ID_TEST``.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    if not rows:
        raise ValueError("no evaluated method to plot")
    columns = min(COLUMNS, len(rows))
    lines = math.ceil(len(rows) / columns)
    figure = Figure(figsize=(PANEL_SIZE[0] * columns, PANEL_SIZE[1] * lines), layout="constrained")
    axes = figure.subplots(lines, columns, squeeze=False).ravel()
    for ax, row in zip(axes, rows):
        _draw_method(ax, row)
    for ax in axes[len(rows):]:
        ax.set_visible(False)
    path = Path(path)
    atomic_write_with(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    return path
