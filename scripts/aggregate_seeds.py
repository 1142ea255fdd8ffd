#!/usr/bin/env python
"""Mean ± std over runs (e.g. seeds) of the same benchmark: one table from several leaderboards.

Each argument is a benchmark results folder holding ``leaderboard.json`` (as written by
``run_benchmark.py``), e.g. ``results/seed0/demo results/seed1/demo results/seed2/demo``. For every
method present in all of them: ID accuracy and the near/far mean AUROC and FPR@95 (the
convention the leaderboards were written with), mean ± std (population std) over the runs.

    python scripts/aggregate_seeds.py results/seed{0,1,2}/demo
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from moodcat_plugin.errors import UserError
from moodcat_plugin.utils import run_guarded


def group_mean(row: dict, group: str, key: str) -> float:
    values = [100 * v[key] for v in row["datasets"].values() if v["group"] == group]
    return float(np.mean(values)) if values else float("nan")


def check_comparable(folders, boards) -> None:
    """One-line errors for runs whose mean would not mean 'the same thing over seeds': fewer than two
    distinct folders, other benchmarks, or a method scored on other OOD sets in one of them."""
    if len({Path(f).resolve() for f in folders}) < 2:
        raise UserError("give at least two different results folders (one per seed); a spread needs two runs")
    benchmarks = {board.get("benchmark") for board in boards}
    if len(benchmarks) != 1:
        raise UserError(f"the leaderboards are of different benchmarks ({', '.join(sorted(map(str, benchmarks)))}); "
                        "aggregate the runs of one benchmark")
    for row in boards[0]["rows"]:
        sets = {tuple(sorted(r["datasets"])) for b in boards for r in b["rows"] if r["method"] == row["method"]}
        if len(sets) > 1:
            raise UserError(f"method {row['method']} was scored on other OOD sets in some runs "
                            f"({' vs '.join(', '.join(s) for s in sorted(sets))}); rerun them on the same data")


def aggregate(folders) -> str:
    boards = []
    for folder in folders:
        path = Path(folder) / "leaderboard.json"
        if not path.is_file():
            raise UserError(f"{path} does not exist; pass benchmark results folders written by run_benchmark.py")
        boards.append(json.loads(path.read_text()))
    check_comparable(folders, boards)
    conventions = {board["fpr_convention"] for board in boards}
    if len(conventions) != 1:
        raise UserError(f"the leaderboards use different FPR conventions {sorted(conventions)}; rebuild them with one")
    fpr_key = f"FPR@95_{conventions.pop()}"
    methods = [row["method"] for row in boards[0]["rows"]
               if all(any(r["method"] == row["method"] for r in b["rows"]) for b in boards)]
    columns = [("ID acc", None, None), ("near AUROC", "near", "AUROC"), ("far AUROC", "far", "AUROC"),
               ("near FPR@95", "near", fpr_key), ("far FPR@95", "far", fpr_key)]
    lines = [f"Mean ± std over {len(boards)} runs ({', '.join(str(f) for f in folders)}); FPR@95 is {fpr_key[7:]}.",
             "", "| method | " + " | ".join(c[0] for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for method in methods:
        rows = [next(r for r in b["rows"] if r["method"] == method) for b in boards]
        cells = []
        for _, group, key in columns:
            values = [100 * r["acc"] if group is None else group_mean(r, group, key) for r in rows]
            cells.append(f"{np.mean(values):.2f} ± {np.std(values):.2f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    args = parser.parse_args(argv)
    return run_guarded(lambda: aggregate(args.folders))


if __name__ == "__main__":
    sys.exit(main())
