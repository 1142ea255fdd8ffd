"""Trainer ``moodcat_gan``: the MOODCAT generator (paper Algorithm 1), one D and one G step per batch.

Per step, with ``x`` the batch in [-1,1] and ``y`` its true labels:

1. ``x_masked = M(x)``: one random rectangle per sample, area ``TRAIN_AREA`` (10-33 %)
   (``mask_style`` switches to the ablation styles of the paper's Table 5, e.g. ``none``).
2. ``z ~ N(mu, exp(logvar))`` from ``E(x_masked)`` (reparameterised), ``x' = D(z, y)``.
3. Discriminator step (U-Net discriminator, BCE-with-logits on both heads; real ``(x, y)``, fake
   ``(x'.detach(), y)``; each head's loss is ``0.5 * real + 0.5 * fake``, the two heads summed).
   With probability ``0.5 * min(1, epoch / cutmix_warmup_epochs)`` (when ``cutmix`` is on) a
   U-Net-GAN CutMix term is added: real and fake images mixed by a random box; the bottleneck head
   must call the mix fake, the per-pixel head must reproduce the box mask, and a consistency loss
   ties D(mix) per-pixel to the same mix of D(real) and D(fake) per-pixel logits. Differences from
   the U-Net GAN reference: the term is ADDED to the real/fake loss (the reference's full-batch
   mode replaces it), and by default the consistency target is detached (``cutmix_consistency``).
4. Generator + encoder step: ``0.5*BCE(bottleneck(x'),1) + 0.5*BCE(pixels(x'),1)
   + kl_weight*KL + ssim_weight*(-log SSIM(x',x)) + mse_weight*MSE(x',x) + l1_weight*L1(x',x)``;
   the reconstruction target is the UNMASKED ``x``.
   KL = mean over batch and latent of ``exp(logvar) + mu^2 - 1 - logvar`` (no 1/2); the public
   code adds this term twice, which the default ``kl_weight: 2.0`` reproduces.
   SSIM is ``piq.ssim`` (Gaussian window 11, sigma 1.5, valid convolution). piq expects images in
   ``[0, data_range]``, so both images are mapped [-1,1] -> [0,1] and ``data_range=1``; this is
   exactly SSIM on [-1,1] images with data range 2. The batch-mean SSIM is clamped to >= 1e-4
   before the log (it can be <= 0 early in training).
   Variant (not in the paper, off by default): ``class_consistency_weight * CE(C(x'), y)``
   through the FROZEN classifier C (passed as ``classifier=``), so that the label changes x'.
5. EMA of the decoder into ``decoder_ema`` when ``ema_decay`` is set (with the usual warm-up
   ``min(ema_decay, (1+step)/(10+step))`` so short runs get a useful average); without it the EMA
   decoder is kept an exact copy.

Optimisers: Adam, betas (0, 0.999), ``lr_g`` (5e-5) for encoder+decoder, ``lr_d`` (2e-4) for the
discriminator, fp32. One "epoch" is ``steps_per_epoch`` steps (the loader is cycled), so
:func:`moodcat_plugin.training.fit` checkpoints every ``steps_per_epoch`` steps and resumes there.

Speed options (off by default; the ``gpu`` profile turns them on): ``amp`` and
``fused_optimizer`` (:mod:`moodcat_plugin.trainers.speed`), and ``concat_d_forward``: the
discriminator step runs ONE forward over ``[x; x'; mix]`` (labels repeated) instead of one per
input, as the U-Net GAN reference does. The discriminator has no batch statistics, so only two
things change: each spectral-norm layer runs its power iteration once per discriminator update
instead of once per forward (2-3 times), and convolutions see a 2-3x larger batch (other rounding).
On a GPU it divides the discriminator step's kernel launches by 2-3, which bound the step.

Outputs under ``run_dir`` (set by ``fit``): ``losses.csv`` (one row per step), ``tb/``
(TensorBoard, every ``log_every`` steps, when ``torch.utils.tensorboard`` imports) and
``samples/step_XXXXXX.png`` every ``sample_every`` steps (rows: input, masked, synthesis
[, EMA synthesis]) on a fixed batch with fixed masks.
"""
from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import piq
import torch
import torch.nn.functional as F

