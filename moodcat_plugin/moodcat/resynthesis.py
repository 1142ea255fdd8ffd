"""Re-synthesis read in the classifier's own space: training-free scores (issue 27).

DiffGuard (Gao et al., ICCV 2023) and DiffNB (arXiv 2211.11255) train no comparator: they score
a fixed distance between the protected classifier's outputs on ``x`` and on its class-conditional
synthesis ``x'``. This module runs the generator ONCE per image and mask and keeps what every such
score needs (:func:`read_synthesis`); each scored variant is then a cheap function of that readout
(:func:`variant_distance`), and so is its shuffle diagnostic (x' of another image,
:func:`moodcat_plugin.moodcat.diagnostics.shuffle_drop`).

Readout of a batch of ``B`` images, ``K`` masks, ``A <= K`` of them also under a second label
(dict of float32 tensors, image axis first):

* ``logits`` ``[B,C]``, ``feature`` ``[B,D]`` -- classifier on x (D = pooled penultimate feature);
* ``synth_logits`` ``[B,K,C]``, ``synth_feature`` ``[B,K,D]`` -- on x'_k = G(M_k(x), y), y = argmax;
* ``alt_logits`` ``[B,A,C]``, ``alt_feature`` ``[B,A,D]`` -- on G(M_k(x), y2) for the first A masks,
  y2 = the classifier's runner-up class, from the SAME masked image, hence the same latent z = mu;
* ``label_mse`` / ``recon_mse`` ``[B,A]`` -- pixel MSE(x'_k, alt_k) and MSE(x'_k, x) (label effect).

Masks (``masks``): ``random`` = the paper's random rectangles (``test_area``); ``cam`` =
rectangles of the same sizes centred by the class activation map of the prediction
(:func:`class_activation_map`, :func:`~moodcat_plugin.moodcat.masking.heatmap_rectangle_mask`).

Variant switches (a variant = a row of ``configs/ablations/resynthesis.yml``):

* ``distance``: ``logit_l1`` (DiffGuard: sum |logits(x) - logits(x')|) or ``feature_l1`` (DiffNB:
  L1 between L2-normalised penultimate features), both >= 0;
* ``reference``: ``input`` (distance x to x', averaged over the first ``num_masks`` masks),
  ``runner_up`` (DiffGuard's differencing with the runner-up label instead of an unconditional
  synthesis: mean_k d(x'_k, alt_k), high = OOD) or ``runner_up_relative`` (mean_k d(x, x'_k)
  divided by mean_k d(x'_k, alt_k): the reconstruction distance in units of the label's own effect);
* ``fuse``: ``ebo`` fuses the distance with EBO's free energy by
  :class:`~moodcat_plugin.moodcat.fusion.CascadeFusion` fitted on ID val (a logit score: such a
  row is never counted as a standalone re-synthesis result).

Where we differ from DiffGuard: a GAN completes a masked rectangle instead of a diffusion model
re-generating the whole image; its runner-up label stands in for the unconditional synthesis (our
generator has no null class); class activation maps (equal to Grad-CAM up to a positive factor for
a global-average-pooled linear head) choose where to mask rather than where guidance acts.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

from moodcat_plugin.moodcat.diagnostics import derangement
from moodcat_plugin.moodcat.images import from_signed_unit, to_signed_unit
from moodcat_plugin.moodcat.masking import TEST_AREA, apply_mask, heatmap_rectangle_mask
from moodcat_plugin.moodcat.scorers import feature_l1, logit_distance, logit_l1

MASK_FAMILIES = ("random", "cam")
SYNTHESIS_KEYS = ("synth_logits", "synth_feature", "alt_logits", "alt_feature", "label_mse", "recon_mse")
EPS = 1e-8

Readout = Dict[str, torch.Tensor]
DISTANCES: Dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {}
REFERENCES: Dict[str, Callable[..., torch.Tensor]] = {}


def distance(name: str):
    """Register ``fn(a [...,E], b [...,E]) -> [...]`` under ``name``."""
    def register(fn):
        DISTANCES[name] = fn
        return fn
    return register


def reference(name: str):
    """Register ``fn(readout, space, dist, num_masks) -> [B]`` (high = OOD) under ``name``."""
    def register(fn):
        REFERENCES[name] = fn
        return fn
    return register


distance("logit_l1")(logit_l1)
distance("feature_l1")(feature_l1)


def _space(distance_name: str) -> str:
    return "logits" if distance_name == "logit_l1" else "feature"


@reference("input")
def against_input(readout: Readout, space: str, dist, num_masks: int) -> torch.Tensor:
    """mean_k d(x, x'_k) over the first ``num_masks`` masks."""
    own = readout[space][:, None]
    return dist(own, readout[f"synth_{space}"][:, :num_masks]).mean(1)


@reference("runner_up")
def against_runner_up(readout: Readout, space: str, dist, num_masks: int) -> torch.Tensor:
    """mean_k d(x'_k, alt_k): how far the synthesis under the prediction is from the one under
    the runner-up label, same latent (DiffGuard's conditional-vs-unconditional difference)."""
    count = min(num_masks, readout[f"alt_{space}"].shape[1])
    return dist(readout[f"synth_{space}"][:, :count], readout[f"alt_{space}"][:, :count]).mean(1)


@reference("runner_up_relative")
def relative_to_runner_up(readout: Readout, space: str, dist, num_masks: int) -> torch.Tensor:
    """mean_k d(x, x'_k) / mean_k d(x'_k, alt_k) (same masks): distance to x in units of what the
    label alone changes, which cancels the generator's plain reconstruction error."""
    count = min(num_masks, readout[f"alt_{space}"].shape[1])
    return against_input(readout, space, dist, count) / (against_runner_up(readout, space, dist, count) + EPS)


def variant_distance(readout: Readout, distance_name: str, reference_name: str, num_masks: int) -> torch.Tensor:
    """Distance ``[B]`` (high = OOD) of one variant from a readout (see module doc)."""
    if distance_name not in DISTANCES:
        raise ValueError(f"unknown distance '{distance_name}'; valid: {', '.join(DISTANCES)}")
    if reference_name not in REFERENCES:
        raise ValueError(f"unknown reference '{reference_name}'; valid: {', '.join(REFERENCES)}")
    available = readout["synth_logits"].shape[1]
    if not 1 <= num_masks <= available:
        raise ValueError(f"num_masks {num_masks} outside 1..{available} (the masks read per image)")
    return REFERENCES[reference_name](readout, _space(distance_name), DISTANCES[distance_name], num_masks)


def ebo_distance(readout: Readout) -> torch.Tensor:
    """EBO's free energy ``-logsumexp(logits(x))`` ``[B]`` (high = OOD), for the fusion rows."""
    return logit_distance("ebo", readout["logits"])


@torch.no_grad()
def class_activation_map(net, data: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CAM ``[B,h,w]`` >= 0 of ``labels`` for a ResNet18_32x32-style ``net`` (``layer4`` before a
    global average pool and the linear ``fc``): relu(sum_c w[label, c] A_c). For such a head
    Grad-CAM's channel weights are w[label] / (h w), so this is Grad-CAM up to a positive factor."""
    maps = net.layer4(net.features(data)[-2])
    weights = net.fc.weight[labels]  # [B, channels]
    return torch.einsum("bchw,bc->bhw", maps, weights).clamp_min(0)


def _classify(net, images: torch.Tensor, mean, std) -> Tuple[torch.Tensor, torch.Tensor]:
    """(logits [N,C], pooled feature [N,D]) of images in [-1,1]."""
    logits, feature = net(from_signed_unit(images, mean, std), return_feature=True)
    return logits.float(), feature.float()


@torch.no_grad()
def read_synthesis(gan, net, data: torch.Tensor, mean: Sequence[float], std: Sequence[float], masks: str = "random",
                   num_masks: int = 8, num_alt: int = 4, area: Tuple[float, float] = TEST_AREA,
                   generator: Optional[torch.Generator] = None) -> Readout:
    """Readout (module doc) of ``data`` ``[B,3,H,W]`` normalised with mean/std; ``masks`` in
    MASK_FAMILIES; ``num_alt <= num_masks`` masks are also synthesised under the runner-up label."""
    if masks not in MASK_FAMILIES:
        raise ValueError(f"unknown mask family '{masks}'; valid: {', '.join(MASK_FAMILIES)}")
    if not 0 <= num_alt <= num_masks:
        raise ValueError("need 0 <= num_alt <= num_masks")
    x = to_signed_unit(data, mean, std)
    logits, feature = net(data, return_feature=True)
    top2 = logits.topk(2, dim=1).indices
    pred, runner_up = top2[:, 0], top2[:, 1]
    heatmap = class_activation_map(net, data, pred) if masks == "cam" else None
    out: Dict[str, list] = {key: [] for key in SYNTHESIS_KEYS}
    for k in range(num_masks):
        masked = (heatmap_rectangle_mask(x, heatmap, area=area, generator=generator) if heatmap is not None
                  else apply_mask(x, "random_rectangle", area=area, generator=generator))
        with_alt = k < num_alt
        labels = torch.cat([pred, runner_up]) if with_alt else pred
        synth = gan.synthesize_from_masked(torch.cat([masked, masked]) if with_alt else masked, labels)
        synth_logits, synth_feature = _classify(net, synth, mean, std)
        out["synth_logits"].append(synth_logits[: len(x)])
        out["synth_feature"].append(synth_feature[: len(x)])
        if with_alt:
            own, alt = synth[: len(x)], synth[len(x):]
            out["alt_logits"].append(synth_logits[len(x):])
            out["alt_feature"].append(synth_feature[len(x):])
            out["label_mse"].append((own - alt).pow(2).mean(dim=(1, 2, 3)))
            out["recon_mse"].append((own - x).pow(2).mean(dim=(1, 2, 3)))
    readout = {"logits": logits.float(), "feature": feature.float()}
    for key, values in out.items():
        readout[key] = torch.stack(values, dim=1) if values else torch.zeros(len(x), 0)
    return readout


def concat_readouts(parts: Sequence[Readout]) -> Readout:
    """Readouts of consecutive batches joined along the image axis."""
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


def shuffled_synthesis(readout: Readout, seed: int = 0) -> Readout:
    """The readout with every image's synthesis entries (SYNTHESIS_KEYS) replaced by those of
    ANOTHER image of the same set: a seeded derangement (no image keeps its own), x entries kept."""
    source = derangement(len(readout["logits"]), seed)
    return {key: value[source] if key in SYNTHESIS_KEYS else value for key, value in readout.items()}


def label_effect_of(readout: Readout) -> float:
    """Mean MSE(x', alt) / mean MSE(x', x) over images and masks (pixels, [-1,1] images)."""
    return float(readout["label_mse"].mean() / (readout["recon_mse"].mean() + EPS))


def agreement_of(readout: Readout) -> float:
    """Share in [0, 1] of (image, mask) pairs whose synthesis the classifier gives the label it gave
    x: pred(x'_k) = pred(x). DiffGuard's premise (a label-faithful synthesis) measured without OOD data."""
    pred = readout["logits"].argmax(1)
    return float((readout["synth_logits"].argmax(2) == pred[:, None]).float().mean())
