"""MOODCAT encoder E: masked image -> Gaussian latent (VAE-style), label-agnostic.

Layout (reference, ``ch=32``, latent 128, 460,928 parameters): four 4x4 convolutions without
bias, 3->ch (stride 2, 32->16), ch->2ch (stride 2, 16->8, BN), 2ch->4ch (stride 2, 8->4, BN),
4ch->4ch (4x4 valid, 4->1); LeakyReLU(0.2) after the first three (none after the last, as in the
reference code); flatten; two ``Linear(4ch, latent_dim)`` heads give ``mu`` and ``logvar``.
The class label is NOT an input: conditioning happens only in the decoder.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from moodcat_plugin.registry import register_network


def _conv4x4(in_channels: int, out_channels: int, stride: int, padding: int) -> nn.Conv2d:
    """Bias-free 4x4 convolution (DCGAN style)."""
    return nn.Conv2d(in_channels, out_channels, 4, stride=stride, padding=padding, bias=False)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, sample: bool,
                   noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``mu + exp(logvar / 2) * eps`` if ``sample``, else ``mu``; ``eps`` is ``noise`` when given
    (same shape as ``mu``), else drawn ``~ N(0, I)``."""
    if not sample:
        return mu
    return mu + torch.exp(0.5 * logvar) * (torch.randn_like(mu) if noise is None else noise)


@register_network("moodcat_encoder")
class MoodcatEncoder(nn.Module):
    """Convolutional VAE encoder for 32x32 RGB images.

    forward(x ``[B,3,32,32]`` in [-1,1], noise=None) -> (z, mu, logvar), each ``[B,latent_dim]``
    unbounded. In training mode ``z = mu + exp(logvar/2) * eps`` (``eps = noise`` when given, e.g.
    drawn for a global batch across processes); in eval mode ``z = mu`` (deterministic).

    Where we differ from the reference: its scoring and Cb training sample ``z`` from
    ``N(mu, exp(logvar))``; we use ``z = mu`` there (the generator is in eval mode), so one image
    gets one synthesis and one score, run after run. The effect on AUROC has not been measured.
    """

    def __init__(self, ch: int = 32, latent_dim: int = 128):
        super().__init__()
        self.latent_dim = latent_dim
        self.features = nn.Sequential(
            _conv4x4(3, ch, stride=2, padding=1),                 # 32 -> 16
            nn.LeakyReLU(0.2),
            _conv4x4(ch, 2 * ch, stride=2, padding=1),            # 16 -> 8
            nn.BatchNorm2d(2 * ch),
            nn.LeakyReLU(0.2),
            _conv4x4(2 * ch, 4 * ch, stride=2, padding=1),        # 8 -> 4
            nn.BatchNorm2d(4 * ch),
            nn.LeakyReLU(0.2),
            _conv4x4(4 * ch, 4 * ch, stride=1, padding=0),        # 4 -> 1
            nn.Flatten(),
        )
        self.mu_head = nn.Linear(4 * ch, latent_dim)
        self.logvar_head = nn.Linear(4 * ch, latent_dim)

    def forward(self, x: torch.Tensor, noise: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if x.shape[-2:] != (32, 32):
            raise ValueError(f"MoodcatEncoder expects 32x32 images, got {tuple(x.shape)}")
        h = self.features(x)
        mu = self.mu_head(h)
        logvar = self.logvar_head(h)
        return reparameterize(mu, logvar, sample=self.training, noise=noise), mu, logvar
