"""Outlier Exposure (Hendrycks et al., ICLR 2019), registered as trainer ``oe``.

Each step takes an ID batch (B_in images) and an outlier batch (B_out images), runs ONE forward
over their concatenation, and minimises::

    CE(logits_id, labels) + lambda_oe * CE(logits_outlier, uniform)

where CE to the uniform distribution is ``mean_c(-log softmax(z)_c) = logsumexp(z) - mean_c(z)``
(>= log C, equal when the outlier logits are all equal). The outlier stream starts a new pass each epoch
(pass = epoch - 1) and is cycled when it runs out before the ID loader. Reference values (OpenOOD): lambda_oe 0.5,
outlier batch 256 next to an ID batch of 128. Evaluated with MSP (``configs/postprocessors/oe.yml``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from moodcat_plugin.registry import register_trainer
from moodcat_plugin.schema import integer, number
from moodcat_plugin.trainers.base_trainer import BaseTrainer, SGDConfig, batch_to, endless, sgd_with_cosine


class OutlierTrainerConfig(SGDConfig):
    """The classifier recipe plus the outlier batch size (absent: the ID batch size)."""

    outlier_batch_size: integer(ge=1) = None


class OEConfig(OutlierTrainerConfig):
    lambda_oe: number(ge=0) = 0.5


def uniform_cross_entropy(logits: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the batch of (weight x) CE(softmax(logits), uniform); logits (B, C), weights (B,)
    or None (all 1) -> scalar, >= log C when unweighted.

    An empty batch gives 0 (so a step whose batch holds no sample to push adds nothing).
    """
    if logits.numel() == 0:
        return logits.sum()
    per_sample = torch.logsumexp(logits, dim=1) - logits.mean(dim=1)
    if weights is not None:
        per_sample = per_sample * weights
    return per_sample.mean()


class OutlierTrainerBase(BaseTrainer):
    """Plumbing shared by the trainers that see outlier data: loaders, SGD + cosine, device."""

    uses_outlier_data = True
    config_schema = OutlierTrainerConfig

    def __init__(self, net, train_loader, train_unlabeled_loader, config):
        super().__init__(net, train_loader, config)
        self.train_unlabeled_loader = train_unlabeled_loader
        self.outliers = endless(train_unlabeled_loader)
        total = self.num_epochs * self.steps_per_epoch()
        self.optimizer, self.scheduler = sgd_with_cosine(net.parameters(), config.trainer, total)

    def optimizers(self) -> dict:
        return {"optimizer": self.optimizer, "scheduler": self.scheduler}

    def data_streams(self) -> dict:
        return {"train": self.train_loader, "outliers": self.outliers}

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()


@register_trainer("oe")
class OETrainer(OutlierTrainerBase):
    """Cross-entropy on ID data + ``lambda_oe`` x uniform cross-entropy on outliers.

    config.trainer: the classifier recipe (lr, momentum, ...) plus ``lambda_oe`` (default 0.5).
    Metrics per epoch: ``loss`` (total), ``loss_id`` and ``loss_oe`` (unweighted), sample means.
    """

    config_schema = OEConfig

    def __init__(self, net, train_loader, train_unlabeled_loader, config):
        super().__init__(net, train_loader, train_unlabeled_loader, config)
        self.lambda_oe = float(config.trainer.get("lambda_oe", 0.5))

    def losses(self, data: torch.Tensor, labels: torch.Tensor, outlier_data: torch.Tensor):
        """(loss_id, loss_oe) from one forward over ID (B_in) + outlier (B_out) images."""
        logits = self.net(torch.cat([data, outlier_data]))
        n_id = len(data)
        return F.cross_entropy(logits[:n_id], labels), uniform_cross_entropy(logits[n_id:])

    def train_epoch(self, epoch_idx: int):
        self.net.train()
        self.outliers.start_pass(epoch_idx - 1)
        sums = {"loss": 0.0, "loss_id": 0.0, "loss_oe": 0.0}
        seen = 0
        for batch in self.progress(self.train_loader, f"epoch {epoch_idx}"):
            data, labels = batch_to(batch, self.device)
            outlier_data = self.outliers.next()["data"].to(self.device, non_blocking=True)
            loss_id, loss_oe = self.losses(data, labels, outlier_data)
            loss = loss_id + self.lambda_oe * loss_oe
            self.step(loss)
            for name, value in (("loss", loss), ("loss_id", loss_id), ("loss_oe", loss_oe)):
                sums[name] += value.item() * len(labels)
            seen += len(labels)
        return self.net, {"epoch_idx": epoch_idx, **{k: v / max(1, seen) for k, v in sums.items()}}
