"""MOODCAT (Yang et al., ECCV 2022) as a post-hoc detector: mask, synthesise, compare (paper 3.2-3.6).

For a test image ``x`` the classifier predicts ``y = argmax C(x)``; a random rectangle of ``x`` is
masked (``test_area``, 15-33 %) and the trained generator synthesises the image back
CONDITIONED ON ``y``. An in-distribution image of class ``y`` is restored consistently; an OOD
image is "corrected" towards class ``y`` and the synthesis disagrees with the input. Scorers
measure the disagreement (distances, high = OOD): the conditional binary classifier Cb (its
logit) and the IQA metrics LPIPS and DISTS. The paper's cascade ("any scorer that flags the
input rejects it") becomes one continuous conf fixed on ID validation data only
(:class:`~moodcat_plugin.moodcat.fusion.CascadeFusion`): per-scorer empirical-CDF calibration,
fused by the minimum.

Setup (each part cached in its own run folder, keyed by the config that determines it):

1. GAN (encoder + BigGAN decoder + U-Net discriminator), trainer ``gan.name`` on ID train images.
2. Cb, trainer ``cb.name``, on pairs synthesised by the frozen GAN. With ``cb_variants: [cb,
   cb_ext]`` also Cb(ext) (paper 3.6), whose extra negatives are the benchmark's outlier images
   pseudo-labelled by the CLASSIFIER; the method then uses outlier data (leaderboard says so).
3. Calibration of every scorer on ID val (labels predicted by the classifier, as at test time).
4. Sample grids (input / masked / synthesis) of ID test and every OOD set under
   ``<output_dir>/<dataset>/moodcat_grids/<set>.png``.

Arguments (``postprocessor_args``, schema :class:`MoodcatArgs`): ``scorers`` (subset of cb,
lpips, dists; ``cb`` stands for every entry of ``cb_variants``), ``cb_variants`` ([cb] or [cb,
cb_ext]), ``mask_style``, ``test_area`` ([lo, hi] area fraction), ``num_masks`` (K > 1 averages
each distance over K masks), ``mask_seed`` (draws another set of test masks: the paper's
Table 5 repeats its random-mask rows; 0 = the default draw; each image's mask comes from (seed,
set name, index), :mod:`moodcat_plugin.moodcat.mask_stream`), ``label_source`` (only
``predicted``; see below), ``use_ema`` (decoder EMA weights). The method file's other sections
(``MoodcatPostprocessor.config_sections``) are checked by the schemas of the MoodcatGAN network
(``gan_network``), the trainers ``moodcat_gan`` (``gan``) and ``moodcat_cb`` (``cb``), the Cb
network (``cb_network``) and :class:`IqaConfig` (``iqa``).

Trained weights instead of training (section ``pretrained``, or the CLI's ``--pretrained FILE``):
``pretrained.file`` names a weights file (:mod:`moodcat_plugin.moodcat.weights`: fp16 encoder +
decoder [+ Cb], sha256 checked against the ``MANIFEST.json`` beside it when the method is
built, before anything trains). The file's networks are used as they were trained (its
``gan_network``/``cb_network``, whatever the profile says); a Cb variant the file lacks (Cb(ext),
or Cb itself, or a Cb of another network than the method's ``cb_network.name``) is trained on the
loaded generator, cached under the file's sha256.

Per-scorer confs (``-distance``) are recorded in ``last_components`` (leaderboard rows
``moodcat:cb``, ``moodcat:lpips``, ... = the paper's Table 4 single-scorer results).

Differences from the authors' public evaluation (see the reference facts): we condition on the
classifier's prediction for every input (the public code conditions ID images on their TRUE
label and OOD images on random labels, which needs test labels and is not deployable; ``label_source:
true`` is therefore refused: ``postprocess`` never receives labels) and the fused score is fixed
without test labels instead of a per-threshold envelope chosen on the test set.
"""
from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from pydantic import AfterValidator
from tqdm import tqdm

from moodcat_plugin import distributed
from moodcat_plugin.config import Config
from moodcat_plugin.data import ImageArray, make_loader
from moodcat_plugin.data.arrays import stratified_holdout
from moodcat_plugin.errors import ConfigError, DataError
from moodcat_plugin.moodcat.fusion import CascadeFusion
from moodcat_plugin.moodcat.images import class_name, save_labelled_grid, to_signed_unit
from moodcat_plugin.moodcat.mask_stream import UNNAMED_SET, MaskStream
from moodcat_plugin.moodcat.masking import AREA_RANGE, TEST_AREA, VALID_STYLES
from moodcat_plugin.moodcat.protocols import condition_labels, label_generator
from moodcat_plugin.moodcat import weights as shipped_weights
from moodcat_plugin.moodcat.scorers import (CB_SCORERS, DROP_HINT, FEATURE_SCORERS, IQA_SCORERS, LOGIT_SCORERS,
                                            LPIPS_TRUNKS, CbScorer, ClassifierLPIPS, ClassifierOutputDistance,
                                            build_iqa_scorer, check_cached_weights, logit_distance)
