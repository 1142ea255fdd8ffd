"""Expected wall time of a table: per-unit costs (``configs/paper/costs.yml``, each with its source)
times the work the table still needs at the chosen profile.

Work counted per run, each model once however many runs share it:

* the classifier (or a training-time method's own network): epochs x training images x
  ``classifier_image_epoch_s`` x the trainer's factor;
* MOODCAT's generator: steps x batch x ``gan_image_s``; each Cb variant: steps x batch x
  ``cb_image_s`` (x ``cb_ext_factor`` for Cb(ext));
* scoring: test, validation and OOD images x the method's per-image cost, plus ``run_overhead_s``.

A model already in the checkpoint cache (``final.ckpt`` in its run folder) and a finished run
cost nothing; with ``fresh=True`` nothing counts as cached (the from-scratch figure of ``--list``).
Cached Cb runs are recognised by their generator and variant only (approximate). Image counts come
from the data pack's known sizes (``pack`` in the costs file), so no data is read; a class subset
counts its share of the file.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Set

from moodcat_plugin.config import load_yaml
from moodcat_plugin.moodcat import runs
from moodcat_plugin.paper.runs import Context, blocked_reason, is_finished, run_config
from moodcat_plugin.paper.spec import RunSpec
from moodcat_plugin.pipeline import classifier_run, method_config
from moodcat_plugin.registry import POSTPROCESSORS
from moodcat_plugin.training import FINAL, checkpoint_root, run_folder
from moodcat_plugin.utils import resolve_device, set_num_threads


def costs_file(config_root: Path) -> Path:
    return Path(config_root) / "paper" / "costs.yml"


def duration(seconds: float) -> str:
    """'45 s', '12 min', '2 h 05 min'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = int(round(seconds / 60))
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


@dataclass
class Estimate:
    """Seconds per item of work ('train generator cifar10', 'score odin on cifar10', ...)."""

    items: List[tuple] = field(default_factory=list)   # (what, seconds, cached)
    note: Optional[str] = None                          # why there is no estimate (no costs for the profile)

    @property
    def seconds(self) -> float:
        return sum(s for _, s, cached in self.items if not cached)

    def summary(self) -> str:
        if self.note:
            return f"not estimated ({self.note})"
        todo = [(what, s) for what, s, cached in self.items if not cached]
        cached = [what for what, _, c in self.items if c]
        training = ", ".join(f"{what} {duration(s)}" for what, s in todo if what.startswith("train"))
        scoring = sum(s for what, s in todo if not what.startswith("train"))
        text = f"{duration(self.seconds)}" + (f" ({training}; scoring {duration(scoring)})" if training else
                                              f" (scoring only: {duration(scoring)})")
        return text + (f"; already done: {len(cached)} item(s)" if cached else "")


class CostModel:
    """Per-unit costs of one profile and the pack's image counts."""

    def __init__(self, config_root: Path, profile: str):
        data = load_yaml(costs_file(config_root))
        self.limit_s = float(data.get("sitting_limit_s", 7200))
        self.pack = dict(data.get("pack") or {})
        entry = (data.get("profiles") or {}).get(profile) or {}
        self.note = entry.get("note") if "machine" not in entry else None
        if not entry:
            self.note = f"no per-unit costs recorded for profile '{profile}'"
        self.machine = entry.get("machine", "")
        self.units = {k: v["value"] for k, v in entry.items() if isinstance(v, Mapping) and "value" in v}
        self.sources = {k: v["source"] for k, v in entry.items() if isinstance(v, Mapping) and "source" in v}

    def images(self, spec: Mapping) -> int:
        """Images of one set spec (its class subset's share), 0 when its size is not recorded."""
        entry = self.pack.get(spec.get("npz"))
        if not entry:
            return 0
        classes = spec.get("classes")
        return int(entry["images"] * len(classes) / entry["classes"]) if classes and entry.get("classes") \
            else int(entry["images"])


def estimate_runs(runs: Sequence[RunSpec], ctx: Context, model: CostModel, fresh: bool = False,
                  seen: Optional[Set] = None) -> Estimate:
    """Expected work of ``runs`` in order; ``seen`` (shared across calls) holds models already
    counted, so a later part does not count a model an earlier part trains."""
    if model.note:
        return Estimate(note=model.note)
    seen = set() if seen is None else seen
    estimate = Estimate()
    for run in runs:
        if blocked_reason(run, ctx):
            continue
        config = run_config(run, ctx)
        cfg = method_config(config, run.method)
        cfg.device = str(resolve_device(config.device))
        set_num_threads(config.num_threads)  # run folders are keyed on the thread count, as the Runner sets it
        estimate.items += _training(run, cfg, model, fresh, seen)
        finished = not fresh and not ctx.rerun and is_finished(run, ctx)
        estimate.items += _once(seen, f"run {run}", f"score {run.method} on {run.benchmark}",
                                _scoring_seconds(cfg, model), finished)
    return estimate


