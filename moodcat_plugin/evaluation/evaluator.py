"""The evaluator: fits a postprocessor (with APS when asked), scores every set, saves scores.

One :class:`Evaluator` serves every method of a run over the same benchmark, and the classifier
runs once per network and dataset: its logits and penultimate features are kept
(:class:`NetworkOutputs`) and every method whose ``needs`` is ``"logits"`` or ``"features"`` scores
from them, across APS candidates too; only ``needs = "forward"`` methods (ODIN's input gradient,
MOODCAT's generator) run the network themselves. The ID-train outputs that fitted methods (MDS,
KNN, ViM, ...) use are also kept on disk beside the classifier's checkpoint (``outputs_train.npz``,
tied to the checkpoint's sha256), so a later run fits them without another pass over the training
images. Batches enter the network contiguous (``.contiguous()``), so scores are bit-identical to
OpenOOD's on the same weights and images.
Per-sample scores are written to ``<results_dir>/scores/<method>/<dataset>.npz`` together with
``meta.json``; the leaderboard is rebuilt from these files, never from memory. A method's files are
replaced as a unit: they are written into a hidden sibling folder (``scores/.<method>.partial-*``)
that is swapped in by renames once complete, so an interrupted re-scoring leaves the previous set
intact and never a mix of old and new files; hidden leftovers of a killed run are ignored by the
leaderboard and removed when that method is scored again.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from tqdm import tqdm

from moodcat_plugin.config import check_plain_name
from moodcat_plugin.data import Benchmark, make_loader
from moodcat_plugin.evaluation.metrics import ood_metrics
from moodcat_plugin.postprocessors.base_postprocessor import NEEDS, NetworkOutputs, network_outputs
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
        self._outputs: Dict[Tuple[int, str], NetworkOutputs] = {}
        self._checkpoints: Dict[int, Path] = {}
        self.id_loader_dict = {split: self._loader(array) for split, array in benchmark.id.items()}
        self.ood_loader_dict = {"val": self._loader(benchmark.ood_val)}
        for group, sets in benchmark.ood_groups().items():
            self.ood_loader_dict[group] = {name: self._loader(array) for name, array in sets.items()}

    def _loader(self, array):
        return make_loader(array, self.benchmark.mean, self.benchmark.std, self.config.eval_batch_size,
                           device=self.device)

    # -- the shared forward pass -------------------------------------------------------------
    def keep_train_outputs_beside(self, net, checkpoint: Optional[Path]) -> None:
        """Cache ``net``'s ID-train outputs on disk next to ``checkpoint`` (its trained weights file)."""
        if checkpoint is not None and Path(checkpoint).is_file():
            self._checkpoints[id(net)] = Path(checkpoint)

    def network_outputs(self, net, loader) -> NetworkOutputs:
        """Logits, penultimate features and labels of ``net`` over ``loader``, computed once per
        (network, dataset) and shared by every method; ID-train outputs also come from disk."""
        key = (id(net), loader.name)
        if key not in self._outputs:
            disk = self._disk_cache(net, loader)
            outputs = disk.load() if disk else None
            if outputs is None:
                outputs = network_outputs(net, loader, self.device, progress=self.progress)
                if disk:
                    disk.save(outputs)
            self._outputs[key] = outputs
        return self._outputs[key]

    def _disk_cache(self, net, loader) -> Optional["OutputsFile"]:
        checkpoint = self._checkpoints.get(id(net))
        if checkpoint is None or loader is not self.id_loader_dict.get("train"):
            return None
        return OutputsFile(checkpoint.parent / "outputs_train.npz", checkpoint)

    def score(self, postprocessor, net, loader) -> ScoreSet:
        """pred/conf/label (+ per-component confs) of ``postprocessor`` over ``loader``."""
        net.eval()
        if postprocessor.needs != "forward":
            outputs = self.network_outputs(net, loader)
            pred, conf = postprocessor.postprocess_features(outputs.logits, outputs.features)
            return ScoreSet(pred.numpy(), conf.numpy(), outputs.labels.numpy())
        preds, confs, labels, components = [], [], [], {}
        if hasattr(postprocessor, "start_set"):  # draws (masks) per set, independent of the sets before it
            postprocessor.start_set(loader.name, is_id=any(loader is id_loader for id_loader in self.id_loader_dict.values()))
        labelled = getattr(postprocessor, "needs_test_labels", False)  # a test-label protocol: never a leaderboard
        for batch in tqdm(loader, desc=f"scoring {loader.name}", disable=not self.progress, leave=False):
            postprocessor.last_components = {}
            data = batch["data"].to(self.device).contiguous()
            pred, conf = (postprocessor.postprocess_labelled(net, data, batch["label"]) if labelled else
                          postprocessor.postprocess(net, data))
            preds.append(pred.detach().cpu())
            confs.append(conf.detach().cpu())
            labels.append(batch["label"])
            for name, value in postprocessor.last_components.items():
                components.setdefault(name, []).append(value.detach().cpu())
        return ScoreSet(torch.cat(preds).numpy(), torch.cat(confs).numpy(), torch.cat(labels).numpy(),
                        {name: torch.cat(parts).numpy() for name, parts in components.items()})

    def _prepare(self, postprocessor) -> None:
        """Check the declared ``needs`` and hand the postprocessor the shared outputs for its fits."""
        if postprocessor.needs not in NEEDS:
            raise ValueError(f"postprocessor '{postprocessor.registered_name}' declares needs="
                             f"{postprocessor.needs!r}; use one of {', '.join(NEEDS)}")
        postprocessor.outputs_of = self.network_outputs

    # -- APS -------------------------------------------------------------------------------
    def hyperparam_search(self, postprocessor, net) -> List[dict]:
        """Try every sweep combination on ID-val vs OOD-val (re-running ``setup`` for each) in
        OpenOOD v1.5's order (:func:`aps_candidates`) and keep the first strict maximum of AUROC,
        as OpenOOD v1.5's ``evaluation_api.Evaluator.hyperparam_search`` does, so ties resolve
        alike. Returns the trials as ``[{'values': {...}, 'AUROC': float}]`` in the order tried."""
        self._prepare(postprocessor)
        names = list(postprocessor.args_dict)
        trials, best = [], None
        for values in aps_candidates(postprocessor.args_dict):
            postprocessor.set_hyperparam(list(values))
            postprocessor.setup(net, self.id_loader_dict, self.ood_loader_dict)
            auroc = ood_metrics(self.score(postprocessor, net, self.id_loader_dict["val"]).conf,
                                self.score(postprocessor, net, self.ood_loader_dict["val"]).conf)["AUROC"]
            trials.append({"values": dict(zip(names, values)), "AUROC": auroc})
            if best is None or auroc > best["AUROC"]:
                best = trials[-1]
            log.info("APS %s %s: val AUROC %.4f", postprocessor.registered_name, dict(zip(names, values)), auroc)
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
            self._prepare(postprocessor)
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


