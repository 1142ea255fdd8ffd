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

Setup (each part cached in its own run folder, keyed by the config that determines it; the
training and the keys are :mod:`moodcat_plugin.moodcat.runs`, the grids
:func:`moodcat_plugin.moodcat.images.save_synthesis_grids`):

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

import logging
from pathlib import Path
from typing import Annotated, Any, Dict, List, Optional, Tuple

import torch
from pydantic import AfterValidator
from tqdm import tqdm

from moodcat_plugin.moodcat import runs
from moodcat_plugin.moodcat import weights as shipped_weights
from moodcat_plugin.moodcat.fusion import CascadeFusion
from moodcat_plugin.moodcat.images import grid_loaders, save_synthesis_grids, to_signed_unit
from moodcat_plugin.moodcat.mask_stream import UNNAMED_SET, MaskStream
from moodcat_plugin.moodcat.masking import AREA_RANGE, TEST_AREA, VALID_STYLES
from moodcat_plugin.moodcat.protocols import condition_labels, label_generator
from moodcat_plugin.moodcat.runs import PAPER_CB
from moodcat_plugin.moodcat.scorers import (CB_SCORERS, DROP_HINT, FEATURE_SCORERS, IQA_SCORERS, LOGIT_SCORERS,
                                            LPIPS_TRUNKS, CbScorer, ClassifierLPIPS, ClassifierOutputDistance,
                                            build_iqa_scorer, check_cached_weights, logit_distance)
from moodcat_plugin.postprocessors.base_postprocessor import BasePostprocessor
from moodcat_plugin.registry import NETWORKS, TRAINERS, register_postprocessor
from moodcat_plugin.schema import FLAG, TEXT, Expect, Registered, Schema, check, choice, integer, list_of, optional

log = logging.getLogger(__name__)
SCORING_SEED_OFFSET = 101
LABEL_SOURCES = ("predicted",)
CB_VARIANTS = (["cb"], ["cb", "cb_ext"])


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
        self.pretrained = shipped_weights.checked_pretrained(  # a bad file fails here, before any training
            config, self._num_classes(), self.use_ema)

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
            self.gan, gan_key, self.training_info["moodcat_gan"] = shipped_weights.pretrained_gan(
                self.pretrained, self._num_classes(), self.config.dataset.name, self.device)
        else:
            self.gan, gan_key, self.training_info["moodcat_gan"] = runs.train_gan(
                self.config, self.benchmark, net, id_loader_dict, self.device)
        for variant in (v for v in self.scorer_names if v in CB_SCORERS):
            if variant == "cb" and self._file_has("cb"):
                self._cbs[variant], self.training_info["moodcat_cb"] = shipped_weights.pretrained_cb(
                    self.pretrained, self._num_classes(), self.device)
            else:
                self._cbs[variant], self.training_info[f"moodcat_{variant}"] = runs.train_cb(
                    self.config, self.benchmark, variant, net, id_loader_dict, self.gan, gan_key, self.mean,
                    self.std, self.device)
        if net is not None:
            self.scorer_modules = self._build_scorers(self._cbs, net)

    def _file_has(self, part: str) -> bool:
        return self.pretrained is not None and part in self.pretrained["modules"]

    def summary(self) -> str:
        """One short line: scorers, Cb validation accuracy, calibration size, grid folder."""
        accuracies = ", ".join(f"{name} val acc {info['val_acc']:.3f}" for name, info in self.training_info.items()
                               if "val_acc" in info)
        calibration = self.run_meta.get("calibration", "not calibrated yet")
        return f"scorers {'+'.join(self.scorer_names)}; {accuracies or 'no Cb'}; {calibration}; grids in {self.grid_folder()}"

    def _num_classes(self) -> int:
        return runs.num_classes(self.config)

    def training_needs_classifier(self) -> bool:
        """Whether any trained part (generator, Cb, Cb(ext)) needs the classifier."""
        return (runs.cb_needs_classifier(self.config) or "cb_ext" in self.scorer_names
                or runs.gan_uses_classifier(self.config))

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

    def _save_grids(self, net, id_loader_dict, ood_loader_dict) -> None:
        """input / masked / synthesis rows for the first images of ID test and every OOD set."""
        save_synthesis_grids(self.grid_folder(), grid_loaders(id_loader_dict, ood_loader_dict), net, self.synthesize,
                             self.mean, self.std, self.device, self.config.dataset.name,
                             self.config.dataset.get("class_names"))
