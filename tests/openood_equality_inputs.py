"""Inputs of the OpenOOD equality fixture (tests/fixtures/openood_v15_scores.npz): a ResNet18_32x32
(width 0.125, 10 classes, 64-d feature) with weights drawn from a numpy seed and fixed images, built
identically by the test and by the scratch script that ran OpenOOD's postprocessors on them.

Images (normalised, float32 (N, 3, 32, 32)): ID = smooth random fields (bilinearly upsampled 4x4
noise), OOD = half white noise, half smooth fields of another contrast. Labels of the ID training
images: the network's own prediction for 70 % (so every class has correctly classified images for
SHE), a seeded random class for the rest. The fc bias is set so that the mean training logit is
equal for every class (spreads the predictions of a random network over the classes).
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import torch
import torch.nn.functional as F

from moodcat_plugin.networks.resnet18_32x32 import ResNet18_32x32

NUM_CLASSES = 10
WIDTH = 0.125
SIZES = {"train": 400, "val": 100, "ood_val": 100, "test": 100, "ood_test": 100}
#: Hyper-parameters of the fixture run: OpenOOD v1.5's defaults and grids, except where the small
#: network and sets need smaller values (ViM dim below the 64-d feature, KNN K below 400 images).
ARGS = {
    "msp": ({}, {}), "ebo": ({"temperature": 1}, {}), "mls": ({}, {}), "temp_scaling": ({}, {}),
    "odin": ({"temperature": 1000, "noise": 0.0014}, {"temperature": [1, 10, 100, 1000], "noise": [0.0014, 0.0028]}),
    "gen": ({"gamma": 0.1, "M": 100}, {"gamma": [0.01, 0.1, 0.5, 1, 2, 5, 10], "M": [10, 50, 100, 200, 500, 1000]}),
    "klm": ({}, {}), "mds": ({}, {}), "rmds": ({}, {}),
    "knn": ({"K": 50}, {"K": [1, 5, 10, 50, 200]}),
    "vim": ({"dim": 32}, {"dim": [16, 32, 48]}),
    "react": ({"percentile": 90}, {"percentile": [85, 90, 95, 99]}),
    "ash": ({"percentile": 90}, {"percentile": [65, 70, 75, 80, 85, 90, 95]}),
    "scale": ({"percentile": 85}, {"percentile": [65, 70, 75, 80, 85, 90, 95]}),
    "she": ({"metric": "inner_product"}, {}),
    "dice": ({"p": 90}, {}),
}
APS = ("odin", "gen", "knn", "vim", "react", "ash", "scale")
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # CIFAR-10, as OpenOOD's normalization_dict


def smooth_fields(rng: np.random.Generator, n: int, contrast: float) -> np.ndarray:
    coarse = torch.from_numpy(rng.normal(0.5, contrast, (n, 3, 4, 4)).astype(np.float32))
    return F.interpolate(coarse, size=32, mode="bilinear", align_corners=False).clamp(0, 1).numpy()


def normalise(images: np.ndarray) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return ((torch.from_numpy(images) - mean) / std).float().contiguous()


def images(seed: int = 0) -> Dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    sets = {}
    for name in ("train", "val", "test"):
        sets[name] = normalise(smooth_fields(rng, SIZES[name], 0.25))
    for name in ("ood_val", "ood_test"):
        half = SIZES[name] // 2
        noise = rng.uniform(0, 1, (half, 3, 32, 32)).astype(np.float32)
        sets[name] = normalise(np.concatenate([noise, smooth_fields(rng, SIZES[name] - half, 0.12)]))
    return sets


def seeded_network(seed: int = 0) -> ResNet18_32x32:
    """The fixture's network in eval mode (weights from numpy's default_rng(seed), see module doc)."""
    rng = np.random.default_rng(seed)
    net = ResNet18_32x32(num_classes=NUM_CLASSES, width=WIDTH)
    state = net.state_dict()
    for name in sorted(state):
        shape = tuple(state[name].shape)
        if name.endswith("num_batches_tracked"):
            continue
        if name.endswith("running_var") or (name.endswith(".weight") and len(shape) == 1):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("running_mean") or name.endswith(".bias"):
            value = rng.normal(0.0, 0.1, shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        state[name] = torch.from_numpy(value.astype(np.float32))
    net.load_state_dict(state)
    net.eval()
    with torch.no_grad():
        _, features = net(images(seed)["train"], return_feature=True)
        net.fc.bias.copy_(-(features @ net.fc.weight.T).mean(0))
    return net


def train_labels(net: ResNet18_32x32, train: torch.Tensor, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed + 1)
    with torch.no_grad():
        labels = net(train).argmax(1).numpy()
    flip = rng.uniform(size=len(labels)) < 0.3
    labels[flip] = rng.integers(0, NUM_CLASSES, int(flip.sum()))
    return torch.from_numpy(labels.astype(np.int64))


class NamedBatches(list):
    """An OpenOOD-style loader: a list of {'data', 'label'} dicts, with a ``name`` (our evaluator's key)."""

    def __init__(self, name: str, data: torch.Tensor, labels: torch.Tensor, size: int = 50):
        super().__init__({"data": data[i:i + size].contiguous(), "label": labels[i:i + size]}
                         for i in range(0, len(data), size))
        self.name = name


def loaders(seed: int = 0) -> Dict[str, NamedBatches]:
    """train/val/test (ID; val/test labelled with the network's prediction), ood_val/ood_test (label -1)."""
    net, sets = seeded_network(seed), images(seed)
    labels = {"train": train_labels(net, sets["train"], seed)}
    with torch.no_grad():
        for name in ("val", "test"):
            labels[name] = net(sets[name]).argmax(1)
    for name in ("ood_val", "ood_test"):
        labels[name] = -torch.ones(len(sets[name]), dtype=torch.long)
    return {name: NamedBatches(name, sets[name], labels[name]) for name in sets}


#: The APS tie case: a stand-in detector whose val AUROC is the same for these three ODIN
#: candidates and 0.5 (constant conf) for the other five.
TIED = {(10, 0.0028), (100, 0.0028), (1000, 0.0014)}


def tied_conf(data: torch.Tensor, temperature, noise) -> torch.Tensor:
    """(B,) -(per-image pixel std - 0.75)^2 for the tied candidates (ID images have std ~0.75, the
    OOD halves ~1.16 and ~0.4), zeros otherwise."""
    if (temperature, noise) in TIED:
        return -(data.detach().flatten(1).std(dim=1) - 0.75) ** 2
    return torch.zeros(len(data))
