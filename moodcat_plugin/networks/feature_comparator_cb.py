"""Cb variant ``feature_comparator_cb`` (not in the paper): compare x and x' in the frozen
classifier's feature space.

MOODCAT's Cb must learn from scratch what makes a synthesis semantically different from its
input. This variant starts from the semantics the deployed classifier already has: its
penultimate features f(x) and f(x') (read-only: the classifier is never trained, and is not part
of this module's state dict or checkpoint) feed a small trainable comparator::

    h = MLP([f(x), f(x'), |f(x) - f(x')|])            (two ReLU layers of width ``ch``)
    logit = linear(h) + <embed(y), h>                   (projection on the condition y)
    logit = linear(h)                                   (``label_conditioned: false``)

``label_conditioned: false`` takes y away from the comparator. With the paper's pairs (x under
its true label against x under a random one, same x) Cb must then read x' to tell them apart,
since (x, y) alone no longer carries the answer: the conditioned head reaches 0.93 accuracy
without looking at x' at all (BENCHMARKS.md, issue 8). Not in the paper.

forward(x ``[B,3,32,32]`` in [-1,1], x_synth same, y ``[B]`` int64) -> logit ``[B]``, HIGH =
mismatch = OOD, as :class:`ConditionalBinaryClassifier`, so it trains and scores unchanged.
The images are converted to the classifier's input normalisation (benchmark mean/std).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from moodcat_plugin.registry import register_network
from moodcat_plugin.schema import FLAG, NetworkConfig, integer


class FeatureComparatorConfig(NetworkConfig):
    """The ``cb_network:`` section for ``name: feature_comparator_cb``."""

    ch: integer(ge=8) = 128   # width of the comparator (named as the paper Cb's width, so variants swap names only)
    label_conditioned: FLAG = True   # false: no projection on y, the decision must come from comparing x with x'


@register_network("feature_comparator_cb")
class FeatureComparatorCb(nn.Module):
    """Trainable comparator head over a frozen classifier's penultimate features (see module doc)."""

    config_schema = FeatureComparatorConfig
    needs_classifier = True
    neutral_settings = {"label_conditioned": True}  # left out of cache keys: Cbs trained before the switch keep theirs

    def __init__(self, num_classes: int, classifier: nn.Module, mean: Sequence[float], std: Sequence[float],
                 ch: int = 128, label_conditioned: bool = True):
        super().__init__()
        self.num_classes = num_classes
        self.__dict__["classifier"] = classifier  # a plain attribute: not a submodule, never saved or trained
        feature_dim = int(classifier.feature_size)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(3 * feature_dim, ch), nn.ReLU(), nn.Linear(ch, ch), nn.ReLU())
        self.linear = nn.Linear(ch, 1)
        self.embed = nn.Embedding(num_classes, ch) if label_conditioned else None
        if self.embed is not None:
            nn.init.normal_(self.embed.weight, std=0.02)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Classifier penultimate features (B, D) of images in [-1, 1]."""
        self.classifier.eval()
        normalised = ((images + 1.0) * 0.5 - self.mean) / self.std
        return self.classifier(normalised, return_feature=True)[1].float()

    def forward(self, x: torch.Tensor, x_synth: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        both = self.features(torch.cat([x, x_synth]))
        fx, fs = both[: len(x)], both[len(x):]
        h = self.mlp(torch.cat([fx, fs, (fx - fs).abs()], dim=1))
        logit = self.linear(h).squeeze(1)
        return logit if self.embed is None else logit + (self.embed(y) * h).sum(dim=1)
