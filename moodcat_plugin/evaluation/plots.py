"""Score distributions: where a picture beats the leaderboard table.

One panel per evaluated method: the histogram of ``conf`` (higher = more in-distribution) on the
ID test set, filled, against one outline per OOD set (near-OOD solid, far-OOD dashed), each
labelled with its AUROC. Shows at a glance whether a method separates the sets, merely shifts
them, or inverts them. Built from the saved per-sample scores, like the leaderboard, and written
next to it as ``score_distributions.png``.

Bar heights are the share of each set's images per bin (not a density), so a set whose scores
all sit at one value (MSP of a confident classifier: every conf 1.0) shows one bar of height 1
and says so in the legend ("all N scores = 1.0") instead of an invisible spike.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import List

import numpy as np

from moodcat_plugin.evaluation.evaluator import ID_TEST
from moodcat_plugin.utils import atomic_write_with

PANEL_SIZE = (4.2, 3.0)  # inches per method panel
COLUMNS = 3
BINS = 40
CLIP_PERCENTILES = (0.5, 99.5)  # bin range, so a few extreme scores do not flatten the rest
TITLE_CHARS_PER_INCH = 13  # figure title wrapped to the figure width (fontsize 9)


def _negligible_spread(low: float, high: float) -> bool:
    """True when [low, high] is one value up to float32 rounding (e.g. 0.99999994 and 1.0)."""
    return not high - low > 1e-6 * max(1.0, abs(high))


def bin_edges(confs: List[np.ndarray]) -> np.ndarray:
    """Shared histogram edges over all sets of one method: (BINS + 1,) increasing floats, or, for
    (nearly) constant scores, BINS + 1 bins over a unit-wide range centred so the value sits mid-bin."""
    values = np.concatenate([c[np.isfinite(c)] for c in confs])
    low, high = np.percentile(values, CLIP_PERCENTILES)
    if _negligible_spread(low, high):
        return (low + high) / 2 + np.linspace(-0.5, 0.5, BINS + 2)
    return np.linspace(low, high, BINS + 1)


def constant_note(values: np.ndarray) -> str:
    """', all N scores = v' when every score of a set has the same value, else ''."""
    low, high = float(np.min(values)), float(np.max(values))
    return f", all {len(values)} scores = {round(high, 6)}" if _negligible_spread(low, high) else ""


def _histogram(ax, values: np.ndarray, edges: np.ndarray, **style) -> None:
    """Share of ``values`` per bin (heights sum to 1), extremes clipped into the outer bins."""
    ax.hist(np.clip(values, edges[0], edges[-1]), bins=edges, weights=np.full(len(values), 1 / len(values)), **style)


def _draw_method(ax, row: dict) -> None:
    """One panel: ID test filled, each OOD set outlined, legend with per-set AUROC."""
    confs = row["confs"]
    edges = bin_edges(list(confs.values()))
    _histogram(ax, confs[ID_TEST], edges, color="0.75",
               label=f"ID test (acc {100 * row['acc']:.1f}{constant_note(confs[ID_TEST])})")
    for name, values in row["datasets"].items():
        style = "-" if values["group"] == "near" else "--"
        _histogram(ax, confs[name], edges, histtype="step", linestyle=style, linewidth=1.4,
                   label=f"{name} ({values['group']}, AUROC {100 * values['AUROC']:.1f}{constant_note(confs[name])})")
    outlier = ", outlier data" if row["outlier_data"] else ""
    ax.set_title(f"{row['method']}{outlier}", fontsize=10)
    ax.set_xlabel("conf (higher = more in-distribution)", fontsize=8)
    ax.set_ylabel("share of the set's images", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, frameon=False, loc="best")


def figure_title(rows: List[dict], benchmark: str) -> str:
    """Benchmark and protocol: which sets are compared, and the training profile(s) of the rows."""
    profiles = sorted({str(row["meta"].get("profile")) for row in rows if row.get("meta")})
    profile = f"; profile {', '.join(profiles)}" if profiles else ""
    return (f"{benchmark}: score distributions, ID test (filled) vs each OOD test set "
            f"(near solid, far dashed){profile}")


def plot_score_distributions(rows: List[dict], path: Path | str, benchmark: str = "") -> Path:
    """Write one panel per row to the PNG ``path`` atomically, under a title naming ``benchmark``.

    rows: leaderboard rows (``collect_rows``), each with ``confs``: set name -> conf array (N,),
    the ID test set under ``ID_TEST``.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    if not rows:
        raise ValueError("no evaluated method to plot")
    columns = min(COLUMNS, len(rows))
    lines = math.ceil(len(rows) / columns)
    figure = Figure(figsize=(PANEL_SIZE[0] * columns, PANEL_SIZE[1] * lines + 0.4), layout="constrained")
    figure.suptitle(textwrap.fill(figure_title(rows, benchmark), width=int(TITLE_CHARS_PER_INCH * PANEL_SIZE[0] * columns)),
                    fontsize=9)
    axes = figure.subplots(lines, columns, squeeze=False).ravel()
    for ax, row in zip(axes, rows):
        _draw_method(ax, row)
    for ax in axes[len(rows):]:
        ax.set_visible(False)
    path = Path(path)
    atomic_write_with(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    return path
