"""The CLI end to end on the embedded demo with a tiny budget, and its errors."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from moodcat_plugin.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_cli_demo_end_to_end_and_row_merging(tmp_path, capsys):
    out = tmp_path / "out"
    common = ["--profile", "tiny", "--device", "cpu", "--output-dir", str(out), "--no-progress"]
    assert main(["--postprocessor", "msp", "odin", "ebo", *common]) == 0
    printed = capsys.readouterr().out
    assert "# Leaderboard: demo" in printed and "| odin |" in printed
    board = json.loads((out / "demo" / "leaderboard.json").read_text())
    assert {row["method"] for row in board["rows"]} == {"msp", "odin", "ebo"}
    assert (out / "demo" / "leaderboard.csv").read_text().startswith("method,outlier_data,id_acc")
    # a later run of one method replaces its own row and keeps the others
    assert main(["--postprocessor", "msp", "--fpr-convention", "id_positive", *common]) == 0
    board = json.loads((out / "demo" / "leaderboard.json").read_text())
    assert {row["method"] for row in board["rows"]} == {"msp", "odin", "ebo"}
    assert board["fpr_convention"] == "id_positive"
    # the second run reused the cached classifier: exactly one classifier run folder exists
    assert len(list((out / "checkpoints").glob("demo-base-*"))) == 1
    assert (out / "checkpoints" / next((out / "checkpoints").glob("demo-base-*")).name / "final.ckpt").is_file()


def test_cli_bad_input_is_one_line_error(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_benchmark.py"), "--benchmark", "cifar1O",
                             "--output-dir", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: no benchmark config 'cifar1O'")
    assert "Traceback" not in result.stderr


def test_cli_missing_data_root(tmp_path, capsys):
    code = main(["--benchmark", "cifar10", "--postprocessor", "msp", "--data-root", str(tmp_path / "none"),
                 "--output-dir", str(tmp_path), "--profile", "tiny"])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_list_and_help(capsys):
    assert main(["--list"]) == 0
    listed = capsys.readouterr().out
    assert "method configs" in listed and "msp" in listed and "moodcat" in listed
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith("usage: run_benchmark.py") and "--postprocessor" in shown and "--pretrained" in shown
    assert "examples:" in shown and "torchrun" in shown  # the epilog keeps its line breaks
