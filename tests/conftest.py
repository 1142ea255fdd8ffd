"""Shared fixtures: tiny configs on the embedded demo benchmark (no ../shared needed)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from moodcat_plugin.pipeline import build_config


@pytest.fixture(scope="session")
def shared_checkpoints(tmp_path_factory):
    """One checkpoint folder for the whole session: identical tiny models are trained once."""
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture
def make_config(tmp_path, shared_checkpoints):
    """``make_config(methods, *overrides, benchmark='demo', profile='tiny')`` -> Config on CPU in tmp_path."""

    def factory(methods=("msp",), *overrides, benchmark="demo", profile="tiny", **flags):
        base_flags = {"output_dir": str(tmp_path / "results"), "checkpoint_dir": str(shared_checkpoints),
                      "device": "cpu", "progress": False}
        base_flags.update(flags)
        return build_config(benchmark, list(methods), profile, overrides=list(overrides), flags=base_flags)

    return factory


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
