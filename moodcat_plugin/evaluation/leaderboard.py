"""Side-by-side leaderboards rebuilt from saved per-sample scores.

Rows are methods (plus one row per recorded component when a method fuses several, e.g.
``moodcat:cb``); columns are the OOD datasets, near/far means (± standard deviation over
datasets, shown when a group has more than one) and the ID accuracy of the network each method
evaluates. Written as Markdown, CSV and JSON under the results folder, with the per-method score
histograms of ``plots.py`` as ``score_distributions.png``; because it is rebuilt from every method
folder present, a later run adds or replaces only its own rows. A method folder that cannot be
read (corrupt npz, invalid meta.json, missing files) is skipped with a warning naming it and the
fix, and listed in the Markdown; hidden folders (a score set being written) are ignored.
Usage: ``python scripts/rebuild_leaderboard.py RESULTS_DIR [--fpr id_positive]``.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from moodcat_plugin.errors import UserError
from moodcat_plugin.evaluation.evaluator import ID_TEST
from moodcat_plugin.evaluation.metrics import FPR_CONVENTIONS, accuracy, ood_metrics
from moodcat_plugin.evaluation.plots import plot_score_distributions
from moodcat_plugin.utils import atomic_write_json, atomic_write_text, run_guarded

log = logging.getLogger(__name__)

METRICS = ("AUROC", "FPR@95", "AUPR_IN", "AUPR_OUT")
LOWER_IS_BETTER = {"FPR@95"}


# what reading a damaged method folder raises: missing file, invalid JSON or NaN, corrupt npz,
# missing key, wrong type, non-finite or mismatched scores
UNREADABLE = (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, EOFError, zipfile.BadZipFile,
              zlib.error)


def _load_scores(folder: Path, name: str) -> dict:
    with np.load(folder / f"{name}.npz") as pack:
        return {key: pack[key] for key in pack.files}


def _reject_constant(name: str):
    raise ValueError(f"meta.json holds {name}, which is not valid JSON")


def _rows_of_method(folder: Path) -> List[dict]:
    """One row for the method's conf, and one per component conf when there are several
    (a single component is the method itself)."""
    meta = json.loads((folder / "meta.json").read_text(), parse_constant=_reject_constant)
    id_scores = _load_scores(folder, ID_TEST)
    acc = accuracy(id_scores["pred"], id_scores["label"])
    variants = {meta["method"]: "conf"}
    components = meta.get("components", [])
    if len(components) > 1:
        variants.update({f"{meta['method']}:{c}": f"component_{c}" for c in components})
    groups = {name: group for group, names in meta["groups"].items() for name in names}
    ood_scores = {name: _load_scores(folder, name) for name in groups}  # read once, used by every row
    rows = []
    for row_name, key in variants.items():
        datasets, confs = {}, {ID_TEST: id_scores[key]}
        for name, group in groups.items():
            confs[name] = ood_scores[name][key]
            datasets[name] = {"group": group, **ood_metrics(id_scores[key], confs[name])}
        rows.append({"method": row_name, "acc": acc, "outlier_data": meta.get("outlier_data", False),
                     "network": meta.get("network", ""), "datasets": datasets, "meta": meta, "confs": confs})
    return rows


def read_method_folders(results_dir: Path) -> Tuple[List[dict], List[str]]:
    """(rows of every readable method folder under ``scores/``, one note per unreadable folder).

    Hidden folders (``.<method>.partial-*``: a score set being written or left by a killed run)
    are ignored. A folder that cannot be read is skipped with a warning naming it and the fix.
    """
    scores_dir = Path(results_dir) / "scores"
    folders = sorted(p for p in scores_dir.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if scores_dir.is_dir() else []
    rows, skipped = [], []
    for folder in folders:
        try:
            rows += _rows_of_method(folder)
        except UNREADABLE as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            note = (f"{folder} ({type(exc).__name__}: {reason}); rerun the method "
                    f"(--postprocessor {folder.name}) to re-score it, or delete the folder")
            log.warning("skipping unreadable method folder %s", note)
            skipped.append(note)
    return rows, skipped


def collect_rows(results_dir: Path) -> List[dict]:
    return read_method_folders(results_dir)[0]


def _metric_key(metric: str, convention: str) -> str:
    return f"FPR@95_{convention}" if metric == "FPR@95" else metric


def table_columns(rows: List[dict]) -> Dict[str, List[str]]:
    """The OOD set names of every row by group (``near``, ``far``), in first-seen order."""
    columns: Dict[str, List[str]] = {"near": [], "far": []}
    for row in rows:
        for name, values in row["datasets"].items():
            if name not in columns[values["group"]]:
                columns[values["group"]].append(name)
    return columns


def table_values(row: dict, metric: str, convention: str, columns: Dict[str, List[str]]) -> Dict[str, tuple]:
    """Column name -> (mean, std) in percent, None if absent. std is None for single datasets and
    for group means over one dataset (nothing to spread)."""
    key = _metric_key(metric, convention)
    values: Dict[str, tuple] = {}
    for group, names in columns.items():
        present = [100 * row["datasets"][n][key] for n in names if n in row["datasets"]]
        for name in names:
            values[name] = (100 * row["datasets"][name][key], None) if name in row["datasets"] else None
        spread = float(np.std(present)) if len(present) > 1 else None
        values[f"{group} mean"] = (float(np.mean(present)), spread) if present else None
    return values


def markdown_cell(text: str) -> str:
    """``text`` safe inside a Markdown table cell (a ``|`` would end the cell)."""
    return str(text).replace("|", "\\|")


def render_markdown(rows: List[dict], benchmark: str, convention: str, missing: List[str],
                    skipped: List[str] = ()) -> str:
    columns = table_columns(rows)
    ordered = columns["near"] + ["near mean"] + columns["far"] + ["far mean"]
    lines = [f"# Leaderboard: {benchmark}", "",
             f"FPR@95 column convention: **{FPR_CONVENTIONS[convention]}**. AUPR-In/Out: **OpenOOD's "
             "definition** (trapezoidal area under the precision-recall curve, not average precision). "
             "Values in percent; group means are unweighted over datasets (± std). Best per column in bold.",
             f"Missing OOD sets (not in the data folder, skipped): {', '.join(missing) or 'none'}."]
    lines += [f"Skipped unreadable method folder: {note}." for note in skipped] + [""]
    for metric in METRICS:
        title = FPR_CONVENTIONS[convention] if metric == "FPR@95" else metric
        table = {row["method"]: table_values(row, metric, convention, columns) for row in rows}
        best = {}
        for column in ordered:
            present = [v[0] for v in (t[column] for t in table.values()) if v is not None]
            if present:
                best[column] = min(present) if metric in LOWER_IS_BETTER else max(present)
        header = " | ".join(map(markdown_cell, ordered))
        lines += [f"## {title}", "", f"| method | outlier data | ID acc | {header} |",
                  "|---" * (len(ordered) + 3) + "|"]
        for row in rows:
            cells = []
            for column in ordered:
                value = table[row["method"]][column]
                if value is None:
                    cells.append("-")
                    continue
                text = f"{value[0]:.2f}" + (f" ± {value[1]:.2f}" if value[1] is not None else "")
                cells.append(f"**{text}**" if np.isclose(value[0], best[column]) and len(rows) > 1 else text)
            outlier = "yes" if row["outlier_data"] else "no"
            lines.append(f"| {markdown_cell(row['method'])} | {outlier} | {100 * row['acc']:.2f} | "
                         + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines + method_notes(rows))


def method_notes(rows: List[dict]) -> List[str]:
    """One line per method: the network it evaluates, hyperparameters, and any scorer details."""
    lines = ["## Methods", ""]
    for row in rows:
        meta = row["meta"]
        if row["method"] != meta["method"]:
            continue  # component rows share their method's notes
        details = [meta.get("network", "")]
        if meta.get("hyperparameters"):
            details.append(f"hyperparameters {meta['hyperparameters']}" + (" (APS)" if meta.get("aps_trials") else ""))
        if meta.get("scorers"):
            details.append(f"scorers {meta['scorers']}, IQA trunks: {meta.get('iqa_trunks')}")
        details.append(f"profile {meta.get('profile')}, device {meta.get('device')}, {meta.get('seconds')} s")
        lines.append(f"- **{meta['method']}**: " + "; ".join(d for d in details if d))
    return lines + [""]


def render_csv(rows: List[dict], convention: str) -> str:
    columns = table_columns(rows)
    ordered = columns["near"] + ["near mean"] + columns["far"] + ["far mean"]
    header = ["method", "outlier_data", "id_acc"]
    header += [f"{metric}/{column}" for metric in METRICS for column in ordered]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    for row in rows:
        cells = [row["method"], row["outlier_data"], f"{100 * row['acc']:.4f}"]
        for metric in METRICS:
            values = table_values(row, metric, convention, columns)
            cells += ["" if values[c] is None else f"{values[c][0]:.4f}" for c in ordered]
        writer.writerow(cells)
    return out.getvalue()


def write_leaderboard(results_dir: Path, benchmark: str, convention: str) -> str:
    """Rebuild the leaderboard from saved scores; write .md/.csv/.json and the score-distribution
    plot (one panel per method, components left out); return the Markdown. UserError when the
    folder does not exist or holds no readable scores."""
    if convention not in FPR_CONVENTIONS:
        raise ValueError(f"unknown FPR convention '{convention}'; use one of {', '.join(FPR_CONVENTIONS)}")
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise UserError(f"results folder {results_dir} does not exist; pass a benchmark's results folder, "
                        "e.g. results/cifar10 (<output_dir>/<benchmark>)")
    rows, skipped = read_method_folders(results_dir)
    if not rows:
        found = f"every method folder is unreadable: {'; '.join(skipped)}" if skipped else "there are no method scores"
        raise UserError(f"nothing to rank in {results_dir}: {found}. Pass a benchmark's results folder "
                        "(<output_dir>/<benchmark>, holding scores/<method>/) or run scripts/run_benchmark.py first")
    missing = sorted({name for row in rows for name in row["meta"].get("missing", [])})
    markdown = render_markdown(rows, benchmark, convention, missing, skipped)
    atomic_write_text(markdown, results_dir / "leaderboard.md")
    atomic_write_text(render_csv(rows, convention), results_dir / "leaderboard.csv")
    atomic_write_json({"benchmark": benchmark, "fpr_convention": convention, "missing": missing,
                       "skipped_method_folders": skipped,
                       "rows": [{k: v for k, v in row.items() if k not in ("meta", "confs")} for row in rows]},
                      results_dir / "leaderboard.json")
    method_rows = [row for row in rows if row["method"] == row["meta"]["method"]]
    plot_score_distributions(method_rows, results_dir / "score_distributions.png", benchmark)
    return markdown


def main(argv=None) -> int:
    """Command line of ``scripts/rebuild_leaderboard.py``; exit status 2 with a one-line error."""
    parser = argparse.ArgumentParser(description="Rebuild a leaderboard from saved per-sample scores.")
    parser.add_argument("results_dir", type=Path, help="e.g. results/cifar10")
    parser.add_argument("--fpr", default="ood_positive", choices=sorted(FPR_CONVENTIONS))
    args = parser.parse_args(argv)
    return run_guarded(lambda: write_leaderboard(args.results_dir, args.results_dir.resolve().name, args.fpr))


if __name__ == "__main__":
    sys.exit(main())
