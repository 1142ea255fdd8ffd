"""Smoke test (pytorch-ood habit): every method config runs end to end on a tiny model."""
import math

import pytest

from moodcat_plugin.pipeline import Runner, available, default_config_root, load_method_file
from moodcat_plugin.registry import POSTPROCESSORS, TRAINERS

CONFIG_ROOT = default_config_root()
METHODS = available(CONFIG_ROOT, "postprocessors")


def _method_sections():
    return {m: load_method_file(CONFIG_ROOT, m) for m in METHODS}


def test_every_registered_postprocessor_has_a_config():
    used = {section["postprocessor"]["name"] for section in _method_sections().values()}
    assert set(POSTPROCESSORS.names()) <= used


def test_every_registered_trainer_is_used_by_a_config():
    text = "\n".join((CONFIG_ROOT / "postprocessors" / f"{m}.yml").read_text() for m in METHODS)
    text += (CONFIG_ROOT / "trainers" / "base.yml").read_text()
    for trainer in TRAINERS.names():
        assert f"name: {trainer}" in text, f"trainer '{trainer}' is not used by any config"


@pytest.mark.parametrize("method", METHODS)
def test_method_runs_on_tiny_demo(make_config, shrink, method):
    cfg = make_config([method])
    runner = shrink(Runner(cfg))
    runner.run_method(method)
    markdown = runner.leaderboard()
    assert f"| {method} |" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith(f"| {method} |"))
    auroc = float(row.split("|")[4].strip().strip("*"))
    assert 0.0 <= auroc <= 100.0 and not math.isnan(auroc)
