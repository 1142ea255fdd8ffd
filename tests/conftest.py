"""Shared fixtures: tiny configs on the embedded demo benchmark (no ../shared needed)."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from moodcat_plugin.evaluation import Evaluator
from moodcat_plugin.pipeline import Runner, build_config


@pytest.fixture(scope="session")
def shared_checkpoints(tmp_path_factory):
    """One checkpoint folder for the whole session: identical tiny models are trained once."""
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture
def script():
    """``script(name)`` imports ``scripts/<name>.py`` as a module (the scripts are not a package)."""
    folder = str(Path(__file__).resolve().parents[1] / "scripts")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module


@pytest.fixture
def make_config(tmp_path, shared_checkpoints):
    """``make_config(methods, *overrides, benchmark='demo', profile='tiny')`` -> Config on CPU in tmp_path."""

    def factory(methods=("msp",), *overrides, benchmark="demo", profile="tiny", **flags):
        base_flags = {"output_dir": str(tmp_path / "results"), "checkpoint_dir": str(shared_checkpoints),
                      "device": "cpu", "progress": False}
        base_flags.update(flags)
        return build_config(benchmark, list(methods), profile, overrides=list(overrides), flags=base_flags)

    return factory


@pytest.fixture
def shrink():
    """``shrink(runner, count=24)`` keeps the first ``count`` images of every evaluation set (train is
    left whole): scoring with the full-size random VGG trunks of LPIPS/DISTS dominates a tiny run."""

    def keep_first(runner: Runner, count: int = 24) -> Runner:
        bench = runner.benchmark
        bench.id = {k: (v if k == "train" else v.subset(slice(0, count))) for k, v in bench.id.items()}
        bench.ood_val = bench.ood_val.subset(slice(0, count))
        bench.near = {k: v.subset(slice(0, count)) for k, v in bench.near.items()}
        bench.far = {k: v.subset(slice(0, count)) for k, v in bench.far.items()}
        runner.evaluator = Evaluator(runner.config, bench, runner.results_dir)
        return runner

    return keep_first


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Tiny models on a shared 2-core machine: a second spinning OpenMP thread only slows them down
    (up to ~50x when the other core is busy)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    np.random.seed(0)
    yield


#: The npz files the CIFAR benchmarks and the paper's tables read: (classes, images per class).
#: Like the real pack, SVHN, LSUN and Places365 are absent.
FAKE_PACK = {
    "cifar10_train20k": (10, 8), "cifar10_val": (10, 3), "cifar10_test": (10, 4),
    "cifar100_train20k": (100, 1), "cifar100_val": (100, 1), "cifar100_test": (100, 1),
    "tin_test_for_cifar10": (1, 20), "tin_test_for_cifar100": (1, 20), "tin_val_for_cifar10": (1, 16),
    "tin_val_for_cifar100": (1, 16), "tin_outliers": (1, 40), "mnist_test": (1, 20), "texture_test": (1, 20),
}


@pytest.fixture(scope="session")
def fake_data_pack(tmp_path_factory):
    """A tiny stand-in for ../shared/data: random 32x32 images under the real file names and class
    ids (CI has no data pack). For shapes and plumbing only: every score on it is noise."""
    folder = tmp_path_factory.mktemp("fake_pack")
    rng = np.random.default_rng(0)
    for name, (classes, per_class) in FAKE_PACK.items():
        labels = np.repeat(np.arange(classes), per_class)
        images = rng.integers(0, 256, size=(len(labels), 32, 32, 3), dtype=np.uint8)
        np.savez(folder / f"{name}.npz", images=images, labels=labels)
    return folder


@pytest.fixture
def forward_passes(monkeypatch):
    """List that records the name of every dataset the evaluator sends through a classifier."""
    from moodcat_plugin.evaluation import evaluator as evaluator_module

    passes = []
    original = evaluator_module.network_outputs

    def counting(net, loader, *args, **kwargs):
        passes.append(loader.name)
        return original(net, loader, *args, **kwargs)

    monkeypatch.setattr(evaluator_module, "network_outputs", counting)
    return passes
