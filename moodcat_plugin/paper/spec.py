"""The paper's tables as data: ``configs/paper/tables.yml`` read into :class:`TableSpec` objects.

Each table lists its rows with the published values (percent, as printed) and how we reproduce
each row: a :class:`RunSpec` (benchmark, method, config overrides, OOD sets) per scoring run. Runs
are plain values, so two rows (or two tables) that need the same scoring share one run and its
saved scores; trained models are shared anyway through the checkpoint cache.

Layouts (see the data file's header): ``per_set`` (rows = method x OOD set, plus summary rows),
``single_set`` (one OOD set, rows = variants) and ``osr`` (columns = OSR settings, each cell a
mean ± std over units). Nothing here trains or reads image data.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from moodcat_plugin.config import load_yaml
from moodcat_plugin.errors import ConfigError

LAYOUTS = ("per_set", "single_set", "osr")
METRICS = ("FPR@95", "AUROC", "AUPR_IN", "AUPR_OUT", "ACC")
METRIC_HEADERS = {"FPR@95": "FPR@95 ↓", "AUROC": "AUROC ↑", "AUPR_IN": "AUPR-In ↑", "AUPR_OUT": "AUPR-Out ↑",
                  "ACC": "ACC ↑"}
RUN_KEYS = ("benchmark", "method", "set", "ood_sets_from", "sets_only", "component", "repeats")
SUMMARIES = ("Mean", "Std")

#: A published value: a number, (mean, std), or None where the paper prints "-" or nothing.
Value = Union[None, float, Tuple[float, Optional[float]]]


def tables_file(config_root: Path) -> Path:
    return Path(config_root) / "paper" / "tables.yml"


@dataclass(frozen=True)
class RunSpec:
    """One scoring run: ``method`` on ``benchmark`` with ``overrides`` (``key=json`` strings under
    ``postprocessors.<method>``), OOD sets replaced by those of ``ood_sets_from`` and/or cut to
    ``sets_only``. Hashable: equal specs are one run."""

    benchmark: str
    method: str
    overrides: Tuple[str, ...] = ()
    ood_sets_from: Optional[str] = None
    sets_only: Optional[Tuple[str, ...]] = None

    def describe(self) -> str:
        parts = [f"{self.method} on {self.benchmark}"]
        if self.ood_sets_from:
            parts.append(f"OOD sets of {self.ood_sets_from}")
        if self.sets_only:
            parts.append(f"sets {', '.join(self.sets_only)}")
        parts += list(self.overrides)
        return "; ".join(parts)


@dataclass(frozen=True)
class RowRun:
    """Where a row's numbers come from: the runs (several when repeated) and the score read
    (``component``: one scorer's own score; None: the method's score)."""

    runs: Tuple[RunSpec, ...]
    component: Optional[str] = None


@dataclass
class RowSpec:
    """One row of a table: its labels, the paper's values and how we reproduce it."""

    labels: Tuple[str, ...]
    paper: Any                      # per_set: {set label: [values]}; single_set: [values]; osr: [per column]
    run: Optional[RowRun] = None
    not_run: Optional[str] = None   # a fixed reason when there is no run (another paper's method)
    ood_set: Optional[str] = None   # single_set: this row's OOD set (default: the table's)

    @property
    def name(self) -> str:
        return " / ".join(self.labels)


@dataclass
class OsrUnit:
    benchmark: str
    ood_set: str


@dataclass
class TableSpec:
    number: int
    caption: str
    layout: str
    metrics: List[str]
    rows: List[RowSpec]
    label_columns: List[str] = field(default_factory=list)
    sets: Dict[str, str] = field(default_factory=dict)          # per_set: paper label -> our set name
    summaries: List[str] = field(default_factory=list)
    ood_set: Optional[str] = None                               # single_set default
    columns: Dict[str, List[OsrUnit]] = field(default_factory=dict)  # osr: setting -> units
    notes: List[str] = field(default_factory=list)
    parts: Dict[str, dict] = field(default_factory=dict)        # name -> {rows: [...]} or {benchmarks: [...]}

    def runs(self, part: Optional[str] = None) -> List[RunSpec]:
        """Every distinct run of the table (or of one part), in row order."""
        rows = self.rows_of_part(part)
        benchmarks = set(self.parts[part].get("benchmarks", [])) if part else set()
        ordered: Dict[RunSpec, None] = {}
        for row in rows:
            for run in (row.run.runs if row.run else ()):
                if not benchmarks or run.benchmark in benchmarks:
                    ordered[run] = None
        return list(ordered)

    def rows_of_part(self, part: Optional[str]) -> List[RowSpec]:
        if part is None:
            return list(self.rows)
        if part not in self.parts:
            raise ConfigError(f"table {self.number} has no part '{part}'; its parts: "
                              f"{', '.join(self.parts) or 'none (run the whole table)'}")
        names = self.parts[part].get("rows")
        return [row for row in self.rows if names is None or row.name in names]


# -- loading ------------------------------------------------------------------------------------------
def load_tables(config_root: Path) -> Dict[int, TableSpec]:
    """Every table of ``configs/paper/tables.yml``, checked; ConfigError (one line) naming the key."""
    path = tables_file(config_root)
    data = load_yaml(path)
    tables = data.get("tables")
    if not isinstance(tables, Mapping) or not tables:
        raise ConfigError(f"{path} must hold a 'tables' mapping of table number -> table")
    return {int(number): _table(int(number), body, f"{path.name}: tables.{number}") for number, body in tables.items()}