from moodcat_plugin.moodcat.images import class_name, from_signed_unit, save_labelled_grid, to_signed_unit
from moodcat_plugin.moodcat.masking import TRAIN_AREA, TEST_AREA, VALID_STYLES, apply_mask, box_mask
from moodcat_plugin.networks.moodcat_gan import MoodcatGAN
from moodcat_plugin.data.loaders import AUGMENT_LIST
from moodcat_plugin.distributed import convert_batchnorm, data_parallel, global_mean, local_rows, shard
from moodcat_plugin.registry import register_trainer
from moodcat_plugin.schema import FLAG, choice, integer, number, optional
from moodcat_plugin.trainers.base_trainer import ADAM_BETAS, StepTrainer, StepTrainerConfig, batch_to
from moodcat_plugin.trainers.speed import (AMP, SPEED_DEFAULTS, SPEED_NEUTRAL, GradScalerCheckpoint,
                                           MixedPrecision, adam)
from moodcat_plugin.training import NonFiniteError, TrainingDivergedError

log = logging.getLogger(__name__)

SSIM_KERNEL_SIZE = 11
SSIM_KERNEL_SIGMA = 1.5
SSIM_FLOOR = 1e-4
SAMPLE_IMAGES = 8
SAMPLE_MASK_SEED = 1234
LOSS_COLUMNS = ("step", "epoch", "d_loss", "d_real", "d_fake", "d_cutmix", "cutmix_used",
                "g_loss", "g_adv", "kl", "ssim", "mse", "l1", "recon")
#: Mean real+fake discriminator BCE (both heads) over an epoch above which the run has diverged.
#: Healthy runs stay below ~10 per STEP (chance is 2.8; CIFAR-10 cpu profile, 1,000 steps: max
#: 9.4); the CIFAR-100 cpu run that diverged had epoch means of 2,000-300,000 from step ~260 on,
#: with U-Net decoder activations growing ~10x per up-block to pixel logits of 1e4-1e6.
DIVERGED_D_BCE = 100.0
EPOCH_MEANS = ("d_loss", "d_real", "d_fake", "g_loss", "g_adv", "kl", "ssim", "mse", "l1", "recon", "class_consistency")
DEFAULTS = {
    "steps_per_epoch": None, "lr_g": 5e-5, "lr_d": 2e-4, "betas": (0.0, 0.999), "kl_weight": 2.0,
    "ssim_weight": 5.0, "mse_weight": 3.0, "l1_weight": 2.0, "cutmix": True,
    "cutmix_warmup_epochs": 200, "ema_decay": None, "sample_every": 500, "log_every": 50,
    "class_consistency_weight": 0.0, "mask_style": "random_rectangle", "cutmix_consistency": "detached",
    **SPEED_DEFAULTS, "concat_d_forward": False,
}
#: How the CutMix consistency target ``M*D(real) + (1-M)*D(fake)`` (per-pixel logits) takes part:
#: ``detached`` = a fixed target for D(mix) (this project's first implementation, kept as the
#: default so trained generators stay valid); ``joint`` = gradients flow into D(real) and D(fake)
#: as well, as in the U-Net GAN reference code (``mse(D_mixed, mix)`` with nothing detached).
CONSISTENCY_TARGETS = ("detached", "joint")
#: The GAN trainer's speed options at their neutral defaults (dropped from cache keys at these values).
GAN_SPEED_DEFAULTS = {**SPEED_DEFAULTS, "concat_d_forward": False}


