"""Trainer ``moodcat_cb``: the conditional binary classifier Cb (paper Eq. 2, Section 3.6).

The trained MOODCAT generator G is frozen (eval mode, no gradients). For an in-distribution
image ``x`` with true label ``y`` and its mask ``M(x)`` (one mask per image, shared by the pair):

* positive (matching) pair: ``(x, G(M(x), y), y)``   -> Cb logit should be LOW;
* negative (mismatched) pair: ``(x, G(M(x), y'), y')`` with ``y'`` uniform over classes != y
  -> Cb logit should be HIGH (the public code's convention: high = mismatch = OOD).

Loss (hinge, Eq. 2 with that sign convention): ``mean relu(1 + s_pos) + mean relu(1 - s_neg)``.

Cb(ext): when an ``unlabeled_loader`` is given, its batches carry PSEUDO-labels (the classifier's
argmax, computed beforehand by the postprocessor) in ``'label'``. Each unlabeled image adds one
more negative ``(x_u, G(M(x_u), y'), y')`` with ``y'`` uniform over classes != pseudo-label (over
all classes where the pseudo-label is negative, i.e. unknown); the pseudo-label itself is never
used as the condition. All negatives are averaged together in the second hinge term.

Variants (not in the paper, off by default): ``synthetic_negatives`` adds OOD-like images built
from the ID batch (:mod:`moodcat_plugin.moodcat.synthetic_outliers`) as negatives conditioned on
the CLASSIFIER's prediction for them (``classifier=`` is then required); ``outlier_label:
predicted`` conditions Cb(ext)'s outliers on their pseudo-label instead of a wrong label.

Optimiser: Adam, ``lr`` 2e-4, ``betas`` (0, 0.999) as the generator's (the method file sets the
same; the ``cpu`` profile trains at lr 1e-3, sized by measurement, BENCHMARKS.md). The Cb training
code is not public; Cb solves a stationary classification problem where first-moment momentum
may help (on the tiny demo problem (0.5, 0.999) converged more smoothly), so ``betas`` is a
setting, but (0.5, 0.999) has not been measured at CIFAR scale. One "epoch" is
``steps_per_epoch`` steps (loaders are cycled). Per epoch: ``loss``, ``train_acc`` (binary
accuracy on the labelled pairs, logit > 0 = mismatch) and ``val_acc`` on ``val_loader`` (one
positive and one negative per image, fixed masks and wrong labels so epochs are comparable).

Speed options (off by default; the ``gpu`` profile turns them on): ``amp`` (the frozen
generator's synthesis and Cb's forward under autocast, the hinge loss in fp32) and
``fused_optimizer``, see :mod:`moodcat_plugin.trainers.speed`.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from moodcat_plugin.moodcat.diagnostics import mismatched_labels, pair_accuracy
from moodcat_plugin.moodcat.images import from_signed_unit, to_signed_unit
from moodcat_plugin.moodcat.masking import AREA_RANGE, TEST_AREA, VALID_STYLES, apply_mask
from moodcat_plugin.networks.conditional_binary_classifier import ConditionalBinaryClassifier
from moodcat_plugin.networks.moodcat_gan import MoodcatGAN
from moodcat_plugin.data.loaders import AUGMENT_LIST
from moodcat_plugin.distributed import data_parallel, shard
from moodcat_plugin.errors import ConfigError
from moodcat_plugin.registry import register_trainer
from moodcat_plugin.moodcat.synthetic_outliers import SYNTHETIC_OUTLIERS
from moodcat_plugin.schema import FLAG, choice, integer, list_of, number
from moodcat_plugin.trainers.base_trainer import (ADAM_BETAS, StepTrainer, StepTrainerConfig, batch_to, check_sharded,
                                                  endless)
from moodcat_plugin.trainers.speed import (AMP, SPEED_DEFAULTS, SPEED_NEUTRAL, GradScalerCheckpoint,
                                           MixedPrecision, adam)

DEFAULTS = {"steps_per_epoch": None, "lr": 2e-4, "betas": (0.0, 0.999), "mask_style": "random_rectangle",
            "train_area": TEST_AREA, "use_ema": False, "synthetic_negatives": (), "outlier_label": "wrong",
            **SPEED_DEFAULTS}


class MoodcatCbConfig(StepTrainerConfig):
    """The ``cb:`` section of ``configs/postprocessors/moodcat.yml``; absent keys take DEFAULTS."""

    outlier_batch_size: integer(ge=1) = None      # Cb(ext) only; absent: batch_size
    lr: number(gt=0) = DEFAULTS["lr"]
    betas: ADAM_BETAS = DEFAULTS["betas"]
    mask_style: choice(*VALID_STYLES) = DEFAULTS["mask_style"]
    train_area: AREA_RANGE = DEFAULTS["train_area"]
    use_ema: FLAG = DEFAULTS["use_ema"]
    augment: AUGMENT_LIST = ("flip",)
    synthetic_negatives: list_of(choice(*SYNTHETIC_OUTLIERS)) = ()   # variant: OOD-like negatives from ID images
    outlier_label: choice("wrong", "predicted") = DEFAULTS["outlier_label"]  # Cb(ext) outliers' condition
    amp: AMP = DEFAULTS["amp"]                                          # off | bf16 | fp16
    fused_optimizer: FLAG = DEFAULTS["fused_optimizer"]


def hinge_loss(pos_logits: torch.Tensor, neg_logits: torch.Tensor) -> torch.Tensor:
    """``mean relu(1 + s_pos) + mean relu(1 - s_neg)`` (logit high = mismatch)."""
    return F.relu(1.0 + pos_logits).mean() + F.relu(1.0 - neg_logits).mean()


def binary_accuracy(pos_logits: torch.Tensor, neg_logits: torch.Tensor) -> Tuple[int, int]:
    """(correct, total): positives correct when logit < 0, negatives when logit > 0."""
    correct = int((pos_logits < 0).sum()) + int((neg_logits > 0).sum())
    return correct, pos_logits.numel() + neg_logits.numel()


@register_trainer("moodcat_cb")
class MoodcatCbTrainer(GradScalerCheckpoint, StepTrainer):
    """Trains ``ConditionalBinaryClassifier`` on matched vs mismatched synthesis pairs."""

    config_schema = MoodcatCbConfig
    #: settings left out of the cache key at these values (see training.run_identity)
    neutral_settings = {"synthetic_negatives": [], "outlier_label": "wrong", **SPEED_NEUTRAL}
    #: settings only Cb(ext) reads, left out of the plain Cb's cache key. ``outlier_batch_size`` is
    #: read by Cb(ext) alone too, but every cached plain Cb is named with it: dropping it would orphan them.
    ext_only_settings = ("outlier_label",)
    supports_distributed = True

    def __init__(self, net: ConditionalBinaryClassifier, train_loader, config, generator: MoodcatGAN,
                 unlabeled_loader=None, val_loader=None, classifier: Optional[torch.nn.Module] = None):
        super().__init__(net, train_loader, config)
        self.args = {**DEFAULTS, **config.trainer}
        if self.args["synthetic_negatives"] and classifier is None:
            raise ValueError("synthetic_negatives are conditioned on the classifier's prediction: pass classifier=")
        self.shard = shard()
        if self.args["synthetic_negatives"] and self.shard[1] > 1:
            raise ConfigError("cb.synthetic_negatives is not supported across processes (its images are drawn per "
                              "process, not per global batch): run it in one process or set cb.synthetic_negatives=[]")
        self.classifier = classifier.eval() if classifier is not None else None
        net.to(memory_format=torch.channels_last)  # faster on CPU; values unchanged
        self.mean, self.std = config.dataset.normalization.mean, config.dataset.normalization.std
        self.num_classes = net.num_classes
        self.generator = generator.eval().requires_grad_(False)
        self.unlabeled_loader = unlabeled_loader
        self.val_loader = val_loader
        self.optimizer = adam(net.parameters(), self.args["lr"], self.args["betas"], bool(self.args["fused_optimizer"]))
        self.precision = MixedPrecision(self.args["amp"], self.device)
        if unlabeled_loader is not None:
            check_sharded(unlabeled_loader)
        self._unlabeled_batches = endless(unlabeled_loader) if unlabeled_loader else None
        self.model = data_parallel(net, self.device)  # net itself in one process

    # -- checkpoint contract -------------------------------------------------------------------
    def optimizers(self) -> dict:
        return {"optimizer": self.optimizer}

    def data_streams(self) -> dict:
        streams = super().data_streams()
        if self._unlabeled_batches is not None:
            streams["unlabeled"] = self._unlabeled_batches
        return streams

    # -- pairs ---------------------------------------------------------------------------------
    def images_and_labels(self, batch: dict) -> Tuple[torch.Tensor, torch.Tensor]:
        data, labels = batch_to(batch, self.device)
        return to_signed_unit(data, self.mean, self.std), labels

    def synthesize(self, x: torch.Tensor, labels: torch.Tensor,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Frozen-G synthesis ``[B,3,32,32]`` of ``x`` masked (config style/area) given labels."""
        masked = apply_mask(x, self.args["mask_style"], area=tuple(self.args["train_area"]), generator=generator,
                            shard=self.shard)
        return self.generator.synthesize_from_masked(masked, labels, use_ema=bool(self.args["use_ema"]))

    def mismatched(self, labels: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """:func:`mismatched_labels` of ``labels`` ``[B]``; across processes drawn for the global
        batch (this rank's labels at its rows) and this rank's rows kept."""
        rank, world = self.shard
        if world == 1:
            return mismatched_labels(labels, self.num_classes, generator)
        rows = slice(rank * len(labels), (rank + 1) * len(labels))
        padded = labels.new_zeros(world * len(labels))
        padded[rows] = labels
        return mismatched_labels(padded, self.num_classes, generator)[rows]

    def labelled_pairs(self, x: torch.Tensor, y: torch.Tensor,
                       generator: Optional[torch.Generator] = None):
        """(x2, synth, cond, is_negative) for one positive and one negative per image; both
        members of a pair share the same mask. Shapes ``[2B,...]``; first half positives."""
        wrong = self.mismatched(y, generator)
        masked = apply_mask(x, self.args["mask_style"], area=tuple(self.args["train_area"]), generator=generator,
                            shard=self.shard)
        cond = torch.cat([y, wrong])
        synth = self.generator.synthesize_from_masked(torch.cat([masked, masked]), cond,
                                                      use_ema=bool(self.args["use_ema"]))
        is_negative = torch.cat([torch.zeros_like(y, dtype=torch.bool), torch.ones_like(y, dtype=torch.bool)])
        return torch.cat([x, x]), synth, cond, is_negative

    def unlabeled_negative_pairs(self, batch: dict):
        """(x_u, synth, condition) for pseudo-labelled outliers, always negatives: the condition is
        a label != the pseudo-label (``outlier_label: wrong``, paper) or the pseudo-label itself,
        the classifier's prediction, as the test conditions OOD inputs (``predicted``, variant)."""
        x_u, pseudo = self.images_and_labels(batch)
        condition = pseudo if self.args["outlier_label"] == "predicted" else self.mismatched(pseudo)
        return x_u, self.synthesize(x_u, condition), condition

    @torch.no_grad()
    def predicted_labels(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen classifier's argmax ``[B]`` for images in [-1,1]."""
        return self.classifier(from_signed_unit(x, self.mean, self.std)).argmax(dim=1)

    def synthetic_negative_pairs(self, x: torch.Tensor, y: torch.Tensor):
        """(x_ood, synth, C(x_ood)) from the configured OOD-like builders, all negatives."""
        images, synths, conditions = [], [], []
        for name in self.args["synthetic_negatives"]:
            x_ood = SYNTHETIC_OUTLIERS[name](x, y)
            predicted = self.predicted_labels(x_ood)
            images.append(x_ood)
            synths.append(self.synthesize(x_ood, predicted))
            conditions.append(predicted)
        return torch.cat(images), torch.cat(synths), torch.cat(conditions)

    # -- training ------------------------------------------------------------------------------
    def train_step(self) -> Dict[str, float]:
        """One Adam step on a labelled batch (+ an unlabeled batch for Cb(ext))."""
        self.net.train()
        x, y = self.images_and_labels(next(self.batches))
        with self.precision.autocast():
            images, synth, cond, is_negative = self.labelled_pairs(x, y)
            extra = []
            if self.args["synthetic_negatives"]:
                extra.append(self.synthetic_negative_pairs(x, y))
            if self._unlabeled_batches is not None:
                extra.append(self.unlabeled_negative_pairs(next(self._unlabeled_batches)))
            for x_neg, synth_neg, cond_neg in extra:
                images, synth, cond = torch.cat([images, x_neg]), torch.cat([synth, synth_neg]), torch.cat([cond, cond_neg])
                is_negative = torch.cat([is_negative, torch.ones_like(cond_neg, dtype=torch.bool)])
            logits = self.precision.full(self.model(images, synth, cond))
        loss = hinge_loss(logits[~is_negative], logits[is_negative])
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.backward(loss)
        self.precision.step(self.optimizer)
        self.precision.update()
        self.step += 1
        labelled = logits[: 2 * len(y)].detach()
        correct, total = binary_accuracy(labelled[: len(y)], labelled[len(y):])
        return {"loss": float(loss.detach()), "correct": correct, "total": total}

    def train_epoch(self, epoch_idx: int):
        steps = self.steps_per_epoch()
        loss_sum, correct, total = 0.0, 0, 0
        for _ in self.progress(range(steps), f"Cb epoch {epoch_idx}"):
            row = self.train_step()
            loss_sum += row["loss"]
            correct += row["correct"]
            total += row["total"]
        metrics = {"epoch_idx": epoch_idx, "loss": loss_sum / steps, "train_acc": correct / max(1, total),
                   "step": self.step}
        if self.val_loader is not None:
            metrics["val_acc"] = self.evaluate(self.val_loader)
        return self.net, metrics

    def evaluate(self, loader) -> float:
        """Binary accuracy on one matched and one mismatched pair per image of ``loader`` (fixed
        masks and wrong labels, :func:`~moodcat_plugin.moodcat.diagnostics.pair_accuracy`)."""
        return pair_accuracy(self.net, self.generator, loader, self.mean, self.std, self.num_classes,
                             self.args["mask_style"], self.args["train_area"], use_ema=bool(self.args["use_ema"]),
                             device=self.device)
