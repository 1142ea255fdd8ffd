"""Scoring runs of the paper's tables: one config per :class:`RunSpec`, trained and scored through
the normal pipeline (:class:`moodcat_plugin.pipeline.Runner`), saved under a folder named by the
run's config hash.

Layout under ``<output_dir>/paper/``::

    runs/<benchmark>-<method>-<hash>/<dataset>/scores/<method>/   per-sample scores + meta.json
    runs/<benchmark>-<method>-<hash>/paper_run.json               what ran, wall seconds
    table<N>.md, table<N>.csv                                      the tables (moodcat_plugin.paper.tables)

Trained models live in the usual checkpoint cache (default ``<output_dir>/checkpoints``, the same
folder ``run_benchmark.py --output-dir <output_dir>`` uses), keyed as always, so tables share
models with each other and with earlier benchmark runs. A run whose ``meta.json`` exists is
finished and skipped (resume after an interruption); ``rerun`` scores it again.
"""
from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from moodcat_plugin.config import Config, ConfigError, config_hash, load_yaml
from moodcat_plugin.evaluation.leaderboard import read_method_folders
from moodcat_plugin.moodcat.scorers import IQA_SCORERS, hub_checkpoint_dir, required_weight_files
from moodcat_plugin.paper.spec import RunSpec
from moodcat_plugin.moodcat.weights import load_weights, locate
from moodcat_plugin.pipeline import (Runner, _named_file, available, build_config, load_method_file, method_config,
                                     validate)
from moodcat_plugin.utils import atomic_write_json, resolve_device

log = logging.getLogger(__name__)
LOCATION_KEYS = ("output_dir", "checkpoint_dir", "data_root", "progress")


@dataclass
class Context:
    """Where and how the tables run (the script's flags)."""

    config_root: Path
    profile: str = "cpu"
    output_dir: Path = Path("results")
    checkpoint_dir: Optional[str] = None     # default <output_dir>/checkpoints
    data_root: Optional[str] = None          # default: base.yml's (../shared/data)
    device: Optional[str] = None
    overrides: Sequence[str] = ()            # run-wide --set overrides (e.g. num_threads=1)
    progress: bool = True
    rerun: bool = False
    pretrained: Sequence[str] = ()           # MOODCAT weights files (one per benchmark) for the paper generator + Cb
    protocol: str = "deployable"             # 'authors': MOODCAT rows conditioned on true (ID) / random (OOD) labels
    _configs: Dict[RunSpec, Config] = field(default_factory=dict, repr=False)

    @property
    def paper_dir(self) -> Path:
        return Path(self.output_dir) / "paper"

    def flags(self) -> dict:
        return {"output_dir": str(self.paper_dir / "runs"),
                "checkpoint_dir": self.checkpoint_dir or str(Path(self.output_dir) / "checkpoints"),
                "data_root": self.data_root, "device": self.device, "progress": None if self.progress else False}


# -- configs ---------------------------------------------------------------------------------------------
def _key_path(override: str) -> List[str]:
    """The dotted key of a ``key=value`` override, as its parts."""
    return override.split("=", 1)[0].strip().split(".")


def method_of(override: str) -> Optional[str]:
    """The method a ``--set`` override belongs to (``postprocessors.<method>.<key>=...``), None for a
    run-wide key such as ``num_threads=1``."""
    parts = _key_path(override)
    return parts[1] if len(parts) > 2 and parts[0] == "postprocessors" else None


def overrides_for(run: RunSpec, ctx: Context) -> List[str]:
    """The ``--set`` overrides that apply to ``run``: run-wide keys, and keys of its own method (a
    table mixes methods, e.g. ``postprocessors.moodcat.gan.cutmix=false`` leaves ODIN's runs alone)."""
    return [o for o in ctx.overrides if method_of(o) in (None, run.method)]


def check_method_overrides(ctx: Context) -> None:
    """One-line error for a ``--set postprocessors.<method>...`` naming no method of the config
    folder (a typo would otherwise change nothing). A known method that a table does not run is
    fine: one set of flags serves every table (e.g. the CIFAR-100 CutMix setting)."""
    known = available(Path(ctx.config_root), "postprocessors")
    for override in ctx.overrides:
        method = method_of(override)
        if method is not None and method not in known:
            raise ConfigError(f"--set {override}: there is no method '{method}' (methods: {', '.join(known)}); "
                              f"fix the method name or drop the setting")


