"""Assemble a run's config, build or load networks, and evaluate methods side by side.

Config assembly, in order (later wins; every step after the files is strict):
``configs/base.yml`` <- benchmark file (``dataset``) <- network and trainer files (profile
applied) <- each method's ``configs/postprocessors/<name>.yml`` (under ``postprocessors.<name>``)
<- ``--config`` user files <- ``--set`` overrides <- CLI flags.

A method's file holds OpenOOD's ``postprocessor:`` section and may add ``trainer:`` /
``network:`` sections: a training-time method (OE, MCD, ...) evaluates a network trained by its
own trainer; every other method shares the benchmark's classifier.

The merged config is checked against the schemas (:mod:`moodcat_plugin.run_schema`: types, ranges
and unknown keys everywhere, one-line errors) before any data is loaded or anything trained.

Under ``torchrun`` (:mod:`moodcat_plugin.distributed`) the :class:`Runner` joins the process
group; every process trains each method's models (:meth:`Runner.train_method`), then rank 0
alone scores them.
"""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from moodcat_plugin import distributed
from moodcat_plugin.config import (Config, ConfigError, check_plain_name, load_yaml, merge, parse_override,
                                   select_profile)
from moodcat_plugin.data import Benchmark, load_benchmark, make_loader
from moodcat_plugin.evaluation import Evaluator, write_leaderboard
from moodcat_plugin.registry import NETWORKS, POSTPROCESSORS, TRAINERS, closest_names
from moodcat_plugin.schema import Registered
from moodcat_plugin.run_schema import check_run_config
from moodcat_plugin.training import checkpoint_root, fit, run_folder
from moodcat_plugin.errors import UserError
from moodcat_plugin.utils import (ensure_writable_folder, load_checkpoint, load_state_dict_strict, missing_folders,
                                  remove_empty, resolve_device, seed_everything, set_num_threads)

log = logging.getLogger(__name__)
PACKAGE_ROOT = Path(__file__).resolve().parent


def default_config_root() -> Path:
    """``configs/`` beside the package (editable install / source checkout), else ``./configs``."""
    beside = PACKAGE_ROOT.parent / "configs"
    return beside if beside.is_dir() else Path.cwd() / "configs"


def available(config_root: Path, kind: str) -> List[str]:
    return sorted(p.stem for p in (config_root / kind).glob("*.yml"))


def _named_file(config_root: Path, kind: str, name: str) -> Path:
    check_plain_name(name, f"{kind[:-1]} name")  # before the name reaches any path
    path = config_root / kind / f"{name}.yml"
    if not path.is_file():
        names = available(config_root, kind)
        hint = closest_names(name, names)
        raise ConfigError(f"no {kind[:-1]} config '{name}' in {config_root / kind}."
                          + (f" Did you mean: {', '.join(hint)}?" if hint else "")
                          + f" Available: {', '.join(names)}.")
    return path


def expand_methods(names: Sequence[str], config_root: Path) -> List[str]:
    """``all`` -> every method with a config file; unknown names fail with the closest ones."""
    if list(names) == ["all"]:
        return available(config_root, "postprocessors")
    for name in names:
        _named_file(config_root, "postprocessors", name)
    return list(names)


def pretrained_flags(methods: Sequence[str], path: str, config_root: Path) -> dict:
    """``postprocessors.<m>.pretrained.file = path`` for every method whose file has a
    ``pretrained`` section (the CLI's ``--pretrained``); ConfigError when none has."""
    users = [m for m in methods if "pretrained" in load_method_file(Path(config_root), m)]
    if not users:
        raise ConfigError(f"--pretrained: none of the methods ({', '.join(methods)}) loads pretrained weights; "
                          "it is for moodcat (and moodcat_ext, moodcat_plus)")
    return {method: {"pretrained": {"file": str(path)}} for method in users}


