"""MOODCAT generator G = decoder(encoder(mask(x)), y), with its training discriminator.

``MoodcatGAN`` is a container of the four parts trained together by the ``moodcat_gan`` trainer
(paper Algorithm 1): ``encoder`` (:class:`MoodcatEncoder`), ``decoder`` (:class:`BigGANDecoder`),
``discriminator`` (:class:`UNetDiscriminator`, used only for training) and ``decoder_ema``, an
exponential moving average of the decoder kept by the trainer when ``ema_decay`` is set (without
EMA the trainer keeps it an exact copy of ``decoder``). The public MOODCAT runs evaluate the
non-EMA decoder, so ``use_ema=False`` is the default everywhere.

At test time only ``synthesize`` is used: mask -> encoder (eval mode: z = mu) -> decoder (eval
mode BN). Spectral-norm weights are computed once per call (``parametrize.cached()``), not once
per layer call. All convolution weights use the channels_last memory format (faster on CPU).
"""
from __future__ import annotations

import copy
from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn.utils import parametrize

from moodcat_plugin.moodcat.masking import TEST_AREA, apply_mask
from moodcat_plugin.networks.biggan_decoder import BigGANDecoder
from moodcat_plugin.networks.moodcat_encoder import MoodcatEncoder
from moodcat_plugin.networks.unet_discriminator import UNetDiscriminator
from moodcat_plugin.registry import register_network
from moodcat_plugin.schema import FLAG, NetworkConfig, integer


class MoodcatGANNetworkConfig(NetworkConfig):
    """The ``gan_network:`` section of ``configs/postprocessors/moodcat.yml`` (reference 32/128/32)."""

    ch: integer(ge=1) = 32
    latent_dim: integer(ge=1) = 128
    disc_ch: integer(ge=1) = 32
    conditional: FLAG = True


@register_network("moodcat_gan")
class MoodcatGAN(nn.Module):
    """Encoder + class-conditional decoder (+ EMA decoder) + U-Net discriminator.

    Reference sizes: ``ch=32``, ``latent_dim=128``, ``disc_ch=32`` (E 0.46 M, D 3.82 M,
    U-Net 4.15 M parameters for 10 classes). ``conditional=False`` is the unconditional
    ablation: the decoder ignores ``y`` and the discriminator sees every image with label 0.
    """

    config_schema = MoodcatGANNetworkConfig

    def __init__(self, num_classes: int, ch: int = 32, latent_dim: int = 128, disc_ch: int = 32,
                 conditional: bool = True):
        super().__init__()
        self.num_classes = num_classes
        self.conditional = conditional
        self.encoder = MoodcatEncoder(ch=ch, latent_dim=latent_dim)
        self.decoder = BigGANDecoder(num_classes, ch=ch, latent_dim=latent_dim, conditional=conditional)
        self.discriminator = UNetDiscriminator(num_classes if conditional else 1, ch=disc_ch)
        self.decoder_ema = copy.deepcopy(self.decoder).requires_grad_(False)
        # channels_last conv weights make the convolutions (and hence most activations) NHWC: on
        # CPU, nearest upsampling of NCHW maps is 10-30x slower than of NHWC ones, which made the
        # decoder ~35 % slower for scoring and ~25 % for GAN training (torch 2.x, measured by
        # scripts/bench_moodcat_speed.py). Values are unchanged; state dicts load either way.
        self.to(memory_format=torch.channels_last)

    def discriminator_labels(self, y: torch.Tensor) -> torch.Tensor:
        """Labels fed to the discriminator: ``y`` (conditional) or zeros (unconditional ablation)."""
        return y if self.conditional else torch.zeros_like(y)

    def discriminate(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(bottleneck_logit ``[B]``, pixel_logits ``[B,1,32,32]``) for images in [-1,1]; high = real."""
        return self.discriminator(x, self.discriminator_labels(y))

    def generator_parameters(self):
        """Parameters optimised by the generator step: encoder and (non-EMA) decoder."""
        return list(self.encoder.parameters()) + list(self.decoder.parameters())

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        """``decoder_ema <- decay * decoder_ema + (1 - decay) * decoder`` for parameters;
        buffers (BN running statistics, spectral-norm vectors) are copied. ``decay=0`` copies all.
        One multi-tensor (``_foreach``) kernel per kind instead of one per tensor: the same values
        as per-tensor ``lerp_``/``copy_``, with ~100x fewer kernel launches on a GPU.
        """
        torch._foreach_lerp_(list(self.decoder_ema.parameters()), [p.detach() for p in self.decoder.parameters()],
                             1.0 - decay)
        torch._foreach_copy_(list(self.decoder_ema.buffers()), list(self.decoder.buffers()))

    @torch.no_grad()
    def synthesize(self, x: torch.Tensor, y: torch.Tensor, mask_style: str = "random_rectangle",
                   area: Tuple[float, float] = TEST_AREA, generator: Optional[torch.Generator] = None,
                   use_ema: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mask ``x`` and synthesise it back conditioned on ``y``.

        x ``[B,3,32,32]`` in [-1,1], y ``[B]`` int64 -> (masked ``[B,3,32,32]``, synthesis
        ``[B,3,32,32]``), both in [-1,1]. ``generator`` makes the masks reproducible.
        """
        masked = apply_mask(x, mask_style, area=area, generator=generator)
        return masked, self.synthesize_from_masked(masked, y, use_ema=use_ema)

    @torch.no_grad()
    def synthesize_from_masked(self, masked: torch.Tensor, y: torch.Tensor,
                               use_ema: bool = False) -> torch.Tensor:
        """Synthesis ``[B,3,32,32]`` in [-1,1] from already-masked images, in eval mode.

        Runs the encoder (z = mu) and the chosen decoder in eval mode and restores their modes.
        """
        decoder = self.decoder_ema if use_ema else self.decoder
        modes = (self.encoder.training, decoder.training)
        self.encoder.eval()
        decoder.eval()
        try:
            with parametrize.cached():
                _, mu, _ = self.encoder(masked)
                return decoder(mu, y)
        finally:
            self.encoder.train(modes[0])
            decoder.train(modes[1])
