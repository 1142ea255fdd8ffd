"""Shared fixtures: tiny configs on the embedded demo benchmark (no ../shared needed)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from moodcat_plugin.pipeline import build_config


@pytest.fixture
def make_config(tmp_path):
    """``make_config(methods, *overrides, benchmark='demo', profile='tiny')`` -> Config on CPU in tmp_path."""

    def factory(methods=("msp",), *overrides, benchmark="demo", profile="tiny", **flags):
        base_flags = {"output_dir": str(tmp_path / "results"), "device": "cpu", "progress": False}
        base_flags.update(flags)
        return build_config(benchmark, list(methods), profile, overrides=list(overrides), flags=base_flags)

    return factory


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    np.random.seed(0)
    yield