class MoodcatGANConfig(StepTrainerConfig):
    """The ``gan:`` section of ``configs/postprocessors/moodcat.yml``; absent keys take DEFAULTS."""

    lr_g: number(gt=0) = DEFAULTS["lr_g"]
    lr_d: number(gt=0) = DEFAULTS["lr_d"]
    betas: ADAM_BETAS = DEFAULTS["betas"]
    kl_weight: number(ge=0) = DEFAULTS["kl_weight"]
    ssim_weight: number(ge=0) = DEFAULTS["ssim_weight"]
    mse_weight: number(ge=0) = DEFAULTS["mse_weight"]
    l1_weight: number(ge=0) = DEFAULTS["l1_weight"]
    cutmix: FLAG = DEFAULTS["cutmix"]
    cutmix_warmup_epochs: optional(integer(ge=0)) = DEFAULTS["cutmix_warmup_epochs"]
    cutmix_consistency: choice(*CONSISTENCY_TARGETS) = DEFAULTS["cutmix_consistency"]
    ema_decay: optional(number(ge=0, lt=1)) = DEFAULTS["ema_decay"]         # null / 0: no EMA
    sample_every: optional(integer(ge=0)) = DEFAULTS["sample_every"]     # null / 0: never
    log_every: optional(integer(ge=0)) = DEFAULTS["log_every"]           # null / 0: never
    augment: AUGMENT_LIST = ("flip",)
    holdout_for_cb: number(ge=0, lt=1) = 0.0
    class_consistency_weight: number(ge=0) = DEFAULTS["class_consistency_weight"]
    mask_style: choice(*VALID_STYLES) = DEFAULTS["mask_style"]   # training mask; 'none' = the paper's w/o-mask row
    amp: AMP = DEFAULTS["amp"]                                          # off | bf16 | fp16
    fused_optimizer: FLAG = DEFAULTS["fused_optimizer"]
    concat_d_forward: FLAG = DEFAULTS["concat_d_forward"]


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Mean over batch and latent of ``exp(logvar) + mu^2 - 1 - logvar`` (2x the usual KL)."""
    return (logvar.exp() + mu.pow(2) - 1.0 - logvar).mean()


def ssim_signed(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Batch-mean SSIM of two image batches in [-1,1] (piq, Gaussian 11/1.5, via [0,1]); across
    processes the mean over the global batch (the loss takes its log, so it is no per-sample mean)."""
    to_unit = lambda images: ((images + 1.0) * 0.5).clamp(0.0, 1.0)  # noqa: E731
    return global_mean(piq.ssim(to_unit(fake), to_unit(real), kernel_size=SSIM_KERNEL_SIZE,
                                kernel_sigma=SSIM_KERNEL_SIGMA, data_range=1.0, reduction="none"))


def reconstruction_losses(fake: torch.Tensor, real: torch.Tensor) -> Dict[str, torch.Tensor]:
    """``ssim`` (the index), ``neg_log_ssim``, ``mse``, ``l1`` between x' and the unmasked x."""
    ssim = ssim_signed(fake, real)
    return {"ssim": ssim, "neg_log_ssim": -torch.log(ssim.clamp(min=SSIM_FLOOR)),
            "mse": F.mse_loss(fake, real), "l1": F.l1_loss(fake, real)}


def bce(logits: torch.Tensor, target) -> torch.Tensor:
    """Mean BCE-with-logits against a constant (0/1) or a tensor target of the same shape."""
    if not torch.is_tensor(target):
        target = torch.full_like(logits, float(target))
    return F.binary_cross_entropy_with_logits(logits, target)


def random_cutmix_masks(batch: int, size: int, device: torch.device, shard: Tuple[int, int] = (0, 1)) -> torch.Tensor:
    """Float ``[B,1,size,size]`` masks, 1 = take the REAL image: a random box (area U(0,1))
    that is the real or the fake region with probability 1/2 each (U-Net GAN CutMix).
    ``shard``: drawn for the global batch, this rank's rows kept (:mod:`moodcat_plugin.distributed`)."""
    def uniform() -> torch.Tensor:
        return local_rows(torch.rand(batch * shard[1], device=device), shard)

    area = uniform()
    side = (area.sqrt() * size).round().long().clamp(1, size)
    top = (uniform() * (size - side + 1)).long()
    left = (uniform() * (size - side + 1)).long()
    inside = box_mask(size, size, top, left, side, side).float()
    flip = (uniform() < 0.5).float()[:, None, None]
    return (flip * inside + (1 - flip) * (1 - inside))[:, None]