def _training(run: RunSpec, cfg, model: CostModel, fresh: bool, seen: Set) -> List[tuple]:
    items = []
    units = model.units
    splits = cfg.dataset.splits
    known = cfg.dataset.get("known_classes")
    train_images = model.images({**splits.id.train, **({"classes": known} if known else {})})
    if not (cfg.network.get("checkpoint") and cfg.trainer.name == "base"):
        _, folder = classifier_run(cfg)
        factor = units["trainer_factor"].get(cfg.trainer.name, 1.0)
        seconds = cfg.trainer.num_epochs * train_images * units["classifier_image_epoch_s"] * factor
        items += _once(seen, str(folder), f"train {cfg.trainer.name} classifier {cfg.dataset.name}", seconds,
                       not fresh and (folder / FINAL).is_file())
    if cfg.postprocessor.name != "moodcat":
        return items
    post = POSTPROCESSORS.get("moodcat")(cfg)
    gan_key = runs.gan_run_key(cfg)  # as the Runner trains it: on the benchmark's images
    gan_folder = run_folder(cfg, f"{cfg.dataset.name}-moodcat_gan", gan_key)
    gan = cfg.gan
    items += _once(seen, str(gan_folder), f"train generator {cfg.dataset.name}",
                   gan.num_epochs * gan.steps_per_epoch * gan.batch_size * units["gan_image_s"],
                   not fresh and (gan_folder / FINAL).is_file())
    cb = cfg.cb
    for variant in (v for v in post.scorer_names if v.startswith("cb")):
        seconds = cb.num_epochs * cb.steps_per_epoch * cb.batch_size * units["cb_image_s"]
        seconds *= units["cb_ext_factor"] if variant == "cb_ext" else 1.0
        identity = json.dumps([str(gan_folder), variant, cb, cfg.cb_network], sort_keys=True, default=str)
        cached = not fresh and (gan_folder / FINAL).is_file() and _cb_cached(cfg, variant, gan_key)
        items += _once(seen, identity, f"train {variant} {cfg.dataset.name}", seconds, cached)
    return items


def _once(seen: Set, identity: str, what: str, seconds: float, cached: bool) -> List[tuple]:
    if identity in seen:
        return []
    seen.add(identity)
    return [(what, seconds, cached)]


def _cb_cached(cfg, variant: str, gan_key: dict) -> bool:
    """Whether a finished Cb run of ``variant`` on this generator is in the cache (approximate:
    the Cb's own settings are not compared)."""
    wanted = json.loads(json.dumps(gan_key, sort_keys=True, default=str))
    for folder in checkpoint_root(cfg).glob(f"{cfg.dataset.name}-moodcat_{variant}-*"):
        try:
            key = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError):
            continue
        if (folder / FINAL).is_file() and key.get("variant") == variant and key.get("gan") == wanted:
            return True
    return False


def _scoring_seconds(cfg, model: CostModel) -> float:
    units, splits = model.units, cfg.dataset.splits
    known = cfg.dataset.get("known_classes")
    subset = {"classes": known} if known else {}
    test = model.images({**splits.id.test, **subset})
    val = model.images({**splits.id.val, **subset})
    ood = sum(model.images(spec) for group in ("near", "far") for spec in (splits.get(group) or {}).values()
              if _present(cfg, spec))
    name = cfg.postprocessor.name
    if name == "moodcat":
        args = cfg.postprocessor.get("postprocessor_args") or {}
        scorers = args.get("scorers", ["cb"])
        variants = len(args.get("cb_variants", ["cb"])) if "cb" in scorers else 0
        per_image = variants * units["moodcat_score_image_s"] + \
            sum(s in ("lpips", "dists") for s in scorers) * units["iqa_score_image_s"]
        seconds = (test + val + ood) * per_image * int(args.get("num_masks", 1))
    elif name == "odin":
        trials = 1
        if cfg.postprocessor.get("APS_mode"):
            for candidates in (cfg.postprocessor.get("postprocessor_sweep") or {}).values():
                trials *= len(candidates)
        ood_val = model.images(splits.ood_val)
        seconds = ((test + ood) + trials * (val + ood_val)) * units["logit_score_image_s"] * units["odin_passes"]
    else:
        seconds = (test + val + ood) * units["logit_score_image_s"]
    return seconds + units["run_overhead_s"]


def _present(cfg, spec: Mapping) -> bool:
    """Whether an optional OOD set's npz file is in the data folder (missing sets are skipped)."""
    root = cfg.get("data_root")
    return not (root and spec.get("npz")) or (Path(root).expanduser() / f"{spec['npz']}.npz").is_file()
