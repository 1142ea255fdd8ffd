"""What a trained MOODCAT actually uses: measurements for the ablation tables (issue 8).

All on in-distribution validation images with their TRUE labels, fixed masks and fixed wrong
labels (seeded), so variants are compared on the same pairs:

* :func:`pair_accuracy` -- Cb's binary accuracy on one matched pair ``(x, G(M(x), y), y)`` and
  one mismatched pair ``(x, G(M(x), y'), y')`` per image (logit > 0 = mismatch). With
  ``shuffle_synthesis`` every image is paired with ANOTHER image's synthesis, drawn from the whole
  set by a seeded derangement (labels kept): if the accuracy hardly drops, Cb judges (x, y) and
  ignores x'. (Until issue 27 the batch was rolled by one; OpenOOD's ID val lists are sorted by
  class, so 99 % of the partners had the image's own class and a Cb comparing x with a class-typical
  x' could not be caught: the positive control in tests/test_moodcat_variants.py fails with it.)
* :func:`label_effect` -- how much the label changes the synthesis: mean squared difference
  between syntheses of one masked image under its label and under a wrong label, relative to
  the reconstruction error of the matched synthesis (MSE(x', x)). Near 0: the generator
  ignores the label.
* :func:`shuffle_drop` (issue 27) -- validation AUROC of a score with x' as synthesised and with
  every image's x' replaced by the synthesis of ANOTHER image of the same set (a derangement).
  A score that compares x with its own x' loses AUROC; one that reads (x, y) alone, or x' alone
  (the set's syntheses are the same, only their pairing changes), keeps it. A row counts as
  re-synthesis only with a drop of at least ``SHUFFLE_DROP_MIN`` AUROC points (tests hold a
  positive and two negative controls).

Images are in [-1, 1] throughout (loader batches are converted with the benchmark mean/std).
"""
from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from moodcat_plugin.moodcat.images import to_signed_unit
from moodcat_plugin.moodcat.masking import TEST_AREA, apply_mask

DIAGNOSTIC_SEED = 4321
CB_BATCH = 256
SHUFFLE_DROP_MIN = 5.0  # AUROC points: below this a row does not count as re-synthesis (issue 27)


def derangement(count: int, seed: int) -> torch.Tensor:
    """Indices ``source`` ``[count]`` (int64) with ``source[i] != i``: image i takes item source[i]
    of ANOTHER image, partners drawn uniformly over the whole set (seeded); needs count >= 2."""
    if count < 2:
        raise ValueError("a derangement needs at least two items")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    source = torch.empty_like(order)
    source[order] = order.roll(1)  # image order[i] takes the item of order[i-1]: never its own
    return source


