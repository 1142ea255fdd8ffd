"""The reproduced tables: the paper's values in one column group, ours in another, as Markdown and CSV.

Our cells are computed from the saved per-sample scores of each run (never from memory), so a
table can be rebuilt at any time from what has finished; a cell without a number says why
(``not run: <reason>``): a set missing from the data folder, pretrained weights missing, another
paper's method, or a run still pending. All values are percent. FPR@95 takes ID as positive, the
paper's convention; AUPR is OpenOOD's trapezoidal area; std is numpy's (ddof 0).
"""
from __future__ import annotations

import csv
import io
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from moodcat_plugin.paper.estimate import duration
from moodcat_plugin.paper.runs import Context, RunResult, blocked_reason, pretrained_file_for, read_result, run_config
from moodcat_plugin.paper.spec import METRIC_HEADERS, RowSpec, RunSpec, TableSpec
from moodcat_plugin.utils import atomic_write_text, resolve_device

METRIC_KEYS = {"FPR@95": "FPR@95_id_positive", "AUROC": "AUROC", "AUPR_IN": "AUPR_IN", "AUPR_OUT": "AUPR_OUT"}
AUTHORS_PROTOCOL = ("authors (--protocol authors): MOODCAT rows condition every ID test image on its TRUE label and "
                    "every OOD image on a uniformly RANDOM label, as the authors' public evaluation does; this needs "
                    "test labels, so these rows are NOT a deployable detector and are never written to a leaderboard; "
                    "fused scores are still fixed on ID validation data, and baseline rows are unchanged")
PROTOCOL = ("deployable: every test image, ID or OOD, is synthesised and scored under the label the classifier "
            "predicts (y = C(x)), and fused scores are fixed on ID validation data only. The paper's numbers come "
            "from the authors' public evaluation, which conditions ID images on their TRUE label and OOD images on "
            "a RANDOM label and picks cascade thresholds on the test set: it needs test labels, so it is an "
            "optimistic upper reference, not run here (scripts/moodcat_protocols.py measures that gap for one model)")
METRICS_NOTE = ("values in percent; FPR@95 with ID as positive (the paper's convention: the share of OOD images "
                "accepted at 95 % ID recall); AUPR-In/Out are OpenOOD's trapezoidal areas; std is numpy's "
                "(ddof 0); ACC is the ID test accuracy of the classifier the method uses (the paper's ACC varies "
                "per OOD set: SC-OOD moves relabelled images into the ID test set)")


@dataclass
class Cell:
    """One of our values: mean (percent) and std, or the reason it is missing."""

    mean: Optional[float] = None
    std: Optional[float] = None
    reason: Optional[str] = None

    @staticmethod
    def of(values: Sequence[float]) -> "Cell":
        values = [float(v) for v in values]
        return Cell(float(np.mean(values)), float(np.std(values)) if len(values) > 1 else None)

    def text(self) -> str:
        if self.mean is None:
            return self.reason or "not run"
        return f"{self.mean:.2f}" + (f" ± {self.std:.2f}" if self.std is not None else "")


# -- reading our numbers --------------------------------------------------------------------------------
class Results:
    """Finished runs of one context, read once each."""

    def __init__(self, ctx: Context, command: str):
        self.ctx, self.command = ctx, command
        self._cache: Dict[RunSpec, Optional[RunResult]] = {}

    def get(self, run: RunSpec) -> Tuple[Optional[RunResult], Optional[str]]:
        """(result, None) for a finished run, else (None, why not)."""
        if run not in self._cache:
            self._cache[run] = read_result(run, self.ctx)
        result = self._cache[run]
        if result is not None:
            return result, None
        reason = blocked_reason(run, self.ctx)
        return None, f"not run: {reason}" if reason else f"not run: pending ({self.command})"

    def metric(self, run: RunSpec, component: Optional[str], ood_set: str, metric: str) -> Cell:
        """One metric of one run on one OOD set, in percent."""
        result, reason = self.get(run)
        if result is None:
            return Cell(reason=reason)
        name = f"{run.method}:{component}" if component else run.method
        row = result.rows.get(name)
        if row is None:
            return Cell(reason=f"not run: score '{name}' not recorded (scores: {', '.join(result.rows)})")
        if metric == "ACC":
            return Cell(100 * row["acc"])
        if ood_set not in row["datasets"]:
            why = "not in the data folder" if ood_set in result.missing else "not scored by this run"
            return Cell(reason=f"not run: set {ood_set} {why}")
        return Cell(100 * row["datasets"][ood_set][METRIC_KEYS[metric]])

    def repeated(self, row: RowSpec, ood_set: str, metric: str) -> Cell:
        """A row's metric over its runs (repeats: mean ± std)."""
        cells = [self.metric(run, row.run.component, ood_set, metric) for run in row.run.runs]
        missing = next((c for c in cells if c.mean is None), None)
        return missing if missing else Cell.of([c.mean for c in cells])


