"""Maximum Classifier Discrepancy (Yu & Aizawa, ICCV 2019), registered as trainer ``mcd``.

Not Monte-Carlo dropout. The network (``resnet18_32x32_mcd``) has two heads on one backbone.
Every step trains both heads with cross-entropy on ID data. During the last
``discrepancy_fraction`` of the epochs (reference: 0.1, i.e. epochs 91-100 of 100; OpenOOD's
``start_epoch_ft: 90``) the step also takes an outlier batch, in one concatenated forward, and adds::

    lambda_mcd * ReLU(margin - mean_outliers(H(p1) - H(p2)))

with H the entropy over classes (nats, in [0, log C]) of each head's softmax, lambda 1, margin
1.2. The signed difference follows the paper and OpenOOD: head 1 is pushed to be uncertain on
outliers and head 2 confident, so the heads disagree there while agreeing on ID data; the
postprocessor ``mcd`` scores that disagreement. (OpenOOD's code takes the softmax and entropy
over the batch axis and drops the ReLU by accident; we use the per-sample class entropy and the
hinge as the paper writes them.)
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from moodcat_plugin.registry import register_trainer
from moodcat_plugin.schema import number
from moodcat_plugin.trainers.base_trainer import batch_to
from moodcat_plugin.trainers.oe_trainer import OutlierTrainerBase, OutlierTrainerConfig


def class_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over classes: (B, C) -> (B,) in [0, log C] nats."""
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def discrepancy_loss(logits1: torch.Tensor, logits2: torch.Tensor, margin: float) -> torch.Tensor:
    """Hinge ReLU(margin - mean(H(p1) - H(p2))) on outlier logits (B, C) x 2 -> scalar >= 0."""
    return F.relu(margin - (class_entropy(logits1) - class_entropy(logits2)).mean())


def first_discrepancy_epoch(num_epochs: int, fraction: float) -> int:
    """1-based epoch from which the discrepancy term is on: the last ceil(fraction * E) epochs
    (at least one when fraction > 0). 100 epochs, 0.1 -> 91; 2 epochs, 0.1 -> 2."""
    if fraction <= 0:
        return num_epochs + 1
    last = max(1, math.ceil(fraction * num_epochs - 1e-9))
    return num_epochs - min(last, num_epochs) + 1


class MCDConfig(OutlierTrainerConfig):
    lambda_mcd: number(ge=0) = 1.0
    margin: number(ge=0) = 1.2
    discrepancy_fraction: number(ge=0, le=1) = 0.1


@register_trainer("mcd")
class MCDTrainer(OutlierTrainerBase):
    """CE on both heads for ID data; the discrepancy hinge on outliers in the last epochs.

    config.trainer: classifier recipe plus ``lambda_mcd`` (1.0), ``margin`` (1.2) and
    ``discrepancy_fraction`` (0.1). Metrics: ``loss``, ``loss_id`` (sum of both heads' CE),
    ``loss_discrepancy`` (hinge, 0 before the outlier epochs), ``entropy_gap`` (mean
    H(p1) - H(p2) on outliers; only in the outlier epochs, so history.json stays valid JSON).
    """

    config_schema = MCDConfig

    def __init__(self, net, train_loader, train_unlabeled_loader, config):
        super().__init__(net, train_loader, train_unlabeled_loader, config)
        trainer_cfg = config.trainer
        self.lambda_mcd = float(trainer_cfg.get("lambda_mcd", 1.0))
        self.margin = float(trainer_cfg.get("margin", 1.2))
        self.start_epoch = first_discrepancy_epoch(self.num_epochs, float(trainer_cfg.get("discrepancy_fraction", 0.1)))

    def uses_outliers_in(self, epoch_idx: int) -> bool:
        return epoch_idx >= self.start_epoch

    def train_epoch(self, epoch_idx: int):
        self.net.train()
        with_outliers = self.uses_outliers_in(epoch_idx)
        self.outliers.start_pass(epoch_idx - 1)
        sums = {"loss": 0.0, "loss_id": 0.0, "loss_discrepancy": 0.0, "entropy_gap": 0.0}
        seen = 0
        for batch in self.progress(self.train_loader, f"epoch {epoch_idx}"):
            data, labels = batch_to(batch, self.device)
            n_id = len(data)
            if with_outliers:
                outlier_data = self.outliers.next()["data"].to(self.device, non_blocking=True)
                data = torch.cat([data, outlier_data])
            logits1, logits2 = self.net(data, return_double=True)
            loss_id = F.cross_entropy(logits1[:n_id], labels) + F.cross_entropy(logits2[:n_id], labels)
            loss = loss_id
            if with_outliers:
                loss_disc = discrepancy_loss(logits1[n_id:], logits2[n_id:], self.margin)
                loss = loss + self.lambda_mcd * loss_disc
                sums["loss_discrepancy"] += loss_disc.item() * n_id
                with torch.no_grad():
                    gap = (class_entropy(logits1[n_id:]) - class_entropy(logits2[n_id:])).mean()
                sums["entropy_gap"] += gap.item() * n_id
            self.step(loss)
            sums["loss"] += loss.item() * n_id
            sums["loss_id"] += loss_id.item() * n_id
            seen += n_id
        metrics = {k: v / max(1, seen) for k, v in sums.items()}
        if not with_outliers:
            del metrics["entropy_gap"]  # not measured
        return self.net, {"epoch_idx": epoch_idx, **metrics}
