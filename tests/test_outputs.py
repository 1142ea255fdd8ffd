"""Outputs (issue 9): one-line errors for unwritable output folders, file modes, score sets replaced
as a unit, unreadable method folders, rebuild_leaderboard errors, and what the CLI and plot show."""
import errno
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from moodcat_plugin.cli import main
from moodcat_plugin.errors import UserError
from moodcat_plugin.evaluation import Evaluator
from moodcat_plugin.evaluation.leaderboard import render_markdown, write_leaderboard
from moodcat_plugin.evaluation.plots import _draw_method, plot_score_distributions
from moodcat_plugin.pipeline import Runner
from moodcat_plugin.utils import (atomic_savez, atomic_torch_save, atomic_write_json, atomic_write_text,
                                  ensure_writable_folder)

ROOT = Path(__file__).resolve().parents[1]


def _files_in(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# -- unwritable output folders: one line naming the path, before any training ------------------------
def test_output_dir_under_a_file_fails_before_training(tmp_path, capsys):
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a folder")
    code = main(["-p", "msp", "--profile", "tiny", "--device", "cpu", "--no-progress",
                 "--output-dir", str(blocker / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith(f"error: cannot create {blocker / 'out' / 'demo'}") and f"{blocker} is a file" in err


def test_checkpoint_dir_that_is_a_file_fails_before_training(tmp_path, capsys):
    blocker = tmp_path / "models"
    blocker.write_text("")
    code = main(["-p", "msp", "--profile", "tiny", "--device", "cpu", "--no-progress",
                 "--output-dir", str(tmp_path / "out"), "--set", f"checkpoint_dir={blocker}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and f"{blocker} is a file, not a folder" in err
    assert not (tmp_path / "out" / "demo" / "scores").exists()  # nothing ran


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into a chmod 0500 folder")
def test_read_only_output_dir_is_one_line_error(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        code = main(["-p", "msp", "--profile", "tiny", "--device", "cpu", "--no-progress", "--output-dir", str(folder)])
    finally:
        folder.chmod(0o700)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and str(folder / "demo") in err and "not writable" in err


@pytest.mark.parametrize("code, words", [(errno.EROFS, "not writable (read-only file system)"),
                                         (errno.EACCES, "not writable (permission denied)")])
def test_unwritable_folder_message(tmp_path, monkeypatch, code, words):
    """Root-proof: the refusal itself is simulated, the message mapping is real."""
    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(UserError) as excinfo:
        ensure_writable_folder(tmp_path / "out")
    assert str(excinfo.value).startswith(f"cannot write {tmp_path / 'out'}: {words}")


def test_full_disk_is_one_line_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "scores" / "id_test.npz"
    atomic_savez(target, conf=np.arange(3.0))
    before = target.read_bytes()

    def disk_full(handle, **arrays):
        handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", disk_full)
    with pytest.raises(UserError) as excinfo:
        atomic_savez(target, conf=np.arange(5.0))
    message = str(excinfo.value)
    assert "\n" not in message and str(target) in message and "disk is full" in message
    assert target.read_bytes() == before and [p.name for p in target.parent.iterdir()] == ["id_test.npz"]


def test_full_disk_during_scoring_is_one_line_cli_error(tmp_path, capsys, monkeypatch, shared_checkpoints):
    def disk_full(handle, **arrays):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", disk_full)
    code = main(["-p", "msp", "--profile", "tiny", "--device", "cpu", "--no-progress", "--output-dir",
                 str(tmp_path), "--set", f"checkpoint_dir={shared_checkpoints}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "disk is full" in err and str(tmp_path / "demo" / "scores") in err


class _FullDisk(io.FileIO):
    """A binary file on a disk that fills up after ``room`` bytes (the write raises ENOSPC)."""

    room = 1000

    def write(self, data) -> int:
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


def _full_disk_for_binary_files(monkeypatch):
    """Binary writes through moodcat_plugin.utils hit a full disk; text (JSON) writes still fit."""
    import moodcat_plugin.utils as utils

    def fake_open(path, mode="r", *args, **kwargs):
        if "b" in mode and "w" in mode:
            return _FullDisk(path, mode.replace("b", ""))
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(utils, "open", fake_open, raising=False)


def test_full_disk_while_saving_a_checkpoint_is_one_line(tmp_path, monkeypatch):
    """torch's zip writer turns the handle's OSError(ENOSPC) into a RuntimeError: still one line."""
    target = tmp_path / "run" / "last.ckpt"
    atomic_torch_save({"w": torch.zeros(4)}, target)
    before = target.read_bytes()
    _full_disk_for_binary_files(monkeypatch)
    with pytest.raises(UserError) as excinfo:
        atomic_torch_save({"w": torch.zeros(10_000)}, target)
    message = str(excinfo.value)
    assert "\n" not in message and str(target) in message and "disk is full" in message
    assert target.read_bytes() == before and [p.name for p in target.parent.iterdir()] == ["last.ckpt"]


def test_full_disk_during_training_is_one_line_cli_error(tmp_path, capsys, monkeypatch):
    _full_disk_for_binary_files(monkeypatch)
    code = main(["-p", "msp", "--profile", "tiny", "--device", "cpu", "--no-progress", "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "disk is full" in err and "last.ckpt" in err, err


# -- file modes and valid JSON -------------------------------------------------------------------------
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_written_files_honour_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        atomic_write_text("x", tmp_path / "a.txt")
        atomic_savez(tmp_path / "b.npz", x=np.zeros(2))
        atomic_torch_save({"w": torch.zeros(2)}, tmp_path / "c.ckpt")
    finally:
        os.umask(previous)
    for name in ("a.txt", "b.npz", "c.ckpt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name
    assert torch.load(tmp_path / "c.ckpt")["w"].shape == (2,)


def test_json_with_nan_is_refused_not_written(tmp_path):
    with pytest.raises(ValueError, match="NaN"):
        atomic_write_json({"loss": float("nan")}, tmp_path / "history.json")
    assert not list(tmp_path.iterdir())


# -- a method's score set is replaced as a unit -----------------------------------------------------------
def test_interrupted_rescoring_keeps_the_previous_set(make_config, monkeypatch):
    runner = Runner(make_config(["msp"]))
    runner.run_method("msp")
    folder = runner.results_dir / "scores" / "msp"
    before = _files_in(folder)
    original, calls = Evaluator.score, {"n": 0}

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # ID test written, OOD sets not yet
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Evaluator, "score", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Runner(make_config(["msp"])).run_method("msp")
    assert _files_in(folder) == before  # no mix of new ID scores with old OOD scores and meta
    leftovers = [p.name for p in folder.parent.iterdir() if p.name.startswith(".")]
    assert leftovers and all(name.startswith(".msp.") for name in leftovers)
    markdown = write_leaderboard(runner.results_dir, "demo", "ood_positive")
    assert "| msp |" in markdown and ".msp" not in markdown and "Skipped" not in markdown

    monkeypatch.setattr(Evaluator, "score", original)
    Runner(make_config(["msp"])).run_method("msp")  # a complete rerun swaps in and cleans up
    assert sorted(p.name for p in folder.parent.iterdir()) == ["msp"]
    assert json.loads((folder / "meta.json").read_text())["finished"] >= json.loads(before["meta.json"])["finished"]


# -- unreadable method folders never break the other rows -----------------------------------------------
def _damage(folder: Path, how: str) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    meta["method"] = folder.name
    (folder / "meta.json").write_text(json.dumps(meta))
    if how == "bad_json":
        (folder / "meta.json").write_text('{"method": "bad_json", ')
    elif how == "nan_meta":
        (folder / "meta.json").write_text(json.dumps({**meta, "seconds": float("nan")}))
    elif how == "corrupt_npz":
        (folder / "digits_6to9.npz").write_bytes((folder / "digits_6to9.npz").read_bytes()[:100])
    elif how == "missing_npz":
        (folder / "flower_patches.npz").unlink()
    elif how == "no_meta":
        (folder / "meta.json").unlink()


def test_unreadable_method_folders_are_skipped_with_a_warning(make_config, caplog):
    runner = Runner(make_config(["msp", "ebo"]))
    runner.run_method("msp")
    runner.run_method("ebo")
    scores = runner.results_dir / "scores"
    damages = ["bad_json", "nan_meta", "corrupt_npz", "missing_npz", "no_meta"]
    for how in damages:
        shutil.copytree(scores / "msp", scores / how)
        _damage(scores / how, how)
    markdown = write_leaderboard(runner.results_dir, "demo", "ood_positive")
    assert "| msp |" in markdown and "| ebo |" in markdown
    for how in damages:
        assert f"| {how} |" not in markdown
        assert f"Skipped unreadable method folder: {scores / how} (" in markdown
        assert any(str(scores / how) in record.getMessage() and "rerun the method" in record.getMessage()
                   for record in caplog.records)
    board = json.loads((runner.results_dir / "leaderboard.json").read_text())
    assert {row["method"] for row in board["rows"]} == {"msp", "ebo"} and len(board["skipped_method_folders"]) == 5


# -- rebuild_leaderboard --------------------------------------------------------------------------------
def _rebuild(*args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "rebuild_leaderboard.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_rebuild_leaderboard_of_missing_folder_is_one_line_error(tmp_path):
    result = _rebuild(tmp_path / "nonexistent")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith(f"error: results folder {tmp_path / 'nonexistent'} does not exist")
    assert not (tmp_path / "nonexistent").exists()


def test_rebuild_leaderboard_without_scores_is_a_clear_error(tmp_path, capsys):
    from moodcat_plugin.evaluation.leaderboard import main as rebuild_main

    assert rebuild_main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "there are no method scores" in err and "scores/<method>" in err
    assert not (tmp_path / "leaderboard.md").exists()


# -- what a newcomer reads ----------------------------------------------------------------------------
def _row(method, confs, groups, meta=None):
    datasets = {name: {"group": group, "AUROC": 0.5, "FPR@95_ood_positive": 0.5, "FPR@95_id_positive": 0.5,
                       "AUPR_IN": 0.5, "AUPR_OUT": 0.5 + 0.1 * i}
                for i, (name, group) in enumerate(groups.items())}
    return {"method": method, "acc": 0.9, "outlier_data": False, "network": "", "datasets": datasets,
            "meta": meta or {"method": method, "profile": "demo"}, "confs": confs}


def test_group_means_show_spread_only_over_several_datasets():
    row = _row("m", {}, {"near1": "near", "far1": "far", "far2": "far"})
    markdown = render_markdown([row], "toy", "ood_positive", [])
    aupr_out = next(line for line in markdown.split("## AUPR_OUT")[1].splitlines() if line.startswith("| m |"))
    cells = [cell.strip() for cell in aupr_out.split("|")[1:-1]]
    assert cells[3:] == ["50.00", "50.00", "60.00", "70.00", "65.00 ± 5.00"]


def test_constant_scores_panel_is_readable_and_figure_titled(tmp_path):
    from matplotlib.figure import Figure

    ones = np.ones(400, dtype=np.float32)
    ones[::3] = np.float32(0.99999994)  # float32 softmax maxima: 1.0 up to rounding
    row = _row("msp", {"id_test": ones, "near1": np.ones(300), "far1": np.linspace(0.2, 1, 50)},
               {"near1": "near", "far1": "far"})
    ax = Figure().subplots()
    _draw_method(ax, row)
    heights = [patch.get_height() for patch in ax.patches if patch.get_fill()]  # ID test bars
    assert max(heights) == pytest.approx(1.0)  # one full-height bar, not an invisible spike
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert "all 400 scores = 1.0" in labels[0] and "all 300 scores = 1.0" in labels[1]
    assert "all" not in labels[2] and ax.get_ylabel()
    path = plot_score_distributions([row], tmp_path / "plot.png", "toy")
    assert path.stat().st_size > 0


def test_cli_lists_every_output_and_drops_single_component_row(tmp_path, capsys, shared_checkpoints):
    code = main(["-p", "msp", "moodcat", "--profile", "tiny", "--device", "cpu", "--no-progress",
                 "--output-dir", str(tmp_path), "--set", f"checkpoint_dir={shared_checkpoints}",
                 "--set", "postprocessors.moodcat.postprocessor.postprocessor_args.scorers=[cb]",
                 "--set", "postprocessors.moodcat.gan.sample_every=1"])
    assert code == 0
    printed = capsys.readouterr().out
    results = tmp_path / "demo"
    assert f"{results}/leaderboard.{{md,csv,json}}" in printed
    assert f"{results / 'score_distributions.png'}" in printed and f"{results / 'moodcat_grids'}/" in printed
    gan_folder = Path(json.loads((results / "scores" / "moodcat" / "meta.json").read_text())
                      ["training"]["moodcat_gan"]["folder"])
    assert list((gan_folder / "samples").glob("*.png")) and f"{gan_folder / 'samples'}/" in printed
    assert "| moodcat |" in printed and "| moodcat:cb |" not in printed  # Cb alone: the row is moodcat itself
    assert "±" not in printed.split("## Methods")[0].split("Best per column")[1]  # one dataset per group


def test_bad_data_run_leaves_no_empty_output_folders(tmp_path, capsys):
    """A run refused for its data (here: no data folder) removes the output and checkpoint folders it
    created; a folder that was there before stays."""
    (tmp_path / "kept").mkdir()
    code = main(["-b", "cifar10", "-p", "msp", "--profile", "tiny", "--device", "cpu", "--no-progress",
                 "--data-root", str(tmp_path / "no_data"), "--output-dir", str(tmp_path / "out" / "results"),
                 "--set", f"checkpoint_dir={tmp_path / 'kept' / 'ckpt' / 'deeper'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "does not exist" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"] and not any((tmp_path / "kept").iterdir())