def summary(cells: Sequence[Cell], kind: str) -> Cell:
    """Mean or Std over the sets that have a value."""
    values = [c.mean for c in cells if c.mean is not None]
    if not values:
        return next((c for c in cells if c.reason), Cell(reason="not run"))
    return Cell(float(np.mean(values)) if kind == "Mean" else float(np.std(values)))


# -- table body ------------------------------------------------------------------------------------------
@dataclass
class Line:
    """One rendered row: label cells, the paper's values and ours (one per metric/column)."""

    labels: List[str]
    paper: List
    ours: List[Cell]


def table_lines(table: TableSpec, results: Results) -> List[Line]:
    if table.layout == "per_set":
        return _per_set_lines(table, results)
    if table.layout == "osr":
        return _osr_lines(table, results)
    return _single_set_lines(table, results)


def _fixed(row: RowSpec, count: int) -> List[Cell]:
    return [Cell(reason=f"not run: {row.not_run}") for _ in range(count)]


def _per_set_lines(table: TableSpec, results: Results) -> List[Line]:
    lines = []
    for row in table.rows:
        per_set = {}
        for label, name in table.sets.items():
            per_set[label] = (_fixed(row, len(table.metrics)) if row.run is None else
                              [results.repeated(row, name, metric) for metric in table.metrics])
            lines.append(Line([row.name, label], row.paper[label], per_set[label]))
        for kind in table.summaries:
            cells = [summary([per_set[label][i] for label in table.sets], kind) for i in range(len(table.metrics))]
            lines.append(Line([row.name, kind], row.paper[kind], cells))
    return lines


def _single_set_lines(table: TableSpec, results: Results) -> List[Line]:
    return [Line(list(row.labels), row.paper,
                 _fixed(row, len(table.metrics)) if row.run is None else
                 [results.repeated(row, row.ood_set, metric) for metric in table.metrics])
            for row in table.rows]


def _osr_lines(table: TableSpec, results: Results) -> List[Line]:
    lines = []
    for row in table.rows:
        cells = []
        for units in table.columns.values():
            if row.run is None:
                cells.append(Cell(reason=f"not run: {row.not_run}"))
                continue
            runs = {run.benchmark: run for run in row.run.runs}
            unit_cells = [results.metric(runs[u.benchmark], row.run.component, u.ood_set, table.metrics[0])
                          for u in units]
            cells.append(_osr_cell(unit_cells))
        lines.append(Line(list(row.labels), row.paper, cells))
    return lines


def _osr_cell(unit_cells: Sequence[Cell]) -> Cell:
    """Mean ± std over a setting's splits or draws; while some are missing, no number (the header
    promises a mean over all of them) but a reason that quotes the ones finished so far."""
    missing = next((c for c in unit_cells if c.mean is None), None)
    if missing is None:
        return Cell.of([c.mean for c in unit_cells])
    finished = [c.mean for c in unit_cells if c.mean is not None]
    if not finished:
        return missing
    return Cell(reason=f"{missing.reason}; finished {len(finished)} of {len(unit_cells)}: "
                       + ", ".join(f"{v:.2f}" for v in finished))


# -- rendering ----------------------------------------------------------------------------------------------
def column_names(table: TableSpec) -> Tuple[List[str], List[str]]:
    """(label column headers, value column headers)."""
    if table.layout == "per_set":
        return ["Method", "OOD"], [METRIC_HEADERS[m] for m in table.metrics]
    if table.layout == "osr":
        return ["Method"], [f"{name} ({table.metrics[0]})" for name in table.columns]
    return list(table.label_columns), [METRIC_HEADERS[m] for m in table.metrics]


def _paper_text(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, tuple):
        return f"{value[0]:.2f}" + (f" ± {value[1]:.2f}" if value[1] is not None else "")
    return f"{value:.2f}"


def git_commit(root: Path) -> str:
    """Short commit of the checkout (with a mark when files differ from it), or 'unknown'."""
    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    try:
        head = git("rev-parse", "--short", "HEAD")
        if head.returncode:
            return "unknown (not a git checkout)"
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"