class GeneratorForward(torch.nn.Module):
    """The trained generator path as one module (so DistributedDataParallel can wrap it):
    masked ``[B,3,32,32]``, y ``[B]``, noise (or None) -> (x' ``[B,3,32,32]``, mu, logvar)."""

    def __init__(self, gan: MoodcatGAN):
        super().__init__()
        self.encoder, self.decoder = gan.encoder, gan.decoder

    def forward(self, masked: torch.Tensor, y: torch.Tensor, noise: Optional[torch.Tensor] = None):
        z, mu, logvar = self.encoder(masked, noise=noise)
        return self.decoder(z, y), mu, logvar


def check_discriminator(means: Dict[str, float], epoch_idx: int, run_dir: Optional[Path]) -> None:
    """Stop with :class:`TrainingDivergedError` (before the epoch is saved) when the epoch's mean
    real+fake discriminator BCE exceeds :data:`DIVERGED_D_BCE`; non-finite means are left to
    :func:`moodcat_plugin.training.fit`, which stops on them."""
    bce_sum = means.get("d_real", 0.0) + means.get("d_fake", 0.0)
    if math.isfinite(bce_sum) and bce_sum > DIVERGED_D_BCE:
        raise TrainingDivergedError(
            f"the GAN's discriminator in {run_dir} diverged in epoch {epoch_idx} (mean real+fake BCE {bce_sum:.3g}, "
            f"healthy runs stay below ~10); this epoch was not saved: run again with gan.cutmix_consistency=joint, "
            f"gan.cutmix=false or a lower gan.lr_d (e.g. --set postprocessors.moodcat.gan.cutmix_consistency=joint)")


