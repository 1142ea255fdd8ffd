"""U-Net GAN discriminator used to train the MOODCAT decoder (32x32, projection-conditional).

Layout (reference, ``ch=32``, 10 classes; 4,145,474 parameters here vs 4,145,507 in the
reference, whose extra 33 belong to an SNLinear(32->1) it builds but never calls):

* encoder: optimized block 3->ch (32->16), pre-activation blocks ch->4ch (16->8) and
  4ch->16ch (8->4); spectrally normalised BigGAN ``DBlock``s, no attention.
* bottleneck head: ``SNLinear(16ch->1)(sum_hw ReLU(h)) + <SN-embed_16ch(y), sum_hw ReLU(h)>``.
* decoder: norm-free pre-activation up-blocks 16ch->4ch (4->8), concat the 8x8 encoder skip
  (-> 8ch), 8ch->ch (8->16), concat the 16x16 skip (-> 2ch), 2ch->ch (16->32).
* pixel head: ``Conv1x1(ch->1)(h) + <SN-embed_ch(y), h>`` per pixel (the reference uses a
  plain, not spectrally normalised, 1x1 conv and no activation before it; so do we).
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from moodcat_plugin.networks.moodcat_layers import (
    DownResBlock, UpResBlock, orthogonal_init_, projection_logit, sn_embedding, sn_linear)
from moodcat_plugin.registry import register_network


@register_network("unet_discriminator")
class UNetDiscriminator(nn.Module):
    """Projection U-Net discriminator with a global and a per-pixel real/fake head.

    forward(x ``[B,3,32,32]`` in [-1,1], y ``[B]`` int64) ->
    (bottleneck_logit ``[B]``, pixel_logits ``[B,1,32,32]``); raw logits, high = real.
    """

    def __init__(self, num_classes: int, ch: int = 32):
        super().__init__()
        self.num_classes = num_classes
        self.down1 = DownResBlock(3, ch, preactivation=False)           # 32 -> 16
        self.down2 = DownResBlock(ch, 4 * ch)                           # 16 -> 8
        self.down3 = DownResBlock(4 * ch, 16 * ch)                      # 8 -> 4
        self.bottleneck_linear = sn_linear(16 * ch, 1)
        self.bottleneck_embed = sn_embedding(num_classes, 16 * ch)
        self.up1 = UpResBlock(16 * ch, 4 * ch, use_norm=False)          # 4 -> 8
        self.up2 = UpResBlock(8 * ch, ch, use_norm=False)               # 8 -> 16 (after skip)
        self.up3 = UpResBlock(2 * ch, ch, use_norm=False)               # 16 -> 32 (after skip)
        self.pixel_conv = orthogonal_init_(nn.Conv2d(ch, 1, kernel_size=1))
        self.pixel_embed = sn_embedding(num_classes, ch)

    def bottleneck_head(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Global logit ``[B]`` from bottleneck features ``[B,16ch,4,4]``."""
        pooled = torch.relu(h).sum(dim=(2, 3))
        return projection_logit(pooled, self.bottleneck_linear, self.bottleneck_embed, y)

    def pixel_head(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-pixel logits ``[B,1,32,32]`` from decoder features ``[B,ch,32,32]``."""
        class_vectors = self.pixel_embed(y)[:, :, None, None]
        return self.pixel_conv(h) + (class_vectors * h).sum(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        skip16 = self.down1(x)
        skip8 = self.down2(skip16)
        h = self.down3(skip8)
        bottleneck_logit = self.bottleneck_head(h, y)
        h = self.up1(h)
        h = self.up2(torch.cat([h, skip8], dim=1))
        h = self.up3(torch.cat([h, skip16], dim=1))
        return bottleneck_logit, self.pixel_head(h, y)
