"""MOODCAT scorers: how far is an image from its class-conditional synthesis? (paper 3.4-3.5)

Every scorer is an ``nn.Module`` whose ``forward(x, x_synth, y)`` takes the input ``x`` and its
synthesis ``x_synth`` (both ``[B,3,32,32]`` in [-1,1]) and the conditioning label ``y``
(int64 ``[B]``) and returns a DISTANCE ``[B]``: HIGH = mismatch = OOD.

* ``CbScorer`` -- the trained conditional binary classifier's logit (unbounded).
* ``LPIPSScorer`` -- LPIPS of the ``lpips`` PyPI package (VGG16 or AlexNet trunk + the linear
  heads that ship inside the package), >= 0.
* ``DISTSScorer`` -- piq's DISTS (VGG16 trunk + DISTS alpha/beta), in [0, 1].
* ``ClassifierLPIPS`` (``classifier_lpips``, not in the paper) -- LPIPS computed with the deployed
  classifier's own trunk instead of an ImageNet VGG: every feature map of
  ``classifier(x, return_feature_list=True)`` unit-normalised over channels, squared difference
  between x and x', averaged over space and layers (uniform weights: no learned heads), >= 0.
  Needs no downloaded weights; the classifier is read, never trained.
* ``logit_l1`` / ``feature_l1`` (:class:`ClassifierOutputDistance`, not in the paper; issue 27) --
  DiffGuard's L1 distance between the deployed classifier's logits on x and x', and DiffNB's L1
  distance between its L2-normalised penultimate features, >= 0. No weights to fetch.
* ``ebo`` (:func:`logit_distance`) -- not MOODCAT: the classifier's free energy, for the cascade
  "MOODCAT then a logit score" that the leaderboard reports as its own row.

Pretrained weights come ONLY from the user's torch hub cache, ``torch.hub.get_dir()/checkpoints``
(``~/.cache/torch/hub/checkpoints`` unless ``TORCH_HOME`` is set). Their file names are those that
torchvision / piq would download (:func:`required_weight_files`); nothing here ever downloads:
the files are checked before anything is built (``MissingWeightsError`` names the missing file,
the folder and how to drop the scorer), trunks are built without weights and then loaded from
the checked files. ``pretrained=False`` (tests only) builds random trunks: meaningless scores,
but the same code path, offline.
"""
from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Mapping, Optional, Sequence
from unittest import mock
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from moodcat_plugin.errors import ConfigError, MissingWeightsError

IQA_SCORERS = ("lpips", "dists")
CB_SCORERS = ("cb", "cb_ext")
LOGIT_SCORERS = ("ebo",)  # classifier scores for cascade rows that name them (not MOODCAT alone)
FEATURE_SCORERS = ("classifier_lpips", "logit_l1", "feature_l1")  # distances in the frozen classifier's feature space (no weights to fetch)
LPIPS_TRUNKS = ("vgg", "alex")
# How to drop the IQA scorers with our CLI (the default); inside OpenOOD the bridge passes its own.
DROP_HINT = ("--set postprocessors.moodcat.postprocessor.postprocessor_args.scorers=[cb] "
             "(use postprocessors.moodcat_ext... for the moodcat_ext method)")

# Where torchvision / piq would download each weight file from; the cache file name is the URL's
# last path component (exactly what torch.hub.load_state_dict_from_url uses).
TRUNK_URLS = {
    "vgg": torchvision.models.VGG16_Weights.IMAGENET1K_V1.url,        # vgg16-397923af.pth
    "alex": torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url,     # alexnet-owt-7be5be79.pth
}


def _dists_weights_url() -> str:
    import piq

    return piq.DISTS._weights_url  # dists_weights.pt (DISTS alpha/beta)