from moodcat_plugin.postprocessors.base_postprocessor import BasePostprocessor
from moodcat_plugin.registry import NETWORKS, TRAINERS, register_postprocessor
from moodcat_plugin.schema import FLAG, TEXT, Expect, Registered, Schema, check, choice, integer, list_of, optional
from moodcat_plugin.training import FINAL, fit, run_folder, run_identity
from moodcat_plugin.utils import load_state_dict_strict

log = logging.getLogger(__name__)
PAPER_CB = "moodcat_cb"  # the Cb network a config without cb_network.name gets
GRID_IMAGES = 16
GRID_SEED = 777
SCORING_SEED_OFFSET = 101
LABEL_SOURCES = ("predicted",)
FINGERPRINT_SAMPLES = 256
FINGERPRINT_SEED = 0
CB_VARIANTS = (["cb"], ["cb", "cb_ext"])


def cb_network_name(section) -> str:
    """The registered network name of a ``cb_network`` section (a config's or a weights file's)."""
    return section.get("name", PAPER_CB)


def _distinct(values: List[str]) -> List[str]:
    if len(set(values)) != len(values):
        raise ValueError("must not name a scorer twice")
    return values


def _cb_variants(values: List[str]) -> List[str]:
    if values not in CB_VARIANTS:
        raise ValueError("must be [cb] or [cb, cb_ext]")
    return values


def _deployable_label_source(value: Any) -> Any:
    if value not in LABEL_SOURCES:
        raise ValueError("must be 'predicted' (the paper's y = C(x)); the public code conditions ID test images on "
                         "their TRUE label, which a deployed detector (and postprocess()) does not have")
    return value


class MoodcatArgs(Schema):
    """MOODCAT's ``postprocessor_args`` (defaults: what the code uses when a key is absent)."""

    scorers: Annotated[list_of(choice("cb", *IQA_SCORERS, *FEATURE_SCORERS, *LOGIT_SCORERS), min_length=1,
                               expect="a non-empty subset of cb, "
                                      f"{', '.join(IQA_SCORERS + FEATURE_SCORERS + LOGIT_SCORERS)}"),
                       AfterValidator(_distinct)] = ["cb"]
    cb_variants: Annotated[list_of(choice(*CB_SCORERS), expect="[cb] or [cb, cb_ext]"),
                           AfterValidator(_cb_variants)] = ["cb"]
    mask_style: choice(*VALID_STYLES) = "random_rectangle"
    test_area: AREA_RANGE = list(TEST_AREA)
    num_masks: integer(ge=1) = 1
    mask_seed: integer(ge=0) = 0  # another draw of the test masks (repeated rows); calibration masks stay fixed
    label_source: Annotated[Any, AfterValidator(_deployable_label_source), Expect("'predicted'")] = "predicted"
    use_ema: FLAG = False


class PretrainedConfig(Schema):
    """The ``pretrained:`` section: a shipped weights file to score with instead of training."""

    file: optional(TEXT) = None   # e.g. weights/moodcat_cifar10.pt (relative: to the working folder or the checkout)


class IqaConfig(Schema):
    """The ``iqa:`` section: LPIPS/DISTS trunks (``pretrained: false`` = random trunks, tests only)."""

    pretrained: FLAG = True
    lpips_trunk: choice(*LPIPS_TRUNKS) = "vgg"


