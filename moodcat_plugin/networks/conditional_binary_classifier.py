"""MOODCAT conditional binary classifier Cb: does the synthesis x' match x given label y?

Layout (reference, ``ch=64``; 272,450 parameters for 10 classes, 278,210 for 100): a BigGAN
projection discriminator for 32x32 inputs with 6 channels (x and x' concatenated): optimized
block 6->ch (32->16), self-attention at 16x16, pre-activation block ch->ch with downsampling
(16->8), two pre-activation blocks ch->ch at 8x8; ReLU, sum pooling over space, then
``SNLinear(ch->1)(h) + <SN-embed(y), h>``.

``relu_shortcut=True`` reproduces the authors' Cb exactly (its pre-activation blocks' shortcuts
read ``ReLU(x)``, see :class:`DownResBlock`); weights imported from the authors' files
(:mod:`moodcat_plugin.moodcat.authors_weights`) set it. Cbs trained here use the default ``False``.

Output convention (as in the public code): the logit is HIGH for a semantic MISMATCH between
x and its class-conditional synthesis x' -- i.e. high = OOD. Trained by ``moodcat_cb`` with the
hinge loss of paper Eq. 2 (``relu(1 + s)`` on matched in-distribution pairs, ``relu(1 - s)`` on
mismatched ones); the Cb training code is not public.
"""
from __future__ import annotations

import torch
from torch import nn

from moodcat_plugin.networks.moodcat_layers import (
    DownResBlock, SelfAttention2d, projection_logit, sn_embedding, sn_linear)
from moodcat_plugin.registry import register_network
from moodcat_plugin.schema import FLAG, NetworkConfig, integer


class CbNetworkConfig(NetworkConfig):
    """The ``cb_network:`` section of ``configs/postprocessors/moodcat.yml``."""

    ch: integer(ge=8) = 64  # the self-attention block needs ch // 8 >= 1 channels
    relu_shortcut: FLAG = False  # True only for the authors' released Cb weights


@register_network("moodcat_cb")
class ConditionalBinaryClassifier(nn.Module):
    """Projection discriminator on the pair (x, x') conditioned on the label y.

    forward(x ``[B,3,32,32]`` in [-1,1], x_synth ``[B,3,32,32]`` in [-1,1], y ``[B]`` int64)
    -> logit ``[B]`` (unbounded; sigmoid gives P(mismatch); HIGH = mismatch = OOD).
    """

    config_schema = CbNetworkConfig
    neutral_settings = {"relu_shortcut": False}  # left out of cache keys: Cbs trained before the switch keep theirs

    def __init__(self, num_classes: int, ch: int = 64, relu_shortcut: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.blocks = nn.Sequential(
            DownResBlock(6, ch, preactivation=False),                                   # 32 -> 16
            SelfAttention2d(ch),                                                        # at 16x16
            DownResBlock(ch, ch, shortcut_after_relu=relu_shortcut),                    # 16 -> 8
            DownResBlock(ch, ch, downsample=False, shortcut_after_relu=relu_shortcut),  # 8x8
            DownResBlock(ch, ch, downsample=False, shortcut_after_relu=relu_shortcut),  # 8x8
        )
        self.linear = sn_linear(ch, 1)
        self.embed = sn_embedding(num_classes, ch)

    def forward(self, x: torch.Tensor, x_synth: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.blocks(torch.cat([x, x_synth], dim=1))
        pooled = torch.relu(h).sum(dim=(2, 3))
        return projection_logit(pooled, self.linear, self.embed, y)