def _require(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{where}: {message}")


def _table(number: int, body: Mapping, where: str) -> TableSpec:
    _require(isinstance(body, Mapping), where, "must be a mapping")
    layout = body.get("layout")
    _require(layout in LAYOUTS, where, f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    metrics = list(body.get("metrics") or [])
    _require(bool(metrics) and set(metrics) <= set(METRICS), where, f"metrics must be a non-empty subset of {METRICS}")
    defaults = dict(body.get("run") or {})
    table = TableSpec(number=number, caption=" ".join(str(body.get("caption", "")).split()), layout=layout,
                      metrics=metrics, rows=[], label_columns=list(body.get("label_columns") or []),
                      sets=dict(body.get("sets") or {}), summaries=list(body.get("summaries") or []),
                      ood_set=body.get("ood_set"), notes=[str(n) for n in body.get("notes") or []],
                      parts={p["name"]: p for p in body.get("parts") or []})
    _require(set(table.summaries) <= set(SUMMARIES), where, f"summaries must be a subset of {SUMMARIES}")
    if layout == "osr":
        columns = body.get("columns") or {}
        table.columns = {name: [OsrUnit(**unit) for unit in units] for name, units in columns.items()}
        _require(bool(table.columns), where, "an osr table needs columns")
    for index, row in enumerate(body.get("rows") or []):
        table.rows.append(_row(table, row, defaults, f"{where}.rows[{index}]"))
    _require(bool(table.rows), where, "has no rows")
    names = [row.name for row in table.rows]
    _require(len(set(names)) == len(names), where, "two rows have the same label(s)")
    for name, part in table.parts.items():
        unknown = sorted(set(part.get("rows") or []) - set(names))
        _require(not unknown, f"{where}.parts.{name}", f"names unknown rows {unknown}; rows: {names}")
    return table


def _row(table: TableSpec, body: Mapping, defaults: Mapping, where: str) -> RowSpec:
    labels = tuple(body["labels"]) if "labels" in body else (body.get("label"),)
    _require(all(isinstance(label, str) and label for label in labels), where, "needs a label (or labels)")
    if table.layout == "single_set":
        _require(len(labels) == len(table.label_columns), where,
                 f"needs {len(table.label_columns)} labels (one per label column {table.label_columns})")
    row = RowSpec(labels=labels, paper=_paper_values(table, body.get("paper"), where),
                  not_run=body.get("not_run"), ood_set=body.get("ood_set", table.ood_set))
    if "run" in body:
        row.run = _row_run(table, body["run"], defaults, where)
    else:
        _require(bool(row.not_run), where, "needs a run, or not_run: <reason>")
    if table.layout == "single_set":
        _require(bool(row.ood_set), where, "needs an ood_set (or the table's)")
    return row


def _row_run(table: TableSpec, body: Mapping, defaults: Mapping, where: str) -> RowRun:
    merged = {**defaults, **body}
    merged["set"] = {**(defaults.get("set") or {}), **(body.get("set") or {})}
    unknown = sorted(set(merged) - set(RUN_KEYS))
    _require(not unknown, f"{where}.run", f"unknown key(s) {unknown}; valid: {', '.join(RUN_KEYS)}")
    _require(bool(merged.get("method")), f"{where}.run", "names no method")
    repeats = int(merged.get("repeats", 1))
    _require(repeats >= 1, f"{where}.run", "repeats must be >= 1")
    benchmarks = ([merged.get("benchmark")] if table.layout != "osr"
                  else sorted({u.benchmark for units in table.columns.values() for u in units}))
    _require(all(benchmarks), f"{where}.run", "names no benchmark")
    runs = []
    for benchmark in benchmarks:
        for repeat in range(repeats):
            settings = dict(merged["set"])
            if repeat:  # repeat 0 is the plain run, shared with rows that do not repeat
                settings["postprocessor.postprocessor_args.mask_seed"] = repeat
            runs.append(RunSpec(benchmark=benchmark, method=merged["method"],
                                overrides=tuple(sorted(f"{k}={json.dumps(v)}" for k, v in settings.items())),
                                ood_sets_from=merged.get("ood_sets_from"),
                                sets_only=tuple(merged["sets_only"]) if merged.get("sets_only") else None))
    return RowRun(runs=tuple(runs), component=merged.get("component"))


def _value(raw: Any, where: str) -> Value:
    if raw is None:
        return None
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return float(raw)
    if isinstance(raw, list) and len(raw) == 2 and all(isinstance(v, (int, float)) or v is None for v in raw):
        return (float(raw[0]), None if raw[1] is None else float(raw[1]))
    raise ConfigError(f"{where}: a published value must be a number, [mean, std] or null, got {raw!r}")


def _values(raw: Any, count: int, where: str) -> List[Value]:
    _require(isinstance(raw, list) and len(raw) == count, where, f"needs {count} values, got {raw!r}")
    return [_value(v, where) for v in raw]


def _paper_values(table: TableSpec, raw: Any, where: str):
    where = f"{where}.paper"
    if table.layout == "per_set":
        _require(isinstance(raw, Mapping), where, "must map each set (and summary) to its values")
        expected = list(table.sets) + table.summaries
        _require(list(raw) == expected, where, f"must list {expected} in this order, got {list(raw)}")
        return {name: _values(values, len(table.metrics), f"{where}.{name}") for name, values in raw.items()}
    if table.layout == "osr":
        return _values(raw, len(table.columns), where)
    return _values(raw, len(table.metrics), where)