@register_postprocessor("moodcat")
class MoodcatPostprocessor(BasePostprocessor):
    """MOODCAT: conf = cascade of calibrated scorers on (x, G(M(x), C(x))); higher = more ID."""

    needs = "forward"
    args_schema = MoodcatArgs
    config_sections = {
        "gan_network": Registered(NETWORKS, default_name="moodcat_gan"),
        "gan": Registered(TRAINERS),
        "cb_network": Registered(NETWORKS, default_name=PAPER_CB),
        "cb": Registered(TRAINERS),
        "iqa": IqaConfig,
        "pretrained": PretrainedConfig,
    }

    def __init__(self, config, drop_scorers_hint: str = DROP_HINT):
        """``drop_scorers_hint``: how the caller's user sets ``scorers: [cb]`` when IQA weights are
        missing (our CLI's ``--set`` by default; the OpenOOD bridge passes its config key)."""
        super().__init__(config)
        check(MoodcatArgs, self.args, "postprocessor.postprocessor_args")  # also without the pipeline (OpenOOD)
        self.scorers = list(self.args.get("scorers", ["cb"]))
        self.cb_variants = list(self.args.get("cb_variants", ["cb"]))
        self.mask_style = self.args.get("mask_style", "random_rectangle")
        self.test_area = tuple(float(a) for a in self.args.get("test_area", (0.15, 0.33)))
        self.num_masks = int(self.args.get("num_masks", 1))
        self.mask_seed = int(self.args.get("mask_seed", 0))
        self.label_source = self.args.get("label_source", "predicted")
        self.use_ema = bool(self.args.get("use_ema", False))
        self.iqa_cfg = dict(config.get("iqa") or {})
        self.iqa_pretrained = bool(self.iqa_cfg.get("pretrained", True))
        if self.iqa_pretrained:  # fail before any training when weights are missing
            check_cached_weights(self.iqa_scorers, self.iqa_cfg.get("lpips_trunk", "vgg"), drop_scorers_hint)
        if "cb_ext" in self.scorer_names:
            self.uses_outlier_data = True  # read by the runner / leaderboard (paper 3.6)
        norm = config.dataset.normalization
        self.mean, self.std = list(norm.mean), list(norm.std)
        self.benchmark = None       # set by the runner before setup (train images, outliers)
        self.gan = None
        self.scorer_modules: Dict[str, torch.nn.Module] = {}
        self._cbs: Dict[str, torch.nn.Module] = {}
        self.fusion = CascadeFusion()
        self.training_info: Dict[str, dict] = {}
        self.run_meta: dict = {}
        self.generator = torch.Generator().manual_seed(self._scoring_seed())  # sample grids only
        self.masks = MaskStream(self._scoring_seed(), self.mask_style, self.test_area)  # per (seed, set, image)
        self.protocol = "deployable"  # reproduce_paper --protocol authors sets 'authors' (never a leaderboard)
        self._set_is_id, self.random_labels = True, None  # authors protocol: OOD labels, drawn per set
        self.pretrained = self._checked_pretrained()  # a bad file fails here, before any training

    def _scoring_seed(self) -> int:
        """Seed of the test-time masks: run seed + offset (+ ``mask_seed`` for another draw)."""
        return int(self.config.get("seed", 0)) + SCORING_SEED_OFFSET + self.mask_seed

    @property
    def iqa_scorers(self):
        return [s for s in self.scorers if s in IQA_SCORERS]

    @property
    def scorer_names(self):
        """Names of every distance the fusion combines, e.g. ['cb', 'cb_ext', 'lpips']."""
        names = []
        for scorer in self.scorers:
            names += self.cb_variants if scorer == "cb" else [scorer]
        return names

    def _section_config(self, section: str) -> Config:
        """The run config with ``trainer`` replaced by our ``gan``/``cb`` section (trainer contract)."""
        view = Config({k: v for k, v in self.config.items()})
        view.trainer = self.config[section]
        return view

    # -- setup ---------------------------------------------------------------------------------
    def setup(self, net, id_loader_dict, ood_loader_dict) -> None:
        net.eval()
        self.train(net, id_loader_dict)
        if not self.scorer_modules:  # trained earlier without the classifier (ablation's train stage)
            self.scorer_modules = self._build_scorers(self._cbs, net)
        self._calibrate(net, id_loader_dict["val"])
        self._save_grids(net, id_loader_dict, ood_loader_dict)
        self.generator.manual_seed(self._scoring_seed())
        self.masks.start(UNNAMED_SET, self._scoring_seed())
        self.run_meta = {
            "scorers": self.scorer_names,
            "iqa_trunks": ("none" if not self.iqa_scorers else
                           "pretrained (ImageNet, from the torch hub cache)" if self.iqa_pretrained else
                           "RANDOM (tests only: IQA scores meaningless)"),
            "label_source": self.label_source, "num_masks": self.num_masks, "mask_style": self.mask_style,
            "mask_seed": self.mask_seed, "mask_draws": "per image from (seed, set name, index)",
            "calibration": f"ID val, {len(next(iter(self.fusion.reference.values())))} images",
            "training": self.training_info,
        }
        log.info("MOODCAT ready: %s", self.summary())
        log.debug("MOODCAT details: %s", self.run_meta)

    def train(self, net, id_loader_dict) -> None:
        """Train (or load from the cache) the generator and every Cb variant; idempotent.
        ``net`` (the classifier) may be None when no part needs it (no Cb(ext), no class
        consistency): the paper's generator and Cb never see the classifier."""
        if self.gan is not None:
            return
        if self.pretrained is not None:
            self.gan, gan_key = self._pretrained_gan()
        else:
            self.gan, gan_key = self._train_gan(net, id_loader_dict)
        self._cbs = {variant: self._pretrained_cb() if variant == "cb" and self._file_has("cb") else
                     self._train_cb(variant, net, id_loader_dict, gan_key)
                     for variant in self.scorer_names if variant in CB_SCORERS}
        if net is not None:
            self.scorer_modules = self._build_scorers(self._cbs, net)

    # -- shipped weights -----------------------------------------------------------------------
    def _checked_pretrained(self) -> Optional[dict]:
        """The verified contents of ``pretrained.file`` (None without one); one-line errors for a
        missing, damaged or unlisted file, another benchmark's weights, or EMA scoring."""
        name = (self.config.get("pretrained") or {}).get("file")
        if not name:
            return None
        path = shipped_weights.locate(name)
        content = shipped_weights.load_weights(path)
        benchmark, classes = self.config.dataset.name, self._num_classes()
        if content["benchmark"] != benchmark or int(content["num_classes"]) != classes:
            raise ConfigError(f"pretrained weights {path} were trained on {content['benchmark']} "
                              f"({content['num_classes']} classes), this run is {benchmark} ({classes} classes): use "
                              f"the file for {benchmark} (see {path.parent / shipped_weights.MANIFEST}) or drop --pretrained")
        if self.use_ema:
            raise ConfigError(f"pretrained weights {path} hold no EMA decoder: set postprocessor_args.use_ema=false")
        modules = dict(content["modules"])
        wanted = cb_network_name(self.config.cb_network)
        if "cb" in modules and cb_network_name(content["cb_network"]) != wanted:  # another method's Cb
            log.info("the Cb in %s is a '%s', this method's is a '%s': training it on the file's generator",
                     path, cb_network_name(content["cb_network"]), wanted)
            del modules["cb"]
        return {**content, "modules": modules, "path": path, "sha256": shipped_weights.sha256_of(path)}

    def _file_has(self, part: str) -> bool:
        return self.pretrained is not None and part in self.pretrained["modules"]

    def _pretrained_info(self, *keys: str) -> dict:
        provenance = self.pretrained["provenance"]
        return {"pretrained": str(self.pretrained["path"]), "sha256": self.pretrained["sha256"], "cached": True,
                **{k: provenance[k] for k in keys if provenance.get(k) is not None}}

    def _pretrained_gan(self):
        """(generator with the file's encoder and decoder, cache identity for Cbs trained on it)."""
        section = self.pretrained["gan_network"]
        kwargs = {k: v for k, v in section.items() if k not in ("name", "checkpoint")}
        gan = NETWORKS.get(section.get("name", "moodcat_gan"))(num_classes=self._num_classes(), **kwargs)
        for part in ("encoder", "decoder"):
            load_state_dict_strict(getattr(gan, part), shipped_weights.full(self.pretrained["modules"][part]),
                                   f"the {part} in {self.pretrained['path']}")
        gan.decoder_ema.load_state_dict(gan.decoder.state_dict())
        self.training_info["moodcat_gan"] = self._pretrained_info("images_seen", "gan_steps")
        gan_key = {"benchmark": self.config.dataset.name, "pretrained_sha256": self.pretrained["sha256"]}
        return gan.to(self.device).eval().requires_grad_(False), gan_key

    def _pretrained_cb(self) -> torch.nn.Module:
        section = self.pretrained["cb_network"]
        kwargs = {k: v for k, v in section.items() if k not in ("name", "checkpoint")}
        cb = NETWORKS.get(cb_network_name(section))(num_classes=self._num_classes(), **kwargs)
        load_state_dict_strict(cb, shipped_weights.full(self.pretrained["modules"]["cb"]),
                               f"the Cb in {self.pretrained['path']}")
        info = self._pretrained_info("cb_steps")
        if self.pretrained["provenance"].get("cb_val_acc") is not None:
            info["val_acc"] = self.pretrained["provenance"]["cb_val_acc"]
        self.training_info["moodcat_cb"] = info
        return cb.to(self.device).eval().requires_grad_(False)

    def summary(self) -> str:
        """One short line: scorers, Cb validation accuracy, calibration size, grid folder."""
        accuracies = ", ".join(f"{name} val acc {info['val_acc']:.3f}" for name, info in self.training_info.items()
                               if "val_acc" in info)
        calibration = self.run_meta.get("calibration", "not calibrated yet")
        return f"scorers {'+'.join(self.scorer_names)}; {accuracies or 'no Cb'}; {calibration}; grids in {self.grid_folder()}"

    def _num_classes(self) -> int:
        return int(self.config.dataset.num_classes)

    def _train_loader(self, id_loader_dict, section, seed: int, part: str):
        """ID train images for the generator (``part='gan'``) or Cb (``'cb'``), with the batch
        size and augmentation of the ``gan``/``cb`` section (not the classifier's crop:
        zero-padded crops put black borders no test image has into 98 % of the training images).
        With ``gan.holdout_for_cb`` = f > 0, a stratified f of the images is kept from the
        generator and is all Cb trains on, so Cb learns from syntheses of unseen images, as at
        test time. Bare OpenOOD use: its own train loader as it is."""
        if self.benchmark is None:
            return id_loader_dict["train"]
        kept, held_out = stratified_holdout(self.benchmark.id["train"], float(self.config.gan.holdout_for_cb),
                                            int(self.config.get("seed", 0)))
        return make_loader(kept if part == "gan" else held_out, self.benchmark.mean, self.benchmark.std,
                           int(section.batch_size), train=True, augment=section.augment, seed=seed,
                           device=self.device, shard=distributed.shard())

    def _fit(self, trainer, name: str, key: dict, description: str, section: str) -> dict:
        folder = run_folder(self.config, f"{self.config.dataset.name}-{name}", key)
        result = fit(trainer, folder, progress=bool(self.config.get("progress", True)), key=key,
                     description=description, settings=f"postprocessors.<method>.{section}")
        info = {"folder": str(folder), "cached": result["cached"]}
        last = (result.get("history") or [{}])[-1]
        info.update({k: v for k, v in last.items() if k in ("loss", "train_acc", "val_acc")})
        self.training_info[name] = info
        return info

    def _gan_key(self) -> dict:
        cfg = self.config
        gan_trainer = TRAINERS.get(cfg.gan.name)
        return {"benchmark": cfg.dataset.name, "gan_network": cfg.gan_network,
                "gan": run_identity(cfg.gan, getattr(gan_trainer, "neutral_settings", {})),
                "seed": cfg.get("seed", 0),
                "train_source": "benchmark" if self.benchmark is not None else "id_loader_dict"}

    def _build_cb(self, net) -> torch.nn.Module:
        """The Cb network of ``cb_network`` (default the paper's ``moodcat_cb``); a network that
        compares classifier features gets the frozen classifier (not part of its weights)."""
        section = self.config.cb_network
        cls = NETWORKS.get(cb_network_name(section))
        kwargs = {k: v for k, v in section.items() if k not in ("name", "checkpoint")}
        if getattr(cls, "needs_classifier", False):
            if net is None:
                raise ConfigError(f"cb_network '{section.get('name')}' reads the classifier's features; it cannot "
                                  "be built without the classifier")
            kwargs.update(classifier=net, mean=self.mean, std=self.std)
        return cls(num_classes=self._num_classes(), **kwargs)

    def _cb_needs_classifier(self) -> bool:
        """Whether Cb's training reads the classifier (features or predicted labels)."""
        cls = NETWORKS.get(cb_network_name(self.config.cb_network))
        return bool(getattr(cls, "needs_classifier", False) or self.config.cb.get("synthetic_negatives"))

    def training_needs_classifier(self) -> bool:
        """Whether any trained part (generator, Cb, Cb(ext)) needs the classifier."""
        return (self._cb_needs_classifier() or "cb_ext" in self.scorer_names
                or float(self.config.gan.get("class_consistency_weight", 0)) > 0)

    def _classifier_key(self) -> dict:
        """Identity of the classifier, for the runs that depend on it (pseudo-labels, class consistency)."""
        return {"classifier_network": self.config.get("network"), "classifier_trainer": self.config.get("trainer")}

    def _train_gan(self, net, id_loader_dict):
        gan, trainer, key = self.gan_trainer(net, id_loader_dict)
        self._fit(trainer, "moodcat_gan", key, "MOODCAT generator (encoder + decoder + U-Net discriminator)", "gan")
        return gan.eval().requires_grad_(False), key

    def gan_trainer(self, net, id_loader_dict):
        """(generator, its trainer, its cache key) as ``train`` builds them; the run folder is
        ``run_folder(config, f"{benchmark}-moodcat_gan", key)`` (e.g. for a time-boxed run)."""
        cfg = self.config
        kwargs = {k: v for k, v in cfg.gan_network.items() if k not in ("name", "checkpoint")}
        torch.manual_seed(int(cfg.get("seed", 0)))  # initial weights independent of what ran before
        gan = NETWORKS.get(cfg.gan_network.get("name", "moodcat_gan"))(num_classes=self._num_classes(), **kwargs)
        gan = gan.to(self.device)
        loader = self._train_loader(id_loader_dict, cfg.gan, int(cfg.get("seed", 0)), "gan")
        uses_classifier = float(cfg.gan.get("class_consistency_weight", 0)) > 0
        trainer = TRAINERS.get(cfg.gan.name)(gan, loader, self._section_config("gan"),
                                             classifier=net if uses_classifier else None)
        key = {**self._gan_key(), **(self._classifier_key() if uses_classifier else {})}
        if self.benchmark is None:  # OpenOOD bridge: the data are not named by a benchmark config
            key["train_data"] = training_data_fingerprint(id_loader_dict["train"])
        return gan, trainer, key

    def _train_cb(self, variant: str, net, id_loader_dict, gan_key: dict) -> torch.nn.Module:
        cfg = self.config
        torch.manual_seed(int(cfg.get("seed", 0)) + 1)
        cb = self._build_cb(net).to(self.device)
        loader = self._train_loader(id_loader_dict, cfg.cb, int(cfg.get("seed", 0)) + 1, "cb")
        key = self._cb_key(variant, gan_key)
        unlabeled = None
        if variant == "cb_ext":
            folder = run_folder(cfg, f"{cfg.dataset.name}-moodcat_{variant}", key)
            if not (folder / FINAL).is_file():  # cached runs need no pseudo-labels
                outliers = self._pseudo_labelled_outliers(net)
                unlabeled = make_loader(outliers, self.mean, self.std,
                                        int(cfg.cb.get("outlier_batch_size", cfg.cb.batch_size)), train=True,
                                        augment=cfg.cb.augment, seed=int(cfg.get("seed", 0)) + 2,
                                        device=self.device, shard=distributed.shard())
        trainer = TRAINERS.get(cfg.cb.name)(cb, loader, self._section_config("cb"), generator=self.gan,
                                            unlabeled_loader=unlabeled, val_loader=id_loader_dict.get("val"),
                                            classifier=net if cfg.cb.get("synthetic_negatives") else None)
        what = "with pseudo-labelled outliers" if variant == "cb_ext" else "on ID pairs"
        self._fit(trainer, f"moodcat_{variant}", key, f"MOODCAT {variant} (conditional binary classifier, {what})",
                  "cb")
        return cb.eval().requires_grad_(False)

    def _cb_key(self, variant: str, gan_key: dict) -> dict:
        """Cache key of the Cb ``variant`` (``cb`` or ``cb_ext``) trained on the generator ``gan_key``.

        The settings only Cb(ext) reads (the trainer's ``ext_only_settings``) are left out of the
        plain Cb's key, so e.g. ``outlier_label: predicted`` reuses the plain Cb it shares with the
        paper's method. Cb(ext) trains on outliers pseudo-labelled by the classifier, so its key
        names the outlier set and the classifier."""
        cfg = self.config
        cb_trainer = TRAINERS.get(cfg.cb.name)
        cb_neutral = getattr(NETWORKS.get(cb_network_name(cfg.cb_network)), "neutral_settings", {})
        cb_section = dict(cfg.cb)
        if variant != "cb_ext":
            cb_section = {k: v for k, v in cb_section.items() if k not in getattr(cb_trainer, "ext_only_settings", ())}
        key = {"gan": gan_key, "cb_network": run_identity(cfg.cb_network, {"name": PAPER_CB, **cb_neutral}),
               "cb": run_identity(cb_section, getattr(cb_trainer, "neutral_settings", {})), "variant": variant}
        if self._cb_needs_classifier():
            key.update(self._classifier_key())
        if variant == "cb_ext":
            key.update({"outlier_set": getattr(getattr(self.benchmark, "outlier", None), "name", None),
                        **self._classifier_key()})
        return key

    @torch.no_grad()
    def _pseudo_labelled_outliers(self, net) -> ImageArray:
        """The benchmark's outlier images labelled with the CLASSIFIER's argmax (paper 3.6)."""
        outlier = getattr(self.benchmark, "outlier", None)
        if outlier is None:
            raise ConfigError("cb_variants includes cb_ext (Cb trained with extra outlier data), but no outlier set "
                              "is available: use a benchmark with splits.outlier, or cb_variants: [cb]")
        loader = make_loader(outlier, self.mean, self.std, int(self.config.get("eval_batch_size", 256)),
                             device=self.device)
        preds = [net(batch["data"].to(self.device)).argmax(dim=1).cpu()
                 for batch in tqdm(loader, desc="pseudo-labelling outliers", leave=False,
                                   disable=not self.config.get("progress", True))]
        return ImageArray(f"{outlier.name}_pseudo", outlier.images, torch.cat(preds).numpy())

    def _build_scorers(self, cbs: Dict[str, torch.nn.Module], net) -> Dict[str, torch.nn.Module]:
        """Modules of the image scorers (Cb variants, classifier-feature and IQA distances);
        logit scorers need none."""
        modules = {}
        for name in self.scorer_names:
            if name in LOGIT_SCORERS:
                continue
            if name in CB_SCORERS:
                module = CbScorer(cbs[name], name)
            elif name in FEATURE_SCORERS:
                module = (ClassifierLPIPS(net, self.mean, self.std) if name == "classifier_lpips" else
                          ClassifierOutputDistance(net, self.mean, self.std, name))
            else:
                module = build_iqa_scorer(name, self.iqa_cfg)
            modules[name] = module.to(self.device).eval()
        return modules

    @torch.no_grad()
    def _calibrate(self, net, val_loader) -> None:
        """Fit the fusion on ID-val distances (labels predicted by the classifier, as at test time)."""
        self.masks.start(f"calibration:{getattr(val_loader, 'name', 'val')}", int(self.config.get("seed", 0)))
        parts: Dict[str, list] = {name: [] for name in self.scorer_names}
        for batch in tqdm(val_loader, desc="MOODCAT calibration (ID val)", leave=False,
                          disable=not self.config.get("progress", True)):
            _, distances = self.distances(net, batch["data"].to(self.device))
            for name, value in distances.items():
                parts[name].append(value.cpu())
        self.fusion.fit({name: torch.cat(values) for name, values in parts.items()})

    # -- scoring -------------------------------------------------------------------------------
    def synthesize(self, x: torch.Tensor, y: torch.Tensor,
                   generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(masked, synthesis) of x ``[B,3,32,32]`` in [-1,1] conditioned on y ``[B]``."""
        return self.gan.synthesize(x, y, mask_style=self.mask_style, area=self.test_area,
                                   generator=generator if generator is not None else self.generator,
                                   use_ema=self.use_ema)

    @torch.no_grad()
    def distances(self, net, data: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """data (B,3,32,32) normalised -> (pred (B,), {scorer: (B,) distance, high = OOD}),
        each distance averaged over ``num_masks`` masks."""
        if self.gan is None:
            raise RuntimeError("MOODCAT postprocessor used before setup()")
        logits = net(data)
        pred = logits.argmax(dim=1)  # y = C(x): never the ground truth
        return pred, self.distances_given(data, pred, logits)

    @torch.no_grad()
    def distances_given(self, data: torch.Tensor, labels: torch.Tensor,
                        logits: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """{scorer: (B,) distance} of data (B,3,32,32) normalised, synthesised under ``labels``
        (B,) (the deployed detector passes the classifier's prediction; the protocol table also
        passes true or random labels). Logit scorers (``ebo``) read ``logits`` (B, C)."""
        x = to_signed_unit(data, self.mean, self.std)
        totals = {name: torch.zeros(len(x), device=x.device) for name in self.scorer_modules}
        for draw in range(self.num_masks):
            synthesis = self.gan.synthesize_from_masked(self.masks.masks(x, draw), labels, use_ema=self.use_ema)
            for name, scorer in self.scorer_modules.items():
                totals[name] += scorer(x, synthesis, labels).float()
        self.masks.advance(len(x))
        distances = {name: total / self.num_masks for name, total in totals.items()}
        for name in self.scorer_names:
            if name in LOGIT_SCORERS:
                distances[name] = logit_distance(name, logits)
        return distances

    def start_set(self, name: str, is_id: bool) -> None:
        """Called by the evaluator before scoring the set ``name``: its masks (and, under the authors'
        protocol, its random labels) are drawn from (seed, name, index), whatever was scored before."""
        self.masks.start(name, self._scoring_seed())
        self._set_is_id, self.random_labels = is_id, label_generator(self._scoring_seed(), name)

    @property
    def needs_test_labels(self) -> bool:
        """True under a protocol that conditions on test labels (the evaluator then calls
        :meth:`postprocess_labelled`); such scores never go to a leaderboard."""
        return self.protocol != "deployable"

    @torch.no_grad()
    def postprocess_labelled(self, net, data: torch.Tensor, labels: torch.Tensor):
        """:meth:`postprocess` under ``self.protocol`` (:data:`moodcat_plugin.moodcat.protocols.PROTOCOLS`), which reads the test
        ``labels`` (B,) of the set begun by :meth:`start_set`; pred stays the classifier's argmax."""
        logits = net(data)
        pred = logits.argmax(dim=1)
        condition = condition_labels(self.protocol, pred, labels.to(pred.device), self._set_is_id,
                                     self._num_classes(), self.random_labels)
        distances = self.distances_given(data, condition, logits)
        self.last_components = {name: -value for name, value in distances.items()}
        return pred, self.fusion.transform({name: value.cpu() for name, value in distances.items()}).to(data.device)

    @torch.no_grad()
    def postprocess(self, net, data: torch.Tensor):
        """data (B,3,32,32) normalised -> (pred (B,) int64 = classifier argmax, conf (B,) fused,
        higher = more ID). ``last_components[s]`` = -distance of scorer s."""
        pred, distances = self.distances(net, data)
        self.last_components = {name: -value for name, value in distances.items()}
        conf = self.fusion.transform({name: value.cpu() for name, value in distances.items()})
        return pred, conf.to(data.device)

    # -- pictures ------------------------------------------------------------------------------
    def grid_folder(self) -> Path:
        return Path(self.config.output_dir) / self.config.dataset.name / "moodcat_grids"

    @torch.no_grad()
    def _save_grids(self, net, id_loader_dict, ood_loader_dict) -> None:
        """input / masked / synthesis rows for the first images of ID test and every OOD set."""
        loaders = {}
        if "test" in id_loader_dict:
            loaders["id_test"] = id_loader_dict["test"]
        for group in ("near", "far"):
            for name, loader in (ood_loader_dict.get(group) or {}).items():
                loaders[name] = loader
        generator = torch.Generator().manual_seed(GRID_SEED)
        for name, loader in loaders.items():
            data = _first_images(loader, GRID_IMAGES).to(self.device)
            if data is None:
                continue
            x = to_signed_unit(data, self.mean, self.std)
            pred = net(data).argmax(dim=1)
            masked, synthesis = self.synthesize(x, pred, generator=generator)
            names = self.config.dataset.get("class_names")
            save_labelled_grid(self.grid_folder() / f"{name}.png",
                               {"input": x, "masked": masked, "synthesis": synthesis},
                               [class_name(int(label), names) for label in pred],
                               f"{self.config.dataset.name}: {name}; each column conditioned on the classifier's "
                               "prediction (its title)")


def training_data_fingerprint(loader, samples: int = FINGERPRINT_SAMPLES) -> dict:
    """What the GAN/Cb cache keys record about training data that no benchmark config names (the
    OpenOOD bridge trains on ``id_loader_dict['train']``, known only by ``dataset.name``).

    ``{'images': len(dataset), 'sampled': k, 'sha256': ...}``: the hash covers the ``data`` and
    ``label`` of ``k = min(samples, len)`` items at evenly spaced indices (first and last
    included), read straight from ``loader.dataset`` with the torch, numpy and ``random`` global
    RNGs seeded (and restored afterwards), so random train augmentation gives the same bytes on
    every run. A sample rather than the whole set keeps this to a few hundred reads at any size;
    the cost is that two sets of equal size differing only in unsampled items share a cache.
    A dataset whose augmentation draws from its own unseeded RNG gets a new hash each run:
    it retrains rather than silently reusing weights. Batches/items: dicts with ``data`` (and
    ``label``), as OpenOOD's, or ``(data, label)`` tuples. Our own batch sources (``dataset`` an
    :class:`ImageArray`) are hashed whole.
    """
    dataset = getattr(loader, "dataset", None)
    if isinstance(dataset, ImageArray):  # our own batches: the arrays themselves, whole
        digest = hashlib.sha256(dataset.images.tobytes() + dataset.labels.tobytes())
        return {"images": len(dataset), "sampled": len(dataset), "sha256": digest.hexdigest()}
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")) or len(dataset) == 0:
        raise DataError("id_loader_dict['train'] needs a non-empty map-style dataset (len() and indexing) so "
                        "MOODCAT can fingerprint its training data for the GAN/Cb cache")
    count = len(dataset)
    indices = sorted({round(i) for i in np.linspace(0, count - 1, min(samples, count))})
    digest = hashlib.sha256()
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(FINGERPRINT_SEED)
            random.seed(FINGERPRINT_SEED)
            np.random.seed(FINGERPRINT_SEED)
            for index in indices:
                item = dataset[index]
                parts = (item["data"], item.get("label")) if isinstance(item, Mapping) else tuple(item)[:2]
                for part in parts:
                    array = np.asarray(part.detach().cpu() if torch.is_tensor(part) else part)
                    digest.update(f"{array.dtype}{array.shape}".encode())
                    digest.update(np.ascontiguousarray(array).tobytes())
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    return {"images": count, "sampled": len(indices), "sha256": digest.hexdigest()}


def _first_images(loader, count: int) -> Optional[torch.Tensor]:
    """The first ``count`` images (B,3,H,W normalised) of a loader, or None if it is empty."""
    taken, seen = [], 0
    for batch in loader:
        taken.append(batch["data"][: count - seen])
        seen += len(taken[-1])
        if seen >= count:
            break
    return torch.cat(taken) if taken else None