def header(table: TableSpec, ctx: Context, results: Results, runs: Sequence[RunSpec], commit: str,
           estimate: str) -> List[str]:
    configs = [run_config(run, ctx) for run in runs]
    missing = sorted({name for run in runs for name in (_result_missing(results, run) or [])})
    data_root = configs[0].data_root if configs else ctx.data_root
    measured = [r.seconds for r in (results.get(run)[0] for run in runs) if r is not None and r.seconds is not None]
    lines = [f"# Table {table.number} of the MOODCAT paper, reproduced", "",
             f"Paper caption: *{table.caption}*", "",
             f"- **Protocol:** {PROTOCOL if ctx.protocol == 'deployable' else AUTHORS_PROTOCOL}.",
             f"- **Profile:** `{ctx.profile}` (training budgets of configs/*: profiles.{ctx.profile}); device "
             f"{resolve_device(configs[0].device).type}; CPU threads {configs[0].num_threads}; seed {configs[0].seed}. "
             "Paper: full-scale training (about 520k generator steps at batch 384, 100-epoch ResNet-18 classifiers).",
             f"- **Commit:** {commit}.",
             f"- **Overrides (--set):** {', '.join(f'`{o}`' for o in ctx.overrides) or 'none'}.",
             f"- **Data:** {data_root}; OOD sets not in the data folder: {', '.join(missing) or 'none'}"
             + (" (their rows: not run)." if missing else "."),
             f"- **Metrics:** {METRICS_NOTE}."]
    if table.summaries:
        lines.append(f"- **{'/'.join(table.summaries)} rows:** ours over the OOD sets that ran here "
                     f"({len(table.sets) - len(missing)} of {len(table.sets)}), the paper's over all {len(table.sets)}.")
    pretrained = sorted({(run.benchmark, file) for run in runs if (file := pretrained_file_for(run, ctx))})
    if pretrained:
        lines.append("- **Pretrained MOODCAT:** " + "; ".join(f"{b}: `{path}`" for b, path in pretrained)
                     + " (generator + Cb, e.g. the authors' weights imported by scripts/import_moodcat_weights.py) for "
                     "the `moodcat` rows whose settings only change scoring; other MOODCAT rows train as usual.")
    lines += [f"- **Note:** {note}" for note in table.notes]
    lines.append(f"- **Wall time:** expected before this command started: {estimate}; measured: "
                 + (f"{duration(sum(measured))} (sum over the {len(measured)} finished run(s), each including the "
                    "training it did itself)" if measured else "no run finished yet") + ".")
    return lines + [""]


def _result_missing(results: Results, run: RunSpec):
    result, _ = results.get(run)
    return result.missing if result else None


def render_markdown(table: TableSpec, lines: List[Line], head: List[str]) -> str:
    labels, values = column_names(table)
    columns = labels + [f"Paper {v}" for v in values] + [f"Ours {v}" for v in values]
    out = head + ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    previous = None
    for line in lines:
        first = "" if len(labels) > 1 and line.labels[0] == previous else line.labels[0]  # grouped rows
        previous = line.labels[0]
        cells = [first] + line.labels[1:] + [_paper_text(v) for v in line.paper] + _ours_texts(line.ours)
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def _ours_texts(cells: Sequence[Cell]) -> List[str]:
    """Our cells as text; a reason repeated in the cells right after it shows once, then '–'."""
    texts, previous = [], None
    for cell in cells:
        texts.append("–" if cell.mean is None and cell.reason == previous else cell.text())
        previous = cell.reason if cell.mean is None else None
    return texts


def render_csv(table: TableSpec, lines: List[Line]) -> str:
    labels, values = column_names(table)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    names = [v.split(" ")[0] for v in values]
    writer.writerow(["table"] + labels + [f"{group}_{n}{suffix}" for group in ("paper", "ours") for n in names
                                          for suffix in ("", "_std")] + ["ours_status"])
    for line in lines:
        paper = []
        for value in line.paper:
            mean, std = (value if isinstance(value, tuple) else (value, None))
            paper += ["" if mean is None else mean, "" if std is None else std]
        ours = []
        for cell in line.ours:
            ours += ["" if cell.mean is None else round(cell.mean, 4), "" if cell.std is None else round(cell.std, 4)]
        reasons = sorted({c.reason for c in line.ours if c.reason})
        writer.writerow([table.number] + line.labels + paper + ours + ["; ".join(reasons) or "ok"])
    return buffer.getvalue()


def table_stem(table: TableSpec, ctx: Context) -> str:
    """``table<N>``, or ``table<N>-protocol-<name>`` under a test-label protocol (a separate file)."""
    return f"table{table.number}" + (f"-protocol-{ctx.protocol}" if ctx.protocol != "deployable" else "")


def write_table(table: TableSpec, ctx: Context, command: str, commit: str, estimate: str,
                runs: Sequence[RunSpec]) -> str:
    """Rebuild ``table<N>.md`` and ``.csv`` (``table<N>-protocol-authors.*`` under ``--protocol
    authors``) under ``<output_dir>/paper`` from the finished runs; returns the Markdown."""
    results = Results(ctx, command)
    lines = table_lines(table, results)
    markdown = render_markdown(table, lines, header(table, ctx, results, runs, commit, estimate))
    atomic_write_text(markdown, ctx.paper_dir / f"{table_stem(table, ctx)}.md")
    atomic_write_text(render_csv(table, lines), ctx.paper_dir / f"{table_stem(table, ctx)}.csv")
    return markdown
