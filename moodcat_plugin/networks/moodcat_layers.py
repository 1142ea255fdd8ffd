"""Shared building blocks of the MOODCAT networks (BigGAN / U-Net GAN style, 32x32 images).

Spectral normalisation uses :func:`torch.nn.utils.parametrizations.spectral_norm` everywhere.
Its power-iteration vectors ``u`` and ``v`` are *buffers*, so ``model.parameters()`` counts only
the un-normalised weight (``<layer>.parametrizations.weight.original``) and the bias -- the same
numbers the reference implementation reports (its own SN also keeps ``u`` as buffers).

Weights of convolutions, linears and embeddings built here are orthogonally initialised before
spectral normalisation is attached, as in BigGAN (``G_init = D_init = 'ortho'``).

Conventions: feature maps are ``B x C x H x W`` float tensors; class labels ``y`` are int64
tensors of shape ``[B]`` with values in ``[0, num_classes)``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

# --------------------------------------------------------------------------------------------
# Layer helpers
# --------------------------------------------------------------------------------------------


def orthogonal_init_(layer: nn.Module) -> nn.Module:
    """Orthogonally initialise ``layer.weight`` in place (BigGAN 'ortho' init); returns ``layer``."""
    nn.init.orthogonal_(layer.weight)
    return layer


def sn_conv2d(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
              padding: Optional[int] = None, bias: bool = True) -> nn.Conv2d:
    """Spectrally normalised ``nn.Conv2d``; ``padding`` defaults to 'same' (``kernel_size // 2``).

    Parameters: ``in*out*k*k`` (+ ``out`` bias).
    """
    if padding is None:
        padding = kernel_size // 2
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                     bias=bias)
    return spectral_norm(orthogonal_init_(conv))


def sn_linear(in_features: int, out_features: int, bias: bool = True) -> nn.Linear:
    """Spectrally normalised ``nn.Linear``. Parameters: ``in*out`` (+ ``out`` bias)."""
    return spectral_norm(orthogonal_init_(nn.Linear(in_features, out_features, bias=bias)))


def sn_embedding(num_embeddings: int, embedding_dim: int) -> nn.Embedding:
    """Spectrally normalised ``nn.Embedding`` (projection-discriminator class vectors)."""
    return spectral_norm(orthogonal_init_(nn.Embedding(num_embeddings, embedding_dim)))


def count_parameters(module: nn.Module) -> int:
    """Number of trainable values, ``sum(p.numel() for p in module.parameters())``."""
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------


class ClassConditionalBatchNorm2d(nn.Module):
    """BigGAN conditional BatchNorm: ``BN(x) * (1 + W_g c) + W_b c`` with BN without affine.

    ``W_g`` and ``W_b`` are spectrally normalised linears *without bias* from the condition
    vector ``c`` (``cond_dim``, e.g. the shared 128-d class embedding) to ``num_features``.
    Parameters: ``2 * cond_dim * num_features``; running statistics are buffers.

    forward(x ``[B,C,H,W]``, cond ``[B,cond_dim]``) -> ``[B,C,H,W]``.
    """

    def __init__(self, num_features: int, cond_dim: int, eps: float = 1e-5,
                 momentum: float = 0.1):
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum, affine=False)
        self.gain = sn_linear(cond_dim, num_features, bias=False)
        self.bias = sn_linear(cond_dim, num_features, bias=False)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gain = (1.0 + self.gain(cond)).unsqueeze(-1).unsqueeze(-1)
        bias = self.bias(cond).unsqueeze(-1).unsqueeze(-1)
        return self.bn(x) * gain + bias


class PlainBatchNorm2d(nn.BatchNorm2d):
    """Ordinary affine ``BatchNorm2d`` whose forward accepts (and ignores) a condition.

    Lets residual blocks treat conditional and unconditional normalisation alike.
    forward(x ``[B,C,H,W]``, cond=None) -> ``[B,C,H,W]``. Parameters: ``2 * C``.
    """

    def forward(self, x: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        return super().forward(x)


class NoNorm(nn.Module):
    """Identity taking ``(x, cond)``; used for normalisation-free up-blocks (U-Net decoder)."""

    def forward(self, x: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        return x


def make_block_norm(num_features: int, cond_dim: Optional[int], use_norm: bool = True) -> nn.Module:
    """Norm layer for an up-block: CBN if ``cond_dim`` is given, affine BN if not, or none."""
    if not use_norm:
        return NoNorm()
    if cond_dim is None:
        return PlainBatchNorm2d(num_features)
    return ClassConditionalBatchNorm2d(num_features, cond_dim)


# --------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------


class SelfAttention2d(nn.Module):
    """BigGAN / SAGAN self-attention: ``x + gamma * o(attend(theta(x), phi(x), g(x)))``.

    ``theta``, ``phi``: SN 1x1 conv ``C -> C/8``; ``g``: SN 1x1 conv ``C -> C/2``; ``o``: SN 1x1
    conv ``C/2 -> C``; all without bias. Keys and values are 2x2 max-pooled (H and W must be
    even). ``gamma`` starts at 0 so the block begins as the identity.
    Parameters: ``C*C/8*2 + C*C/2*2 + 1`` (5,121 for C=64).

    forward(x ``[B,C,H,W]``) -> ``[B,C,H,W]``.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.theta = sn_conv2d(channels, channels // 8, 1, bias=False)
        self.phi = sn_conv2d(channels, channels // 8, 1, bias=False)
        self.g = sn_conv2d(channels, channels // 2, 1, bias=False)
        self.o = sn_conv2d(channels // 2, channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        query = self.theta(x).flatten(2)                       # B x C/8 x HW
        key = F.max_pool2d(self.phi(x), 2).flatten(2)          # B x C/8 x HW/4
        value = F.max_pool2d(self.g(x), 2).flatten(2)          # B x C/2 x HW/4
        attention = torch.softmax(query.transpose(1, 2) @ key, dim=-1)  # B x HW x HW/4
        attended = (value @ attention.transpose(1, 2)).view(batch, channels // 2, height, width)
        return x + self.gamma * self.o(attended)


# --------------------------------------------------------------------------------------------
# Residual blocks
# --------------------------------------------------------------------------------------------


def upsample_nearest2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour 2x upsampling, ``[B,C,H,W] -> [B,C,2H,2W]``."""
    return F.interpolate(x, scale_factor=2, mode="nearest")


class UpResBlock(nn.Module):
    """Pre-activation residual up-block (BigGAN ``GBlock``; U-Net GAN ``GBlock2`` without norm).

    Main path: norm1 -> ReLU -> nearest x2 -> SNConv3x3(in->out) -> norm2 -> ReLU ->
    SNConv3x3(out->out). Shortcut: nearest x2 -> SNConv1x1(in->out).
    ``cond_dim`` given: class-conditional BN; ``cond_dim=None``: affine BN;
    ``use_norm=False``: no normalisation at all (then ``cond`` is ignored).

    forward(x ``[B,in,H,W]``, cond ``[B,cond_dim]`` or None) -> ``[B,out,2H,2W]``.
    """

    def __init__(self, in_channels: int, out_channels: int, cond_dim: Optional[int] = None,
                 use_norm: bool = True):
        super().__init__()
        self.norm1 = make_block_norm(in_channels, cond_dim, use_norm)
        self.conv1 = sn_conv2d(in_channels, out_channels, 3)
        self.norm2 = make_block_norm(out_channels, cond_dim, use_norm)
        self.conv2 = sn_conv2d(out_channels, out_channels, 3)
        self.shortcut = sn_conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = upsample_nearest2x(F.relu(self.norm1(x, cond)))
        h = self.conv1(h)
        h = self.conv2(F.relu(self.norm2(h, cond)))
        return h + self.shortcut(upsample_nearest2x(x))


class DownResBlock(nn.Module):
    """BigGAN discriminator residual block (``DBlock``, wide: hidden width = ``out_channels``).

    Main path: [ReLU if ``preactivation``] -> SNConv3x3(in->out) -> ReLU -> SNConv3x3(out->out)
    -> [2x2 average pool if ``downsample``]. Shortcut: SNConv1x1 when the channel count or the
    resolution changes, otherwise identity; with pre-activation the 1x1 conv runs before the
    pooling, without it (the first, "optimized" block, whose input is the image) after it.

    ``shortcut_after_relu`` (pre-activation blocks only): the shortcut reads ``ReLU(x)`` instead of
    ``x``. The authors' Cb (``Dis_ood.DiscBlock``) does this by accident -- its in-place ReLU
    overwrites the tensor the shortcut aliases -- and their released Cb weights were trained so;
    BigGAN's own block (and this project's Cb by default) reads ``x``. Changes logits by ~9.

    forward(x ``[B,in,H,W]``) -> ``[B,out,H/2,W/2]`` (or ``[B,out,H,W]`` without downsampling).
    """

    def __init__(self, in_channels: int, out_channels: int, preactivation: bool = True,
                 downsample: bool = True, shortcut_after_relu: bool = False):
        super().__init__()
        self.preactivation = preactivation
        self.downsample = downsample
        self.shortcut_after_relu = shortcut_after_relu and preactivation
        self.conv1 = sn_conv2d(in_channels, out_channels, 3)
        self.conv2 = sn_conv2d(out_channels, out_channels, 3)
        learnable_shortcut = in_channels != out_channels or downsample
        self.shortcut = sn_conv2d(in_channels, out_channels, 1) if learnable_shortcut else None

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2) if self.downsample else x

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut is None:
            return self._pool(x)
        if self.preactivation:
            return self._pool(self.shortcut(x))
        return self.shortcut(self._pool(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(x) if self.preactivation else x
        shortcut = self._shortcut(h if self.shortcut_after_relu else x)
        return self._pool(self.conv2(F.relu(self.conv1(h)))) + shortcut


def projection_logit(features: torch.Tensor, linear: nn.Module, embedding: nn.Module,
                     y: torch.Tensor) -> torch.Tensor:
    """Projection-discriminator head: ``linear(h) + <embedding(y), h>``.

    features ``[B,C]`` (already pooled), y ``[B]`` int64 -> logit ``[B]`` (unbounded).
    """
    return linear(features).squeeze(1) + (embedding(y) * features).sum(dim=1)