def build_config(benchmark: str, methods: Sequence[str], profile: Optional[str] = None,
                 config_files: Sequence[str] = (), overrides: Sequence[str] = (),
                 flags: Optional[dict] = None, config_root: Optional[Path] = None) -> Config:
    """The merged, validated config of a run (see the module docstring for the order)."""
    config_root = Path(config_root or default_config_root())
    dataset = load_yaml(_named_file(config_root, "benchmarks", benchmark))
    profile = profile or dataset.get("default_profile", "cpu")
    base = select_profile(load_yaml(config_root / "base.yml"), profile, str(config_root / "base.yml"))
    config = merge(base, {"profile": profile, "dataset": dataset})
    for section in ("network", "trainer"):
        name = config[section]["name"]
        source = _named_file(config_root, f"{section}s", name)
        config[section] = select_profile(load_yaml(source), profile, str(source))
    for method in methods:
        source = _named_file(config_root, "postprocessors", method)
        config["postprocessors"][method] = _complete_method_section(
            select_profile(load_method_file(config_root, method), profile, str(source)), config)
    for path in config_files:
        config = merge(config, load_yaml(path), where="")
    for text in overrides:
        config = merge(config, parse_override(text), where="")
    config = merge(config, {k: v for k, v in (flags or {}).items() if v is not None})
    not_run = sorted(set(config["postprocessors"]) - set(methods)) if isinstance(config["postprocessors"], dict) else []
    if not_run:
        raise ConfigError(f"postprocessors.{not_run[0]} is configured but '{not_run[0]}' is not among the methods "
                          f"run ({', '.join(methods)}); add it to --postprocessor or drop the setting")
    validate(config)
    return Config(config)


def load_method_file(config_root: Path, name: str, _seen: tuple = ()) -> dict:
    """A method file; ``extends: OTHER`` starts from OTHER's file (profiles included) and overlays this one."""
    if name in _seen:
        raise ConfigError(f"method configs extend each other in a loop: {' -> '.join(_seen + (name,))}")
    data = load_yaml(_named_file(config_root, "postprocessors", name))
    parent = data.pop("extends", None)
    return merge(load_method_file(config_root, parent, _seen + (name,)), data, strict=False) if parent else data


def _complete_method_section(section: dict, config: dict) -> dict:
    """Fill a method's own ``trainer``/``network`` sections with the classifier's defaults, so
    every key (``lr``, ``width``...) can be overridden under ``postprocessors.<method>``."""
    for key in ("trainer", "network"):
        if key in section:
            section[key] = merge(config[key], section[key], strict=False)
    return section


def validate(config: dict) -> None:
    """Every key of a merged run config against its schema; ConfigError (one line) otherwise."""
    check_run_config(config)


def method_config(config: Config, method: str) -> Config:
    """What one method sees: the run config with its own postprocessor/trainer/network sections."""
    section = config.postprocessors[method]
    view = {k: copy.deepcopy(v) for k, v in config.items() if k != "postprocessors"}
    view["postprocessor"] = copy.deepcopy(section["postprocessor"])
    for key, value in section.items():
        if key != "postprocessor":
            view[key] = copy.deepcopy(value)
    return Config(view)


def build_network(network_cfg, num_classes: int) -> torch.nn.Module:
    return NETWORKS.build(network_cfg, num_classes=num_classes)


def classifier_run(cfg) -> Tuple[dict, Path]:
    """(cache key, run folder) of the classifier a method config trains (its own trainer/network,
    or the benchmark's shared ones); ``cfg.device`` must be resolved (not ``auto``)."""
    key = {"benchmark": cfg.dataset.name, "network": cfg.network, "trainer": cfg.trainer, "seed": cfg.seed}
    return key, run_folder(cfg, f"{cfg.dataset.name}-{cfg.trainer.name}", key)