def table_settings(run: RunSpec, ctx: Context) -> List[str]:
    """``run``'s own settings (its table row's) as full ``--set`` strings. A ``--set`` naming one of
    them, or a section holding one, is a one-line error: the row's value would silently win (a
    table's row settings are its definition, configs/paper/tables.yml)."""
    fixed = [f"postprocessors.{run.method}.{o}" for o in run.overrides]
    for override in overrides_for(run, ctx):
        user = _key_path(override)
        for setting in fixed:
            table = _key_path(setting)
            if table[:len(user)] == user or user[:len(table)] == table:
                raise ConfigError(f"--set {override}: the table fixes {setting} for '{run.describe()}', so this "
                                  f"setting would be ignored; drop it (the table's settings are in "
                                  f"configs/paper/tables.yml)")
    return fixed


def run_config(run: RunSpec, ctx: Context) -> Config:
    """The validated run config of ``run`` (cached per context); ``output_dir`` is the run's folder."""
    if run not in ctx._configs:
        overrides = overrides_for(run, ctx) + table_settings(run, ctx)
        flags = ctx.flags()
        pretrained = pretrained_file_for(run, ctx)
        if pretrained:
            flags["postprocessors"] = {run.method: {"pretrained": {"file": pretrained}}}
        config = build_config(run.benchmark, [run.method], ctx.profile, overrides=overrides, flags=flags,
                              config_root=ctx.config_root)
        _choose_ood_sets(config, run, ctx.config_root)
        validate(config)
        protocol = f"-protocol-{ctx.protocol}" if uses_protocol(run, ctx) else ""
        config.output_dir = str(ctx.paper_dir / "runs" /
                                f"{run.benchmark}-{run.method}-{run_hash(config, run.method)}{protocol}")
        ctx._configs[run] = config
    return ctx._configs[run]


def is_moodcat(method: str, ctx: Context) -> bool:
    """A MOODCAT method (its config has a ``pretrained`` section): the protocol applies to it."""
    return "pretrained" in load_method_file(Path(ctx.config_root), method)


def uses_protocol(run: RunSpec, ctx: Context) -> bool:
    """``run`` is scored under a test-label protocol (its folder and table say so)."""
    return ctx.protocol != "deployable" and is_moodcat(run.method, ctx)


def pretrained_by_benchmark(ctx: Context) -> Dict[str, str]:
    """{benchmark: weights file} of ``ctx.pretrained`` (each file verified by its sha256); one
    line for two files of one benchmark."""
    found: Dict[str, str] = {}
    for path in ctx.pretrained:
        benchmark = load_weights(locate(path))["benchmark"]
        if benchmark in found:
            raise ConfigError(f"--pretrained {path} and {found[benchmark]} are both for {benchmark}; give one file "
                              "per benchmark")
        found[benchmark] = str(path)
    return found


def pretrained_file_for(run: RunSpec, ctx: Context) -> Optional[str]:
    """The ``--pretrained`` file a run scores with: the paper method ``moodcat`` on a benchmark with a
    file, in rows whose own settings only change scoring (``postprocessor.*``); rows that change the
    generator or Cb (ablations) train as without the option."""
    if not ctx.pretrained or run.method != "moodcat":
        return None
    if any(not override.startswith("postprocessor.") for override in run.overrides):
        return None
    return pretrained_by_benchmark(ctx).get(run.benchmark)


def _choose_ood_sets(config: Config, run: RunSpec, config_root: Path) -> None:
    """Replace the OOD sets by those of ``run.ood_sets_from`` (same ID data required) and keep only
    ``run.sets_only``. The benchmark's name, and so every cached model, stays the same."""
    splits = config.dataset.splits
    if run.ood_sets_from:
        source = load_yaml(_named_file(config_root, "benchmarks", run.ood_sets_from))
        if source.get("splits", {}).get("id") != dict(_plain(splits.id)):
            raise ConfigError(f"ood_sets_from: benchmark '{run.ood_sets_from}' has other ID sets than "
                              f"'{run.benchmark}'; its OOD sets would not test the same classifier")
        for group in ("near", "far"):
            splits[group] = copy.deepcopy(source["splits"].get(group) or {})
    if run.sets_only:
        present = {name for group in ("near", "far") for name in (splits.get(group) or {})}
        unknown = sorted(set(run.sets_only) - present)
        if unknown:
            raise ConfigError(f"sets_only names {unknown}, which benchmark '{run.benchmark}' does not have "
                              f"(its OOD sets: {', '.join(sorted(present))})")
        for group in ("near", "far"):
            splits[group] = {name: spec for name, spec in (splits.get(group) or {}).items() if name in run.sets_only}


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def run_hash(config: Config, method: str) -> str:
    """Hash of everything that decides a run's scores: the method's whole config (benchmark and
    OOD sets, classifier, method sections, profile, seed, threads) and the device type; not where
    files go."""
    view = _plain(method_config(config, method))
    for key in LOCATION_KEYS:
        view.pop(key, None)
    view["device_type"] = resolve_device(config.device).type
    return config_hash(view)


