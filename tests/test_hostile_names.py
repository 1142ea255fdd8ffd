"""Names from configs and the command line (methods, benchmarks, OOD sets, table rows) become folder
and file names: a hostile one is refused with one line before anything is written, and no path
outside the output and checkpoint folders is created, replaced or deleted.

Each attack runs the real command line in-process inside a temporary tree that holds a copy of
``configs/`` and a victim folder the name reaches; the whole tree is compared before and after.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from moodcat_plugin.cli import main
from moodcat_plugin import config
from moodcat_plugin.errors import ConfigError
from moodcat_plugin.evaluation.leaderboard import render_markdown
from moodcat_plugin.pipeline import default_config_root

PLAIN_RULE = "is not a plain name"


def snapshot(root: Path) -> dict:
    """Every path under ``root`` -> sha256 of its bytes (None for a folder)."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def tree(tmp_path):
    """tmp/a/configs (a copy), tmp/victim/keepme.yml (a method file the name ``../../../victim/keepme``
    reaches from configs/postprocessors) and tmp/victim/keepme/ (files the scores would replace)."""
    config_root = tmp_path / "a" / "configs"
    shutil.copytree(default_config_root(), config_root)
    victim = tmp_path / "victim"
    (victim / "keepme").mkdir(parents=True)
    shutil.copy(config_root / "postprocessors" / "msp.yml", victim / "keepme.yml")
    (victim / "keepme" / "precious.txt").write_text("do not delete")
    (tmp_path / "escaped.txt").write_text("a neighbour of the output folder")
    return tmp_path, config_root


def run_cli(tmp_path: Path, config_root: Path, *argv: str) -> int:
    return main(["--config-root", str(config_root), "--output-dir", str(tmp_path / "out" / "results"),
                 "--profile", "tiny", "--device", "cpu", "--no-progress", *argv])


@pytest.mark.parametrize("argv", [
    ["-p", "../../../victim/keepme"],                                  # scores would replace victim/keepme/
    ["-p", "msp", "--set", "dataset.name=../../escaped"],              # results + checkpoints outside
    ["-p", "msp", "--set", "dataset.name=.hidden"],
    ["-p", "msp", "--set", "dataset.splits.far={../../../victim/x: {demo: flower_patches}}"],  # a set's .npz
    ["-p", "a|b"],                                                     # breaks the Markdown leaderboard
    ["-b", "../configs/benchmarks/demo"],
    ["-p", "..\\..\\victim"],
], ids=["method-dotdot", "benchmark-dotdot", "benchmark-hidden", "set-dotdot", "method-pipe", "benchmark-file",
        "backslash"])
def test_hostile_name_is_refused_before_anything_is_written(tree, capsys, argv):
    tmp_path, config_root = tree
    before = snapshot(tmp_path)
    assert run_cli(tmp_path, config_root, *argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "plain name" in err, err
    assert snapshot(tmp_path) == before  # nothing created, replaced or deleted, not even out/


def test_row_name_is_checked_before_training_or_writing(make_config, tmp_path):
    from moodcat_plugin.pipeline import Runner

    runner = Runner(make_config(["msp"]))
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError, match=PLAIN_RULE):
        runner.run_method("msp", row="../../../victim")
    with pytest.raises(ConfigError, match=PLAIN_RULE):
        runner.evaluator.evaluate("sub/row", None, None, {})
    assert snapshot(tmp_path) == before


def test_ablation_variant_names_are_plain(tmp_path, script):
    ablation = script("moodcat_ablation")
    spec = tmp_path / "bad.yml"
    spec.write_text("method: moodcat\nvariants:\n  - name: ok\n  - name: ../../x\n")
    with pytest.raises(ConfigError, match="variant name"):
        ablation.ablation(ablation.parse_args(["--ablation", str(spec), "--output-dir", str(tmp_path / "out"),
                                               "-b", "demo", "--profile", "tiny", "--device", "cpu"]))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["moodcat", "cb_w32_lr1e-3_b05", "osr_cifar6_split0", "x.y", "a+b=c"])
def test_plain_names_pass(name):
    assert config.check_plain_name(name, "name") == name


@pytest.mark.parametrize("name", ["", ".", "..", ".x", "a/b", "a\\b", "a..b", "a|b", "a b", "/abs", 3, None])
def test_other_names_fail(name):
    with pytest.raises(ConfigError, match=PLAIN_RULE):
        config.check_plain_name(name, "name")


def test_a_pipe_in_a_folder_name_keeps_the_leaderboard_columns():
    """Folders made by hand (not through our names) still render as one cell each."""
    row = {"method": "a|b", "outlier_data": False, "acc": 0.5, "meta": {"method": "a|b"},
           "datasets": {"x|y": {"group": "far", "AUROC": 0.9, "FPR@95_ood_positive": 0.1, "AUPR_IN": 0.8,
                                "AUPR_OUT": 0.7}}}
    lines = render_markdown([row], "demo", "ood_positive", []).splitlines()
    rows = [line for line in lines if line.startswith("| a") or line.startswith("| method")]
    assert len(rows) == 8  # header and row of each of the 4 metric tables
    for line in rows:
        assert line.replace("\\|", "").count("|") == 7, line  # 6 cells: method, outlier, acc, x|y, 2 means
