"""Which label MOODCAT synthesises under: the deployable protocol and the authors' protocol.

One trained MOODCAT scored three ways (Cb distance; the masks are the same in every protocol):

* ``deployable`` -- every input under the label the classifier PREDICTS for it. No labels needed:
  what a deployed detector can do, and what every leaderboard of this project reports.
* ``authors`` -- ID test images under their TRUE label, OOD images under a uniformly RANDOM label:
  the authors' public evaluation. It needs test labels and turns OOD detection into detecting a
  label mismatch, which is exactly Cb's training task; not comparable with the leaderboard.
* ``true_id`` -- ID test images under their TRUE label, OOD images under the PREDICTED label:
  separates the two changes of the authors' protocol.

Never used in the leaderboard: only :func:`protocol_table` (``scripts/moodcat_protocols.py``).
"""
from __future__ import annotations

from typing import Dict, Mapping

import numpy as np
import torch

from moodcat_plugin.evaluation.metrics import ood_metrics
from moodcat_plugin.moodcat.mask_stream import image_seed

PROTOCOLS = {
    "deployable": "ID and OOD: label predicted by the classifier (no labels needed; the leaderboard's protocol)",
    "authors": "ID: TRUE test label; OOD: uniformly RANDOM label (the authors' public evaluation; needs test labels)",
    "true_id": "ID: TRUE test label; OOD: label predicted by the classifier (needs ID test labels)",
}
RANDOM_LABEL_SEED = 7


def label_generator(seed: int, set_name: str) -> torch.Generator:
    """The generator of a set's random labels (authors' protocol): seeded from (seed, set name)."""
    return torch.Generator().manual_seed(image_seed(seed + RANDOM_LABEL_SEED, set_name, 0))


def condition_labels(protocol: str, predicted: torch.Tensor, true: torch.Tensor, is_id: bool, num_classes: int,
                     generator: torch.Generator) -> torch.Tensor:
    """Labels (B,) to synthesise under for one batch of one protocol."""
    if protocol == "deployable" or (protocol == "true_id" and not is_id):
        return predicted
    if is_id:
        return true
    if protocol == "authors":
        return torch.randint(0, num_classes, predicted.shape, generator=generator).to(predicted.device)
    raise ValueError(f"unknown protocol '{protocol}'; known: {', '.join(PROTOCOLS)}")


@torch.no_grad()
def cb_distances(postprocessor, net, loader, protocol: str, is_id: bool, num_classes: int) -> np.ndarray:
    """Cb distances (N,) of every image of ``loader`` under ``protocol``; masks and random labels
    drawn per set (the same masks in every protocol)."""
    postprocessor.start_set(loader.name, is_id)
    labels_generator = postprocessor.random_labels
    out = []
    for batch in loader:
        data = batch["data"].to(postprocessor.device)
        logits = net(data)
        labels = condition_labels(protocol, logits.argmax(dim=1), batch["label"].to(data.device), is_id, num_classes,
                                  labels_generator)
        out.append(postprocessor.distances_given(data, labels, logits)["cb"].cpu())
    return torch.cat(out).numpy()


def protocol_table(postprocessor, net, id_test_loader, ood_loaders: Mapping[str, Mapping[str, object]],
                   num_classes: int) -> Dict[str, dict]:
    """``{protocol: {set: metrics, 'near mean': {...}, 'far mean': {...}}}`` for Cb's distance
    (conf = -distance); ``ood_loaders`` is ``{'near': {name: loader}, 'far': {...}}``."""
    table = {}
    for protocol in PROTOCOLS:
        id_conf = -cb_distances(postprocessor, net, id_test_loader, protocol, True, num_classes)
        row = {}
        for group, loaders in ood_loaders.items():
            metrics = []
            for name, loader in loaders.items():
                row[name] = ood_metrics(id_conf, -cb_distances(postprocessor, net, loader, protocol, False, num_classes))
                row[name]["group"] = group
                metrics.append(row[name])
            if metrics:
                row[f"{group} mean"] = {key: float(np.mean([m[key] for m in metrics]))
                                        for key in ("AUROC", "FPR@95_ood_positive", "FPR@95_id_positive")}
        table[protocol] = row
    return table


def render_protocol_table(table: Dict[str, dict], benchmark: str, note: str = "") -> str:
    """Markdown: AUROC and FPR@95 (OOD positive) per set and group mean, one row per protocol."""
    first = next(iter(table.values()))
    sets = [k for k, v in first.items() if "group" in v]
    groups = [k for k in first if k.endswith(" mean")]
    lines = [f"# MOODCAT protocol table: {benchmark} (Cb distance of ONE trained MOODCAT)", "",
             "NOT a leaderboard: protocols other than `deployable` use test labels. What each one conditions on:", ""]
    lines += [f"- **{name}**: {text}" for name, text in PROTOCOLS.items()]
    lines += ["", note, ""] if note else [""]
    for metric, title in (("AUROC", "AUROC"), ("FPR@95_ood_positive", "FPR@95 (OOD positive, OpenOOD)")):
        lines += [f"## {title}", "", "| protocol | " + " | ".join(sets + groups) + " |", "|---" * (1 + len(sets + groups)) + "|"]
        for protocol, row in table.items():
            lines.append(f"| {protocol} | " + " | ".join(f"{100 * row[c][metric]:.2f}" for c in sets + groups) + " |")
        lines.append("")
    return "\n".join(lines)