# -- state -------------------------------------------------------------------------------------------------
def run_folder(run: RunSpec, ctx: Context) -> Path:
    return Path(run_config(run, ctx).output_dir)


def scores_folder(run: RunSpec, ctx: Context) -> Path:
    config = run_config(run, ctx)
    return Path(config.output_dir) / config.dataset.name / "scores" / run.method


def is_finished(run: RunSpec, ctx: Context) -> bool:
    return (scores_folder(run, ctx) / "meta.json").is_file()


def blocked_reason(run: RunSpec, ctx: Context) -> Optional[str]:
    """Why ``run`` cannot run here, or None: the pretrained LPIPS/DISTS trunks it needs are not in
    the torch hub cache (nothing is downloaded; tiny-profile random trunks need none)."""
    section = run_config(run, ctx).postprocessors[run.method]
    iqa = section.get("iqa")
    if iqa is None or not iqa.get("pretrained", True):
        return None
    scorers = section.postprocessor.get("postprocessor_args", {}).get("scorers", ["cb"])
    needed = required_weight_files([s for s in scorers if s in IQA_SCORERS], iqa.get("lpips_trunk", "vgg"))
    missing = sorted({f for files in needed.values() for f in files if not (hub_checkpoint_dir() / f).is_file()})
    return f"weights missing ({', '.join(missing)} in {hub_checkpoint_dir()})" if missing else None


# -- running -----------------------------------------------------------------------------------------------
def execute(run: RunSpec, ctx: Context) -> str:
    """Train what ``run`` needs (cached models are reused) and score its sets; returns 'finished',
    'already finished' or 'not run: <reason>'."""
    if is_finished(run, ctx) and not ctx.rerun:
        return "already finished"
    reason = blocked_reason(run, ctx)
    if reason:
        return f"not run: {reason}"
    config = run_config(run, ctx)
    started = time.time()
    runner = Runner(config)
    postprocessor, net, meta = runner.prepare_method(run.method)
    if uses_protocol(run, ctx):
        postprocessor.protocol = ctx.protocol  # conditions on test labels: scores for this table only
        meta = {**meta, "protocol": ctx.protocol}
    runner.evaluator.evaluate(run.method, postprocessor, net, {**meta, "paper_run": run.describe()})
    seconds = round(time.time() - started, 1)
    atomic_write_json({"run": run.describe(), "profile": config.profile, "device": config.device,
                       "threads": runner.threads, "seconds": seconds, "finished": time.strftime("%Y-%m-%d %H:%M:%S")},
                      run_folder(run, ctx) / "paper_run.json")
    return "finished"


@dataclass
class RunResult:
    """What a finished run scored: leaderboard rows by name ('moodcat', 'moodcat:cb', ...),
    the OOD sets missing from the data folder, and its wall seconds."""

    rows: Dict[str, dict]
    missing: List[str]
    seconds: Optional[float] = None


def read_result(run: RunSpec, ctx: Context) -> Optional[RunResult]:
    """The saved scores of ``run`` as metrics, or None when it has not finished."""
    if not is_finished(run, ctx):
        return None
    config = run_config(run, ctx)
    rows, skipped = read_method_folders(Path(config.output_dir) / config.dataset.name)
    if skipped:
        log.warning("run %s: unreadable scores (%s); rerun with --rerun", run.describe(), skipped[0])
    if not rows:
        return None
    info = run_folder(run, ctx) / "paper_run.json"
    seconds = json.loads(info.read_text()).get("seconds") if info.is_file() else None
    return RunResult(rows={row["method"]: row for row in rows}, missing=list(rows[0]["meta"].get("missing", [])),
                     seconds=seconds)