class Runner:
    """Holds one run: config, benchmark, evaluator, and the networks trained so far."""

    def __init__(self, config: Config):
        self.config = config
        self.config.device = str(distributed.start(resolve_device(config.device)))  # joins torchrun's group
        if not distributed.is_main():
            self.config.progress = False  # one set of progress bars, rank 0's
        self.threads = set_num_threads(config.num_threads)
        seed_everything(config.seed)  # every process alike: their random draws must agree
        self.results_dir = Path(config.output_dir) / config.dataset.name
        self.checkpoint_root = checkpoint_root(config)
        created = missing_folders(self.results_dir, self.checkpoint_root)
        try:
            for folder in (self.results_dir, self.checkpoint_root):  # a one-line error now, not after training
                ensure_writable_folder(folder)
            distributed.check_shared_folder(self.checkpoint_root)
            self.benchmark: Benchmark = load_benchmark(config.dataset, config.data_root, progress=config.progress)
        except UserError:  # bad data or folders: leave no empty output folders behind
            remove_empty(created)
            raise
        self.evaluator = Evaluator(config, self.benchmark, self.results_dir)
        self._networks: Dict[str, tuple] = {}

    # -- networks ------------------------------------------------------------------------------
    def train_loader(self, cfg) -> torch.utils.data.DataLoader:
        return make_loader(self.benchmark.id["train"], self.benchmark.mean, self.benchmark.std,
                           cfg.trainer.batch_size, train=True, augment=cfg.dataset.get("train_augment", []),
                           seed=cfg.seed, device=cfg.device, shard=distributed.shard())

    def outlier_loader(self, cfg, method: str) -> torch.utils.data.DataLoader:
        if self.benchmark.outlier is None:
            raise ConfigError(f"method '{method}' trains with outlier data, but benchmark '{cfg.dataset.name}' "
                              "has no outlier set (splits.outlier) or its file is missing")
        return make_loader(self.benchmark.outlier, self.benchmark.mean, self.benchmark.std,
                           cfg.trainer.get("outlier_batch_size", cfg.trainer.batch_size), train=True,
                           augment=cfg.dataset.get("train_augment", []), seed=cfg.seed + 1, device=cfg.device)

    def network_for(self, cfg, method: str):
        """(net, info) for a method config: loaded checkpoint, cached run or fresh training."""
        trainer_cls = TRAINERS.get(cfg.trainer.name)
        key, folder = classifier_run(cfg)
        if str(folder) in self._networks:
            return self._networks[str(folder)]
        seed_everything(cfg.seed)  # initial weights independent of what ran before in this process
        net = build_network(cfg.network, self.benchmark.num_classes).to(cfg.device)
        checkpoint = cfg.network.get("checkpoint")
        if checkpoint and cfg.trainer.name == "base":
            load_state_dict_strict(net, load_checkpoint(checkpoint), f"checkpoint {checkpoint}")
            info = {"network": f"{cfg.network.name} from {checkpoint}", "trainer": None}
        else:
            loaders = [self.train_loader(cfg)]
            if trainer_cls.uses_outlier_data:
                loaders.append(self.outlier_loader(cfg, method))
            trainer = trainer_cls(net, *loaders, cfg)
            shared = "" if trainer_cls.uses_outlier_data or cfg.trainer.name != "base" else ", shared by the methods"
            own = "trainer" in self.config.postprocessors[method]  # the method's own trainer section
            result = fit(trainer, folder, progress=cfg.progress, key=key,
                         settings=f"postprocessors.{method}.trainer" if own else "trainer",
                         description=f"classifier {cfg.network.name} ({cfg.trainer.name} trainer{shared})")
            info = {"network": f"{cfg.network.name} (width {cfg.network.get('width', 1)}) trained by "
                               f"'{cfg.trainer.name}' for {cfg.trainer.num_epochs} epochs", "trainer": cfg.trainer.name,
                    "checkpoint": str(folder / "final.ckpt"), "cached": result["cached"]}
            self.evaluator.keep_train_outputs_beside(net, folder / "final.ckpt")  # fits reuse its ID-train pass
        info["outlier_data"] = bool(trainer_cls.uses_outlier_data and not (checkpoint and cfg.trainer.name == "base"))
        net.eval()
        self._networks[str(folder)] = (net, info)
        return net, info

    # -- methods ---------------------------------------------------------------------------------
    def check_distributed(self, methods: Sequence[str]) -> None:
        """Under torchrun, refuse (before any training) a method whose trainers cannot train across
        processes: the classifier's trainer and every trainer section of its postprocessor."""
        if distributed.run_processes() == 1:
            return
        for method in methods:
            cfg = method_config(self.config, method)
            sections = ["trainer"] + [key for key, spec in getattr(
                POSTPROCESSORS.get(cfg.postprocessor.name), "config_sections", {}).items()
                if isinstance(spec, Registered) and spec.registry is TRAINERS]
            for section in sections:
                name = cfg[section].name
                pretrained = section == "trainer" and cfg.network.get("checkpoint") and name == "base"
                if not pretrained and not TRAINERS.get(name).supports_distributed:
                    raise ConfigError(f"method '{method}' trains with '{name}', which cannot train across "
                                      f"processes yet: run it without torchrun (the classifier, moodcat_gan and "
                                      f"moodcat_cb trainers can)")

    def train_method(self, method: str) -> None:
        """Train (or find cached) everything ``method`` needs without scoring it; under torchrun
        every process calls this for every method before rank 0 runs :meth:`run_method`."""
        postprocessor, net, _ = self.prepare_method(method)
        postprocessor.train(net, self.evaluator.id_loader_dict)

    def run_method(self, method: str, row: Optional[str] = None) -> Path:
        """Train what ``method`` needs, score every set and save the scores under ``row``
        (default: the method's name; the ablation script runs variants of one method as rows)."""
        check_plain_name(row or method, "row name")  # before anything is trained or written
        postprocessor, net, meta = self.prepare_method(method)
        return self.evaluator.evaluate(row or method, postprocessor, net, meta)

    def prepare_method(self, method: str):
        """(postprocessor, network, meta) of ``method``: config checked, network trained or loaded."""
        cfg = method_config(self.config, method)
        postprocessor = POSTPROCESSORS.get(cfg.postprocessor.name)(cfg)  # config errors before any training
        net, info = self.network_for(cfg, method)
        outlier = info["outlier_data"] or postprocessor.uses_outlier_data
        meta = {**info, "outlier_data": outlier, "postprocessor": cfg.postprocessor.name,
                "profile": cfg.profile, "seed": cfg.seed, "device": cfg.device, "threads": self.threads,
                "training_processes": distributed.run_processes()}
        if outlier and self.benchmark.outlier is None:
            raise ConfigError(f"method '{method}' needs outlier data, which benchmark '{cfg.dataset.name}' lacks")
        postprocessor.benchmark = self.benchmark
        return postprocessor, net, meta

    def leaderboard(self) -> str:
        return write_leaderboard(self.results_dir, self.config.dataset.name, self.config.fpr_convention)

    def outputs(self, methods: Sequence[str]) -> List[Tuple[str, str]]:
        """(what, where) for every output of this run that exists on disk, for the final message."""
        results = self.results_dir
        candidates = [("leaderboard", results / "leaderboard.md", f"{results}/leaderboard.{{md,csv,json}}"),
                      ("score distributions", results / "score_distributions.png", None),
                      ("per-sample scores", results / "scores", None),
                      ("MOODCAT synthesis grids", results / "moodcat_grids", None)]
        for method in methods:  # e.g. the GAN's samples/, shared by moodcat and moodcat_ext
            candidates += [(f"{name} training samples", folder / "samples", None)
                           for name, folder in self._training_folders(method)]
        candidates.append(("trained models", self.checkpoint_root, None))
        listed = {}
        for what, path, shown in candidates:
            if path.exists() and path not in listed:
                listed[path] = (what, shown or (f"{path}/" if path.is_dir() else str(path)))
        return list(listed.values())

    def _training_folders(self, method: str) -> List[Tuple[str, Path]]:
        """(name, run folder) of every model a method's postprocessor trained (meta.json 'training')."""
        meta_path = self.results_dir / "scores" / method / "meta.json"
        try:
            training = json.loads(meta_path.read_text()).get("training") or {}
        except (OSError, ValueError, AttributeError):
            return []
        return [(name, Path(info["folder"])) for name, info in training.items()
                if isinstance(info, dict) and info.get("folder")]