@register_trainer("moodcat_gan")
class MoodcatGANTrainer(GradScalerCheckpoint, StepTrainer):
    """Trains ``MoodcatGAN`` (encoder, decoder, U-Net discriminator, EMA decoder); see module doc."""

    config_schema = MoodcatGANConfig
    learning_rate_keys = ("lr_g", "lr_d")
    #: settings left out of the cache key at these values (see training.run_identity)
    neutral_settings = {"class_consistency_weight": 0.0, "holdout_for_cb": 0.0, "mask_style": "random_rectangle",
                        "cutmix_consistency": "detached",
                        **SPEED_NEUTRAL, "concat_d_forward": False}
    supports_distributed = True

    def __init__(self, net: MoodcatGAN, train_loader, config, classifier: Optional[torch.nn.Module] = None):
        super().__init__(net, train_loader, config)
        self.args = {**DEFAULTS, **config.trainer}
        # across processes: BatchNorm over the global batch, gradients averaged by DDP; the G step
        # calls the bare discriminator (frozen there, so DDP expects no gradients from it)
        self.shard = shard()
        convert_batchnorm(net.encoder, self.device)
        convert_batchnorm(net.decoder, self.device)
        self.generator = data_parallel(GeneratorForward(net), self.device)
        self.discriminator = data_parallel(net.discriminator, self.device)
        self.classifier = self._frozen_classifier(classifier)
        self.mean, self.std = config.dataset.normalization.mean, config.dataset.normalization.std
        fused = bool(self.args["fused_optimizer"])
        self.opt_g = adam(net.generator_parameters(), self.args["lr_g"], self.args["betas"], fused)
        self.opt_d = adam(net.discriminator.parameters(), self.args["lr_d"], self.args["betas"], fused)
        self.precision = MixedPrecision(self.args["amp"], self.device)
        self.run_dir: Optional[Path] = None
        self._sample_batch: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        self._tb = None
        self._tb_tried = False

    def _frozen_classifier(self, classifier: Optional[torch.nn.Module]) -> Optional[torch.nn.Module]:
        """The classifier for the class-consistency term (variant), frozen; None when unused."""
        if float(self.args["class_consistency_weight"]) <= 0:
            return None
        if classifier is None:
            raise ValueError("class_consistency_weight > 0 needs the classifier (MoodcatGANTrainer(..., classifier=net))")
        return classifier.eval().requires_grad_(False)

    # -- checkpoint contract -------------------------------------------------------------------
    def optimizers(self) -> dict:
        return {"opt_g": self.opt_g, "opt_d": self.opt_d}

    # -- data ----------------------------------------------------------------------------------
    def next_batch(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Next (x in [-1,1] ``[B,3,32,32]``, y ``[B]``), cycling the loader endlessly."""
        data, labels = batch_to(next(self.batches), self.device)
        return to_signed_unit(data, self.mean, self.std), labels

    def fixed_sample_batch(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Images for the sample grids: the first batch of the first pass when the stream can
        replay it (the same grids after a resume), else the given batch."""
        if hasattr(self.batches, "batch_at"):
            data, labels = batch_to(self.batches.batch_at(0, 0), self.device)
            x, y = to_signed_unit(data, self.mean, self.std), labels
        return x[:SAMPLE_IMAGES].clone(), y[:SAMPLE_IMAGES].clone()

    def cutmix_probability(self, epoch_idx: int) -> float:
        """Probability of a CutMix discriminator term: ``0.5 * min(1, epoch / warmup)``."""
        if not self.args["cutmix"]:
            return 0.0
        warmup = float(self.args["cutmix_warmup_epochs"] or 0)
        return 0.5 if warmup <= 0 else 0.5 * min(1.0, epoch_idx / warmup)

    # -- losses --------------------------------------------------------------------------------
    def discriminate(self, images: torch.Tensor, y: torch.Tensor,
                     frozen: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """The discriminator's (bottleneck ``[B]``, pixel ``[B,1,32,32]``) logits, under ``amp``, in
        fp32. ``frozen`` (the generator step): the bare module, not its DDP wrapper."""
        module = self.net.discriminator if frozen else self.discriminator
        with self.precision.autocast():
            bottleneck, pixels = module(images, self.net.discriminator_labels(y))
        return self.precision.full(bottleneck), self.precision.full(pixels)

    def discriminate_each(self, images: List[torch.Tensor], y: torch.Tensor) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Discriminator logits of each image batch in ``images`` (all conditioned on ``y``): one
        forward per batch, or one over their concatenation with ``concat_d_forward``."""
        if not self.args["concat_d_forward"]:
            return [self.discriminate(batch, y) for batch in images]
        bottleneck, pixels = self.discriminate(torch.cat(images), y.repeat(len(images)))
        return list(zip(bottleneck.chunk(len(images)), pixels.chunk(len(images))))

    def discriminator_loss(self, x, fake, y, use_cutmix: bool) -> Dict[str, torch.Tensor]:
        """U-Net discriminator BCE on both heads (+ CutMix term); ``fake`` must be detached."""
        images = [x, fake]
        if use_cutmix:
            mask = random_cutmix_masks(x.shape[0], x.shape[-1], x.device, self.shard)
            images.append(mask * x + (1 - mask) * fake)
        (real_b, real_p), (fake_b, fake_p), *mix = self.discriminate_each(images, y)
        real = bce(real_b, 1) + bce(real_p, 1)
        fake_term = bce(fake_b, 0) + bce(fake_p, 0)
        loss = 0.5 * real + 0.5 * fake_term
        cutmix = torch.zeros((), device=x.device)
        if use_cutmix:
            (mix_b, mix_p), = mix
            target_p = mask.expand_as(mix_p)
            consistency = F.mse_loss(mix_p, self.consistency_target(mask, real_p, fake_p))
            cutmix = 0.5 * bce(mix_b, 0) + 0.5 * bce(mix_p, target_p) + consistency
            loss = loss + cutmix
        return {"d_loss": loss, "d_real": real, "d_fake": fake_term, "d_cutmix": cutmix}

    def consistency_target(self, mask: torch.Tensor, real_p: torch.Tensor, fake_p: torch.Tensor) -> torch.Tensor:
        """``mask * real_p + (1 - mask) * fake_p`` (per-pixel logits ``[B,1,H,W]``), detached or not
        by ``cutmix_consistency`` (see :data:`CONSISTENCY_TARGETS`)."""
        if self.args["cutmix_consistency"] == "detached":
            real_p, fake_p = real_p.detach(), fake_p.detach()
        return mask * real_p + (1 - mask) * fake_p

    def generator_loss(self, x, fake, y, mu, logvar) -> Dict[str, torch.Tensor]:
        """Adversarial (both heads) + KL + SSIM/MSE/L1 reconstruction of the unmasked ``x``."""
        a = self.args
        fake_b, fake_p = self.discriminate(fake, y, frozen=True)
        adv = 0.5 * bce(fake_b, 1) + 0.5 * bce(fake_p, 1)
        kl = kl_to_standard_normal(mu, logvar)
        rec = reconstruction_losses(fake, x)
        recon = (float(a["ssim_weight"]) * rec["neg_log_ssim"] + float(a["mse_weight"]) * rec["mse"]
                 + float(a["l1_weight"]) * rec["l1"])
        loss = adv + float(a["kl_weight"]) * kl + recon
        losses = {"g_loss": loss, "g_adv": adv, "kl": kl, "ssim": rec["ssim"], "mse": rec["mse"],
                  "l1": rec["l1"], "recon": recon}
        if self.classifier is not None:
            losses["class_consistency"] = self.class_consistency(fake, y)
            losses["g_loss"] = loss + float(a["class_consistency_weight"]) * losses["class_consistency"]
        return losses

    def class_consistency(self, fake: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """CE of the frozen classifier on the synthesis against its condition: pushes x' to look
        like class y to the classifier, so the label changes the synthesis (variant, not in the paper)."""
        return F.cross_entropy(self.classifier(from_signed_unit(fake, self.mean, self.std)), y)

    # -- one step ------------------------------------------------------------------------------
    def train_step(self, x: torch.Tensor, y: torch.Tensor, epoch_idx: int) -> Dict[str, float]:
        """One discriminator and one generator+encoder update on (x in [-1,1], y); returns losses."""
        gan = self.net
        gan.encoder.train()
        gan.decoder.train()
        gan.discriminator.train()
        masked = apply_mask(x, self.args["mask_style"], area=TRAIN_AREA, shard=self.shard)
        with self.precision.autocast():
            fake, mu, logvar = self.generator(masked, y, self.latent_noise(len(x)))
        fake, mu, logvar = (self.precision.full(t) for t in (fake, mu, logvar))
        if not torch.isfinite(fake).all():  # piq's SSIM would assert on it
            raise NonFiniteError(f"the generator's output holds NaN or inf at step {self.step + 1}")

        use_cutmix = bool(torch.rand(()) < self.cutmix_probability(epoch_idx))
        d_losses = self.discriminator_loss(x, fake.detach(), y, use_cutmix)
        self.opt_d.zero_grad(set_to_none=True)
        self.precision.backward(d_losses["d_loss"])
        self.precision.step(self.opt_d)

        gan.discriminator.requires_grad_(False)
        try:
            g_losses = self.generator_loss(x, fake, y, mu, logvar)
            self.opt_g.zero_grad(set_to_none=True)
            self.precision.backward(g_losses["g_loss"])
            self.precision.step(self.opt_g)
        finally:
            gan.discriminator.requires_grad_(True)
        self.precision.update()
        self.update_ema()
        self.step += 1
        losses = {**d_losses, **g_losses}
        values = dict(zip(losses, torch.stack([v.detach() for v in losses.values()]).tolist()))  # one device sync
        return {"step": self.step, "epoch": epoch_idx, "cutmix_used": int(use_cutmix), **values}

    def latent_noise(self, batch: int) -> Optional[torch.Tensor]:
        """The encoder's reparameterisation noise ``[B, latent]`` for this rank's rows of the global
        batch across processes; None in one process (the encoder draws it, as it always did)."""
        if self.shard[1] == 1:
            return None
        dtype = self.net.encoder.mu_head.weight.dtype
        return local_rows(torch.randn(batch * self.shard[1], self.net.encoder.latent_dim, device=self.device,
                                      dtype=dtype), self.shard)

    def update_ema(self) -> None:
        decay = self.args["ema_decay"]
        if not decay:
            self.net.update_ema(0.0)  # keep decoder_ema an exact copy
            return
        self.net.update_ema(min(float(decay), (1.0 + self.step) / (10.0 + self.step)))

    # -- epoch ---------------------------------------------------------------------------------
    def train_epoch(self, epoch_idx: int):
        sums: Dict[str, float] = {}
        steps = self.steps_per_epoch()
        with self.loss_log() as writer:
            for _ in self.progress(range(steps), f"GAN epoch {epoch_idx}"):
                x, y = self.next_batch()
                if self._sample_batch is None:
                    self._sample_batch = self.fixed_sample_batch(x, y)
                row = self.train_step(x, y, epoch_idx)
                if writer is not None:
                    writer.writerow([row[c] for c in self.loss_columns()])
                self.log_tensorboard(row)
                self.maybe_save_samples()
                for key in EPOCH_MEANS:
                    if key in row:
                        sums[key] = sums.get(key, 0.0) + row[key]
        means = {key: value / steps for key, value in sums.items()}
        check_discriminator(means, epoch_idx, self.run_dir)
        return self.net, {"epoch_idx": epoch_idx, "loss": means["g_loss"], **means, "step": self.step}

    # -- logging -------------------------------------------------------------------------------
    def loss_columns(self) -> Tuple[str, ...]:
        """Columns of ``losses.csv`` (and TensorBoard scalars after the first two): the class-consistency
        loss too when it is trained (``class_consistency_weight`` > 0)."""
        return LOSS_COLUMNS + (("class_consistency",) if self.classifier is not None else ())

    def loss_log(self):
        """Context manager yielding a csv writer appending to ``run_dir/losses.csv`` (or None)."""
        return _LossLog(self.run_dir / "losses.csv" if self.run_dir else None, self.step, self.loss_columns())

    def tensorboard(self):
        if self._tb_tried or self.run_dir is None:
            return self._tb
        self._tb_tried = True
        try:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(str(self.run_dir / "tb"))
        except ImportError:
            log.info("tensorboard is not installed; losses go to losses.csv only")
        return self._tb

    def log_tensorboard(self, row: Dict[str, float]) -> None:
        every = int(self.args["log_every"] or 0)
        if every <= 0 or self.step % every:
            return
        writer = self.tensorboard()
        if writer is not None:
            for key in self.loss_columns()[2:]:
                writer.add_scalar(f"moodcat_gan/{key}", row[key], self.step)
            writer.flush()

    def maybe_save_samples(self) -> Optional[Path]:
        every = int(self.args["sample_every"] or 0)
        if self.run_dir is None or every <= 0 or self.step % every:
            return None
        return self.save_samples(self.run_dir / "samples" / f"step_{self.step:06d}.png")

    def save_samples(self, path: Path) -> Path:
        """Grid of the fixed sample batch: input / masked (test-area mask) / synthesis [/ EMA],
        columns titled with the label each synthesis is conditioned on."""
        x, y = self._sample_batch
        generator = torch.Generator(device=x.device).manual_seed(SAMPLE_MASK_SEED)
        masked, synthesis = self.net.synthesize(x, y, area=TEST_AREA, generator=generator)
        rows = {"input": x, "masked": masked, "synthesis": synthesis}
        if self.args["ema_decay"]:
            rows["EMA synthesis"] = self.net.synthesize_from_masked(masked, y, use_ema=True)
        names = self.config.dataset.get("class_names")
        return save_labelled_grid(path, rows, [class_name(int(label), names) for label in y],
                                  f"generator after {self.step} steps (conditioned on the true label)")


class _LossLog:
    """Appends rows to a loss CSV, writing the header once and dropping rows past ``step``
    (left behind by an interrupted epoch that is being redone after a resume)."""

    def __init__(self, path: Optional[Path], step: int, columns: Tuple[str, ...] = LOSS_COLUMNS):
        self.path, self.step, self.columns, self.file = path, step, columns, None

    def __enter__(self):
        if self.path is None:
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            with open(self.path, newline="") as f:
                rows = list(csv.reader(f))
            kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= self.step] if rows else []
            if len(kept) != len(rows):
                with open(self.path, "w", newline="") as f:
                    csv.writer(f).writerows(kept)
        new_file = not self.path.is_file() or self.path.stat().st_size == 0
        self.file = open(self.path, "a", newline="")
        writer = csv.writer(self.file)
        if new_file:
            writer.writerow(self.columns)
        return writer

    def __exit__(self, *exc):
        if self.file is not None:
            self.file.close()
        return False