def mismatched_labels(labels: torch.Tensor, num_classes: int,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Labels ``y'`` ``[B]`` uniform over the classes != ``labels``; uniform over all classes
    where a label is negative (unknown). Requires ``num_classes >= 2``."""
    if num_classes < 2:
        raise ValueError("mismatched labels need at least two classes")
    device = labels.device
    draw_device = generator.device if generator is not None else device
    shift = torch.randint(1, num_classes, labels.shape, generator=generator, device=draw_device).to(device)
    any_class = torch.randint(0, num_classes, labels.shape, generator=generator, device=draw_device).to(device)
    return torch.where(labels >= 0, (labels + shift) % num_classes, any_class)


def matched_and_mismatched(gan, x: torch.Tensor, y: torch.Tensor, num_classes: int, mask_style: str,
                           area: Sequence[float], use_ema: bool = False,
                           generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, ...]:
    """(wrong labels ``[B]``, synthesis under y, synthesis under y') of x ``[B,3,H,W]`` in
    [-1,1], both from the SAME masked image."""
    wrong = mismatched_labels(y, num_classes, generator)
    masked = apply_mask(x, mask_style, area=tuple(area), generator=generator)
    both = gan.synthesize_from_masked(torch.cat([masked, masked]), torch.cat([y, wrong]), use_ema=use_ema)
    return wrong, both[: len(x)], both[len(x):]


def _batches(loader, mean, std, device):
    for batch in loader:
        yield to_signed_unit(batch["data"].to(device), mean, std), batch["label"].to(device)


@torch.no_grad()
def pair_accuracy(cb, gan, loader, mean, std, num_classes: int, mask_style: str = "random_rectangle",
                  area: Sequence[float] = TEST_AREA, shuffle_synthesis: bool = False, use_ema: bool = False,
                  device: torch.device | str = "cpu") -> float:
    """Binary accuracy of ``cb`` in [0, 1] over matched + mismatched pairs (see module doc)."""
    generator = torch.Generator().manual_seed(DIAGNOSTIC_SEED)
    batches = []
    for x, y in _batches(loader, mean, std, device):
        wrong, matched, mismatched = matched_and_mismatched(gan, x, y, num_classes, mask_style, area, use_ema,
                                                            generator)
        batches.append((x, y, wrong, matched, mismatched))
    x, y, wrong, matched, mismatched = (torch.cat(parts) for parts in zip(*batches))
    if shuffle_synthesis:
        source = derangement(len(x), DIAGNOSTIC_SEED).to(x.device)
        matched, mismatched = matched[source], mismatched[source]
    was_training = cb.training
    cb.eval()
    correct = 0
    for start in range(0, len(x), CB_BATCH):
        part = slice(start, start + CB_BATCH)
        correct += int((cb(x[part], matched[part], y[part]) < 0).sum())
        correct += int((cb(x[part], mismatched[part], wrong[part]) > 0).sum())
    cb.train(was_training)
    return correct / max(1, 2 * len(x))


@torch.no_grad()
def label_effect(gan, loader, mean, std, num_classes: int, mask_style: str = "random_rectangle",
                 area: Sequence[float] = TEST_AREA, use_ema: bool = False,
                 device: torch.device | str = "cpu") -> Dict[str, float]:
    """``{'label_mse', 'recon_mse', 'ratio'}``: MSE(G(M(x), y), G(M(x), y')) against
    MSE(G(M(x), y), x), means over pixels and images; ratio = label_mse / recon_mse."""
    generator = torch.Generator().manual_seed(DIAGNOSTIC_SEED)
    label_sum = recon_sum = 0.0
    count = 0
    for x, y in _batches(loader, mean, std, device):
        _, matched, mismatched = matched_and_mismatched(gan, x, y, num_classes, mask_style, area, use_ema,
                                                        generator)
        label_sum += float((matched - mismatched).pow(2).mean(dim=(1, 2, 3)).sum())
        recon_sum += float((matched - x).pow(2).mean(dim=(1, 2, 3)).sum())
        count += len(y)
    label_mse, recon_mse = label_sum / max(1, count), recon_sum / max(1, count)
    return {"label_mse": label_mse, "recon_mse": recon_mse, "ratio": label_mse / max(recon_mse, 1e-12)}


def auroc_percent(id_distance, ood_distance) -> float:
    """AUROC in percent of OOD against ID, distances HIGH = OOD (ties count one half)."""
    id_distance, ood_distance = np.asarray(id_distance, np.float64), np.asarray(ood_distance, np.float64)
    is_ood = np.concatenate([np.zeros(len(id_distance)), np.ones(len(ood_distance))])
    return 100.0 * float(roc_auc_score(is_ood, np.concatenate([id_distance, ood_distance])))


def shuffle_drop(score: Callable, id_items, ood_items: Mapping[str, object],
                 shuffle: Callable, seed: int = DIAGNOSTIC_SEED) -> Dict[str, float]:
    """Does ``score`` read each image's own synthesis? (module doc)

    ``score(items) -> [N]`` distance (high = OOD) of one set's items (e.g. a re-synthesis readout);
    ``shuffle(items, seed) -> items`` gives every image another image's synthesis. ``ood_items``:
    OOD-val sets by name; AUROC (percent) is the mean over them. Returns ``{'auroc',
    'auroc_shuffled', 'drop', 'reads_synthesis', 'parts'}`` (drop = auroc - auroc_shuffled;
    reads_synthesis 1.0 when drop >= SHUFFLE_DROP_MIN else 0.0; parts: unshuffled AUROC per OOD set)."""
    def aurocs(transform) -> Dict[str, float]:
        id_distance = score(transform(id_items, seed))
        return {name: auroc_percent(id_distance, score(transform(items, seed + 1 + i)))
                for i, (name, items) in enumerate(ood_items.items())}

    parts = aurocs(lambda items, _: items)
    plain = float(np.mean(list(parts.values())))
    shuffled = float(np.mean(list(aurocs(shuffle).values())))
    drop = plain - shuffled
    return {"auroc": plain, "auroc_shuffled": shuffled, "drop": drop,
            "reads_synthesis": float(drop >= SHUFFLE_DROP_MIN), "parts": parts}


@torch.no_grad()
def _read_pairs(post, net, loader) -> Dict[str, torch.Tensor]:
    """x ``[N,3,H,W]``, its K syntheses ``[N,K,3,H,W]`` (the method's mask style and area, drawn
    from ``DIAGNOSTIC_SEED``), the predicted labels and the logits, for every image of ``loader``.
    The method's own generator state is left as it was."""
    state = post.generator.get_state()
    post.generator.manual_seed(DIAGNOSTIC_SEED)
    try:
        return _read_pairs_seeded(post, net, loader)
    finally:
        post.generator.set_state(state)


def _read_pairs_seeded(post, net, loader) -> Dict[str, torch.Tensor]:
    parts: Dict[str, list] = {"x": [], "synth": [], "label": [], "logits": []}
    for batch in loader:
        data = batch["data"].to(post.device)
        logits = net(data)
        pred = logits.argmax(dim=1)
        x = to_signed_unit(data, post.mean, post.std)
        parts["x"].append(x)
        parts["synth"].append(torch.stack([post.synthesize(x, pred)[1] for _ in range(post.num_masks)], dim=1))
        parts["label"].append(pred)
        parts["logits"].append(logits)
    return {key: torch.cat(values) for key, values in parts.items()}


@torch.no_grad()
def _fused_distance(post, items: Dict[str, torch.Tensor]) -> torch.Tensor:
    """The method's fused score as a distance ``[N]`` (-conf, high = OOD) of read pairs."""
    from moodcat_plugin.moodcat.scorers import logit_distance

    distances: Dict[str, list] = {}
    for start in range(0, len(items["x"]), CB_BATCH):
        x, synth = items["x"][start:start + CB_BATCH], items["synth"][start:start + CB_BATCH]
        label, logits = items["label"][start:start + CB_BATCH], items["logits"][start:start + CB_BATCH]
        for name in post.scorer_names:
            if name in post.scorer_modules:
                scorer = post.scorer_modules[name]
                value = torch.stack([scorer(x, synth[:, k], label).float() for k in range(synth.shape[1])]).mean(0)
            else:
                value = logit_distance(name, logits)
            distances.setdefault(name, []).append(value.cpu())
    return -post.fusion.transform({name: torch.cat(values) for name, values in distances.items()})


def method_shuffle_drop(post, net, id_loader, ood_loaders: Mapping[str, object]) -> Dict[str, float]:
    """:func:`shuffle_drop` of a set-up MOODCAT postprocessor (its scorers, fusion and mask style,
    labels = the classifier's predictions) on ID val against the OOD-val loaders by name."""
    def shuffle(items, seed):
        return {**items, "synth": items["synth"][derangement(len(items["x"]), seed).to(items["synth"].device)]}

    return shuffle_drop(lambda items: _fused_distance(post, items), _read_pairs(post, net, id_loader),
                        {name: _read_pairs(post, net, loader) for name, loader in ood_loaders.items()}, shuffle)