def aps_candidates(sweep: Dict[str, list]) -> List[tuple]:
    """Every combination of the sweep lists, one value per argument in ``sweep``'s key order, in the
    order OpenOOD v1.5 tries them (its ``recursive_generator``): the first argument varies fastest,
    the last slowest. ODIN {temperature: [1, 10, 100, 1000], noise: [0.0014, 0.0028]} ->
    (1, 0.0014), (10, 0.0014), (100, 0.0014), (1000, 0.0014), (1, 0.0028), ... Note that this is
    not ``itertools.product`` order (there the first argument varies slowest)."""
    return [tuple(reversed(combo)) for combo in itertools.product(*reversed(list(sweep.values())))]


class OutputsFile:
    """``NetworkOutputs`` of one dataset saved beside a classifier checkpoint; valid only for the
    checkpoint whose sha256 it records (a retrained classifier makes it stale, and it is redone)."""

    def __init__(self, path: Path, checkpoint: Path):
        self.path, self.checkpoint = Path(path), Path(checkpoint)

    def _checkpoint_sha256(self) -> str:
        return hashlib.sha256(self.checkpoint.read_bytes()).hexdigest()

    def load(self) -> Optional[NetworkOutputs]:
        if not self.path.is_file():
            return None
        with np.load(self.path) as saved:
            if str(saved["checkpoint_sha256"]) != self._checkpoint_sha256():
                return None
            return NetworkOutputs(*(torch.from_numpy(saved[k]) for k in ("logits", "features", "labels")))

    def save(self, outputs: NetworkOutputs) -> None:
        atomic_savez(self.path, logits=outputs.logits.numpy(), features=outputs.features.numpy(),
                     labels=outputs.labels.numpy(), checkpoint_sha256=np.array(self._checkpoint_sha256()))
