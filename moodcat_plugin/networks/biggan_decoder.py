"""MOODCAT decoder D: a class-conditional BigGAN generator for 32x32 images.

Layout (reference, ``ch=32``, latent 128; 3,821,955 parameters for 10 classes, 3,833,475 for
100): SN Linear(latent -> 16ch*4*4) reshaped to ``[B,16ch,4,4]``; three pre-activation up-blocks
16ch->8ch (4->8), 8ch->4ch (8->16), 4ch->ch (16->32), each with class-conditional BN driven by
one shared, *non*-spectral-normalised ``nn.Embedding(num_classes, 128)`` (as in the reference;
no hierarchical z, no self-attention); then BN (affine) -> ReLU -> SNConv3x3(ch->3) -> tanh.

``conditional=False`` is the unconditional ablation: the blocks use affine BN, there is no
embedding and ``y`` is ignored. (The reference's unconditional variant instead modulates BN
with z; this project uses plain BN, see the ablation docs.)
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from moodcat_plugin.networks.moodcat_layers import (
    PlainBatchNorm2d, UpResBlock, orthogonal_init_, sn_conv2d, sn_linear)
from moodcat_plugin.registry import register_network

EMBEDDING_DIM = 128
CHANNEL_MULTIPLIERS = (16, 8, 4, 1)  # 4x4, 8x8, 16x16, 32x32


@register_network("biggan_decoder")
class BigGANDecoder(nn.Module):
    """BigGAN generator ``(z, y) -> image``.

    forward(z ``[B,latent_dim]``, y ``[B]`` int64 class ids (ignored and may be None when
    ``conditional=False``)) -> image ``[B,3,32,32]`` in [-1,1] (tanh).
    """

    def __init__(self, num_classes: int, ch: int = 32, latent_dim: int = 128,
                 conditional: bool = True, bottom_width: int = 4):
        super().__init__()
        self.num_classes = num_classes
        self.latent_dim = latent_dim
        self.conditional = conditional
        self.bottom_width = bottom_width
        widths = [m * ch for m in CHANNEL_MULTIPLIERS]
        self.shared_embedding = (orthogonal_init_(nn.Embedding(num_classes, EMBEDDING_DIM))
                                 if conditional else None)
        cond_dim = EMBEDDING_DIM if conditional else None
        self.linear = sn_linear(latent_dim, widths[0] * bottom_width * bottom_width)
        self.blocks = nn.ModuleList(
            UpResBlock(c_in, c_out, cond_dim=cond_dim) for c_in, c_out in zip(widths, widths[1:]))
        self.output_bn = PlainBatchNorm2d(widths[-1])
        self.output_conv = sn_conv2d(widths[-1], 3, 3)

    def class_condition(self, y: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """Shared class embedding ``[B,128]`` for labels ``y`` ``[B]``; None if unconditional."""
        if not self.conditional:
            return None
        if y is None:
            raise ValueError("the conditional BigGANDecoder needs class labels y")
        return self.shared_embedding(y)

    def forward(self, z: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        cond = self.class_condition(y)
        h = self.linear(z).view(z.shape[0], -1, self.bottom_width, self.bottom_width)
        for block in self.blocks:
            h = block(h, cond)
        h = torch.relu(self.output_bn(h))
        return torch.tanh(self.output_conv(h))