def hub_checkpoint_dir() -> Path:
    """The folder torch.hub caches downloaded weights in (``torch.hub.get_dir()/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def cache_file_name(url: str) -> str:
    return os.path.basename(urlparse(url).path)


def required_weight_files(scorers: Sequence[str], lpips_trunk: str = "vgg") -> Dict[str, List[str]]:
    """Scorer name -> the cache file names its pretrained weights need (empty for Cb scorers)."""
    files: Dict[str, List[str]] = {}
    for name in scorers:
        if name == "lpips":
            files[name] = [cache_file_name(TRUNK_URLS[_check_trunk(lpips_trunk)])]
        elif name == "dists":
            files[name] = [cache_file_name(TRUNK_URLS["vgg"]), cache_file_name(_dists_weights_url())]
        else:
            files[name] = []
    return files


def check_cached_weights(scorers: Sequence[str], lpips_trunk: str = "vgg",
                         drop_hint: str = DROP_HINT) -> Dict[str, Path]:
    """File name -> path in the hub cache for every weight file ``scorers`` need.

    Raises MissingWeightsError naming every missing file, the folder to put it in, where it is
    normally downloaded from, and how to run without the scorer (``drop_hint``: the caller's way
    to set ``scorers: [cb]``, our CLI's ``--set`` by default).
    """
    folder = hub_checkpoint_dir()
    needed = required_weight_files(scorers, lpips_trunk)
    missing = [(scorer, file) for scorer, files in needed.items() for file in files
               if not (folder / file).is_file()]
    if missing:
        urls = {cache_file_name(u): u for u in [*TRUNK_URLS.values(), _dists_weights_url()]}
        listing = "; ".join(f"{file} (for scorer '{scorer}', from {urls[file]})" for scorer, file in missing)
        raise MissingWeightsError(
            f"pretrained weights missing from the torch hub cache: {listing}. Put the file(s) in {folder} "
            f"(torch.hub.get_dir()/checkpoints; nothing is downloaded at run time), or drop the IQA scorers "
            f"and use the conditional binary classifier only: {drop_hint}.")
    return {file: folder / file for files in needed.values() for file in files}


def _check_trunk(trunk: str) -> str:
    if trunk not in LPIPS_TRUNKS:
        raise ConfigError(f"iqa.lpips_trunk '{trunk}' is not one of {', '.join(LPIPS_TRUNKS)}")
    return trunk


def _load_weights_file(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _features_state(path: Path) -> Dict[str, torch.Tensor]:
    """The ``features.*`` tensors of a torchvision VGG16/AlexNet file, keys without the prefix."""
    state = _load_weights_file(path)
    features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    if not features:
        raise MissingWeightsError(f"{path} holds no 'features.*' tensors: it is not a torchvision "
                                  "VGG16/AlexNet state dict. Replace it with the original file.")
    return features


def trunk_features(trunk: str, weights_path: Optional[Path]) -> nn.Sequential:
    """torchvision's VGG16 / AlexNet ``features`` built without weights (no download path), then
    loaded strictly from ``weights_path`` when given, else left random. VGG16 skips building
    the 100M-parameter classifier head, which no scorer uses."""
    if trunk == "vgg":
        features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    else:
        features = torchvision.models.alexnet(weights=None).features
    if weights_path is not None:
        try:
            features.load_state_dict(_features_state(weights_path), strict=True)
        except RuntimeError as exc:
            raise MissingWeightsError(f"{weights_path} does not match torchvision's {trunk} trunk ({exc}); "
                                      "replace it with the original file.") from exc
    return features


def _local_builder(trunk: str, weights_path: Optional[Path]):
    """Stand-in for ``torchvision.models.vgg16``/``alexnet`` as third-party code calls them
    (``pretrained=...``): returns an object whose ``.features`` is :func:`trunk_features`."""

    def build(*args, **kwargs):
        return SimpleNamespace(features=trunk_features(trunk, weights_path))

    return build


def logit_distance(name: str, logits: torch.Tensor) -> torch.Tensor:
    """Distance (B,) from the classifier's logits (B, C), high = OOD: ``ebo`` = free energy
    ``-logsumexp(logits)`` (EBO at temperature 1, negated)."""
    if name != "ebo":
        raise ConfigError(f"unknown logit scorer '{name}'; valid: {', '.join(LOGIT_SCORERS)}")
    return -torch.logsumexp(logits.float(), dim=1)


def logit_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """DiffGuard's score: L1 distance between logit vectors ``[..., C]`` -> ``[...]``, >= 0."""
    return (a - b).abs().sum(-1)


def feature_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """DiffNB's score: L1 distance between L2-normalised feature vectors ``[..., D]`` -> ``[...]``,
    in [0, 2 sqrt(D)]."""
    unit = lambda t: t / (t.norm(dim=-1, keepdim=True) + 1e-8)  # noqa: E731
    return (unit(a) - unit(b)).abs().sum(-1)


class _FrozenClassifierDistance(nn.Module):
    """Base of the distances read in the deployed classifier's space: it is read, never trained."""

    def __init__(self, classifier: nn.Module, mean: Sequence[float], std: Sequence[float], name: str):
        super().__init__()
        self.name = name
        self.__dict__["classifier"] = classifier  # read-only, not a submodule: never saved or trained
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def classifier_input(self, x: torch.Tensor, x_synth: torch.Tensor) -> torch.Tensor:
        """x then x' (``[2B,3,H,W]``), from [-1,1] to the classifier's normalisation."""
        self.classifier.eval()
        images = (torch.cat([x, x_synth]) + 1.0) * 0.5
        return (images - self.mean) / self.std


class ClassifierOutputDistance(_FrozenClassifierDistance):
    """``logit_l1`` or ``feature_l1`` between the frozen classifier's outputs on x and x', >= 0."""

    def __init__(self, classifier: nn.Module, mean: Sequence[float], std: Sequence[float], name: str):
        if name not in ("logit_l1", "feature_l1"):
            raise ConfigError(f"unknown classifier-output distance '{name}'; valid: logit_l1, feature_l1")
        super().__init__(classifier, mean, std, name)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, x_synth: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits, feature = self.classifier(self.classifier_input(x, x_synth), return_feature=True)
        output = (logits if self.name == "logit_l1" else feature).float()
        distance = logit_l1 if self.name == "logit_l1" else feature_l1
        return distance(output[: len(x)], output[len(x):])


class ClassifierLPIPS(_FrozenClassifierDistance):
    """Perceptual distance in the frozen classifier's feature space (see module doc), >= 0."""

    def __init__(self, classifier: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__(classifier, mean, std, "classifier_lpips")

    @torch.no_grad()
    def forward(self, x: torch.Tensor, x_synth: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _, maps = self.classifier(self.classifier_input(x, x_synth), return_feature_list=True)
        total = torch.zeros(len(x), device=x.device)
        for feature in maps:
            unit = feature.float() / (feature.float().norm(dim=1, keepdim=True) + 1e-10)
            total += (unit[: len(x)] - unit[len(x):]).pow(2).sum(dim=1).mean(dim=(1, 2))
        return total / len(maps)


class CbScorer(nn.Module):
    """The conditional binary classifier's logit: HIGH = (x, x') mismatch = OOD. Unbounded."""

    def __init__(self, classifier: nn.Module, name: str = "cb"):
        super().__init__()
        self.name = name
        self.classifier = classifier.eval()

    @torch.no_grad()
    def forward(self, x: torch.Tensor, x_synth: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.classifier(x, x_synth, y).reshape(-1)


class LPIPSScorer(nn.Module):
    """LPIPS distance (``lpips`` package, v0.1 linear heads from inside the package), >= 0.

    ``trunk``: 'vgg' (VGG16, as the public MOODCAT code) or 'alex'. The trunk comes from
    :func:`trunk_features` (ImageNet weights from the checked hub-cache file, or random when not
    ``pretrained``); lpips's own torchvision call is redirected to it, so nothing can download.
    """

    def __init__(self, trunk: str = "vgg", pretrained: bool = True):
        super().__init__()
        import lpips
        import lpips.pretrained_networks

        self.name = "lpips"
        self.trunk = _check_trunk(trunk)
        self.pretrained = bool(pretrained)
        paths = check_cached_weights(["lpips"], trunk) if pretrained else {}
        weights_path = paths.get(cache_file_name(TRUNK_URLS[trunk]))
        # lpips builds its trunk with torchvision.models.<trunk>(pretrained=...) through its module
        # attribute ``tv``; during construction only, ``tv`` is a stand-in that returns our local trunk.
        local_tv = SimpleNamespace(vgg16=_local_builder("vgg", weights_path),
                                   alexnet=_local_builder("alex", weights_path))
        with mock.patch.object(lpips.pretrained_networks, "tv", local_tv):
            self.metric = lpips.LPIPS(net=trunk, pretrained=True, pnet_rand=not pretrained, verbose=False)
        self.metric.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, x_synth: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.metric(x, x_synth).reshape(-1)  # lpips takes [-1, 1] inputs


def _random_dists_weights() -> Dict[str, torch.Tensor]:
    """Uniform DISTS alpha/beta (each 1 x 1475 x 1 x 1) summing to 1, for random-trunk tests."""
    channels = 3 + 64 + 128 + 256 + 512 + 512
    uniform = torch.full((1, channels, 1, 1), 1.0 / (2 * channels))
    return {"alpha": uniform.clone(), "beta": uniform.clone()}


def build_piq_dists(pretrained: bool) -> nn.Module:
    """piq's own ``DISTS(reduction='none')`` module, fed only local weights.

    piq's constructor fetches the VGG16 trunk and the alpha/beta file by URL. While it runs (and
    only then) its two fetch points are redirected to local sources: the VGG16 builder to
    :func:`trunk_features` (loaded from the checked cache file, or left random), the URL loader to the checked ``dists_weights.pt`` (or uniform alpha/beta). Any
    other URL raises, so nothing can download.
    """
    import piq
    import piq.perceptual

    paths = check_cached_weights(["dists"]) if pretrained else {}
    dists_url = _dists_weights_url()

    local_vgg16 = _local_builder("vgg", paths.get(cache_file_name(TRUNK_URLS["vgg"])))

    def local_weights(url, *args, **kwargs):
        if url != dists_url:
            raise RuntimeError(f"piq asked for {url}; this plugin never downloads weights")
        return _load_weights_file(paths[cache_file_name(url)]) if pretrained else _random_dists_weights()

    with ExitStack() as stack:
        stack.enter_context(mock.patch.object(piq.perceptual, "vgg16", local_vgg16))
        stack.enter_context(mock.patch.object(torch.hub, "load_state_dict_from_url", local_weights))
        metric = piq.DISTS(reduction="none")
    return metric


class DISTSScorer(nn.Module):
    """piq's DISTS distance (``1 - DISTS similarity``), in [0, 1]; VGG16 trunk, [0,1] inputs."""

    def __init__(self, pretrained: bool = True):
        super().__init__()
        self.name = "dists"
        self.pretrained = bool(pretrained)
        self.metric = build_piq_dists(self.pretrained).eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, x_synth: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        to_unit = lambda t: ((t + 1) / 2).clamp(0, 1)  # noqa: E731  [-1,1] -> [0,1]
        return self.metric(to_unit(x), to_unit(x_synth)).reshape(-1)


def build_iqa_scorer(name: str, iqa_cfg: Mapping) -> nn.Module:
    """One IQA scorer ('lpips' or 'dists') from the ``iqa`` config section."""
    pretrained = bool(iqa_cfg.get("pretrained", True))
    if name == "lpips":
        return LPIPSScorer(trunk=iqa_cfg.get("lpips_trunk", "vgg"), pretrained=pretrained)
    if name == "dists":
        return DISTSScorer(pretrained=pretrained)
    raise ConfigError(f"unknown IQA scorer '{name}'; valid: {', '.join(IQA_SCORERS)}")
