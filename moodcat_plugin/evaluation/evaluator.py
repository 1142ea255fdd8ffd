"""The evaluator: fits a postprocessor (with APS when asked), scores every set, saves scores.

One :class:`Evaluator` serves every method of a run over the same benchmark, so purely
logit-based methods share each dataset's logits (computed once per network and dataset).
Per-sample scores are written to ``<results_dir>/scores/<method>/<dataset>.npz`` together with
``meta.json``; the leaderboard is rebuilt from these files, never from memory. A method's files are
replaced as a unit: they are written into a hidden sibling folder (``scores/.<method>.partial-*``)
that is swapped in by renames once complete, so an interrupted re-scoring leaves the previous set
intact and never a mix of old and new files; hidden leftovers of a killed run are ignored by the
leaderboard and removed when that method is scored again.
"""
from __future__ import annotations

import itertools
import logging
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch
from tqdm import tqdm

from moodcat_plugin.config import check_plain_name
from moodcat_plugin.data import Benchmark, make_loader
from moodcat_plugin.evaluation.metrics import ood_metrics
from moodcat_plugin.utils import atomic_savez, atomic_write_json, replace_folder

log = logging.getLogger(__name__)
ID_TEST = "id_test"


@dataclass
class ScoreSet:
    """Per-sample outputs over one dataset: pred/label int64 (N,), conf float (N,), components name -> (N,)."""

    pred: np.ndarray
    conf: np.ndarray
    label: np.ndarray
    components: Dict[str, np.ndarray] = field(default_factory=dict)


class Evaluator:
    """Runs postprocessors over a loaded :class:`Benchmark` with a shared logit cache."""

    def __init__(self, config, benchmark: Benchmark, results_dir: Path):
        self.config = config
        self.benchmark = benchmark
        self.results_dir = Path(results_dir)
        self.device = torch.device(config.device)
        self.progress = bool(config.progress)
        self._logits: Dict[Tuple[int, str], Tuple[torch.Tensor, torch.Tensor]] = {}
        self.id_loader_dict = {split: self._loader(array) for split, array in benchmark.id.items()}
        self.ood_loader_dict = {"val": self._loader(benchmark.ood_val)}
        for group, sets in benchmark.ood_groups().items():
            self.ood_loader_dict[group] = {name: self._loader(array) for name, array in sets.items()}

    def _loader(self, array):
        return make_loader(array, self.benchmark.mean, self.benchmark.std, self.config.eval_batch_size,
                           device=self.device)

    # -- scoring ---------------------------------------------------------------------------
    @torch.no_grad()
    def _cached_logits(self, net, loader) -> Tuple[torch.Tensor, torch.Tensor]:
        key = (id(net), loader.name)
        if key not in self._logits:
            net.eval()
            logits, labels = [], []
            for batch in tqdm(loader, desc=f"logits {loader.name}", disable=not self.progress, leave=False):
                logits.append(net(batch["data"].to(self.device)).cpu())
                labels.append(batch["label"])
            self._logits[key] = (torch.cat(logits), torch.cat(labels))
        return self._logits[key]

    def score(self, postprocessor, net, loader) -> ScoreSet:
        """pred/conf/label (+ per-component confs) of ``postprocessor`` over ``loader``."""
        net.eval()
        if postprocessor.uses_logits_only:
            logits, labels = self._cached_logits(net, loader)
            pred, conf = postprocessor.postprocess_logits(logits)
            return ScoreSet(pred.numpy(), conf.numpy(), labels.numpy())
        preds, confs, labels, components = [], [], [], {}
        for batch in tqdm(loader, desc=f"scoring {loader.name}", disable=not self.progress, leave=False):
            postprocessor.last_components = {}
            pred, conf = postprocessor.postprocess(net, batch["data"].to(self.device))
            preds.append(pred.detach().cpu())
            confs.append(conf.detach().cpu())
            labels.append(batch["label"])
            for name, value in postprocessor.last_components.items():
                components.setdefault(name, []).append(value.detach().cpu())
        return ScoreSet(torch.cat(preds).numpy(), torch.cat(confs).numpy(), torch.cat(labels).numpy(),
                        {name: torch.cat(parts).numpy() for name, parts in components.items()})

    # -- APS -------------------------------------------------------------------------------
    def hyperparam_search(self, postprocessor, net) -> List[dict]:
        """Try every sweep combination on ID-val vs OOD-val (re-running ``setup`` for each),
        keep the best AUROC. Returns the trials as ``[{'values': [...], 'AUROC': float}]``."""
        names = list(postprocessor.args_dict)
        trials = []
        for values in itertools.product(*postprocessor.args_dict.values()):
            postprocessor.set_hyperparam(list(values))
            postprocessor.setup(net, self.id_loader_dict, self.ood_loader_dict)
            auroc = ood_metrics(self.score(postprocessor, net, self.id_loader_dict["val"]).conf,
                                self.score(postprocessor, net, self.ood_loader_dict["val"]).conf)["AUROC"]
            trials.append({"values": dict(zip(names, values)), "AUROC": auroc})
            log.info("APS %s %s: val AUROC %.4f", postprocessor.registered_name, dict(zip(names, values)), auroc)
        best = max(trials, key=lambda t: t["AUROC"])
        postprocessor.set_hyperparam(list(best["values"].values()))
        postprocessor.setup(net, self.id_loader_dict, self.ood_loader_dict)
        postprocessor.hyperparam_search_done = True
        return trials

    # -- one method --------------------------------------------------------------------------
    def evaluate(self, method: str, postprocessor, net, meta: dict) -> Path:
        """Fit, (APS), score every set, save scores and ``meta.json``; returns the method folder
        ``scores/<method>`` (``method`` must be a plain name: ConfigError before anything is written)."""
        check_plain_name(method, "row name")
        started = time.time()
        net.eval()
        trials = []
        if postprocessor.APS_mode and postprocessor.args_dict and not postprocessor.hyperparam_search_done:
            trials = self.hyperparam_search(postprocessor, net)
        else:
            postprocessor.setup(net, self.id_loader_dict, self.ood_loader_dict)
        meta = {**meta, **getattr(postprocessor, "run_meta", {})}
        folder = self._partial_folder(method)
        sets = {ID_TEST: self.id_loader_dict["test"]}
        groups = {}
        for group in ("near", "far"):
            groups[group] = list(self.ood_loader_dict[group])
            sets.update(self.ood_loader_dict[group])
        components = set()
        for name, loader in sets.items():
            scores = self.score(postprocessor, net, loader)
            components |= set(scores.components)
            atomic_savez(folder / f"{name}.npz", pred=scores.pred, conf=scores.conf, label=scores.label,
                         **{f"component_{k}": v for k, v in scores.components.items()})
        atomic_write_json({
            **meta,
            "method": method,
            "hyperparameters": dict(zip(postprocessor.args_dict, postprocessor.get_hyperparam())),
            "aps_trials": trials,
            "groups": groups,
            "missing": list(self.benchmark.missing),
            "components": sorted(components),
            "seconds": round(time.time() - started, 1),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        }, folder / "meta.json")
        target = self.results_dir / "scores" / method
        replace_folder(folder, target)
        return target

    def _partial_folder(self, method: str) -> Path:
        """A fresh hidden folder beside ``scores/<method>`` to write a new score set into; removes
        what a killed run left for this method (hidden folders ``.<method>.*``)."""
        scores_dir = self.results_dir / "scores"
        if scores_dir.is_dir():
            for leftover in scores_dir.iterdir():
                if leftover.name.startswith(f".{method}.") and leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
        return scores_dir / f".{method}.partial-{secrets.token_hex(4)}"
