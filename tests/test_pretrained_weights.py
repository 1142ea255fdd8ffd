"""Issue 10: shipped MOODCAT weights (fp16 encoder + decoder + Cb) that score with one CLI option,
checked by sha256 before anything trains; and torchrun's rank 0 evaluation equals one process's."""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moodcat_plugin.cli import main
from moodcat_plugin.config import Config, merge
from moodcat_plugin.errors import CheckpointError, ConfigError, UserError
from moodcat_plugin.moodcat.weights import (MANIFEST, export_weights, find_cb_run, full, load_weights, read_manifest,
                                           sha256_of, verify)
from moodcat_plugin.networks.conditional_binary_classifier import ConditionalBinaryClassifier
from moodcat_plugin.networks.moodcat_gan import MoodcatGAN
from moodcat_plugin.pipeline import Runner, build_config, method_config, pretrained_flags
from moodcat_plugin.postprocessors.moodcat_postprocessor import MoodcatPostprocessor

ROOT = Path(__file__).resolve().parents[1]
CB_ONLY = "postprocessors.moodcat.postprocessor.postprocessor_args.scorers=[cb]"


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A weights file exported from a freshly trained tiny demo GAN + Cb (what the lead ships for CIFAR)."""
    root = tmp_path_factory.mktemp("weights")
    config = build_config("demo", ["moodcat"], "tiny", overrides=[CB_ONLY], flags={
        "output_dir": str(root / "train"), "device": "cpu", "progress": False})
    Runner(config).train_method("moodcat")
    gan_run = next((root / "train" / "checkpoints").glob("demo-moodcat_gan-*"))
    entry = export_weights(gan_run, root / "shipped" / "moodcat_demo.pt", cb=find_cb_run(gan_run),
                           notes={"device": "test"})
    return root / "shipped" / "moodcat_demo.pt", entry


def _classifier(weights: Path) -> Path:
    """The state dict of the classifier trained beside the tiny weights (so the CLI tests train nothing)."""
    path = weights.parents[1] / "classifier.pt"
    if not path.is_file():
        final = next((weights.parents[1] / "train" / "checkpoints").glob("demo-base-*")) / "final.ckpt"
        torch.save(torch.load(final, weights_only=True)["modules"]["net"], path)
    return path


def _cli(out: Path, weights: Path, *extra: str) -> int:
    return main(["-p", "moodcat", "msp", "--profile", "tiny", "--device", "cpu", "--no-progress",
                 "--output-dir", str(out), "--set", CB_ONLY, "--pretrained", str(weights), *extra])


def test_exported_file_is_small_fp16_and_listed_in_the_manifest(tiny_weights):
    path, entry = tiny_weights
    content = torch.load(path, weights_only=True)
    assert set(content["modules"]) == {"encoder", "decoder", "cb"}  # no discriminator, no EMA decoder
    floats = [t for part in content["modules"].values() for t in part.values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float16 for t in floats)
    manifest = json.loads((path.parent / MANIFEST).read_text())
    assert manifest["files"][path.name]["sha256"] == sha256_of(path) == entry["sha256"]
    assert entry["images_seen"] == entry["gan_steps"] * entry["gan_batch_size"] > 0 and entry["device"] == "test"
    assert "status" not in manifest  # the placeholder sentence is gone once a file is listed


def test_pretrained_option_scores_without_training_the_generator_or_cb(tiny_weights, tmp_path, capsys):
    path, entry = tiny_weights
    out = tmp_path / "out"
    assert _cli(out, path, "--set", f"network.checkpoint={_classifier(path)}") == 0
    assert "# Leaderboard: demo" in capsys.readouterr().out
    assert not list((out / "checkpoints").iterdir())  # nothing trained: no generator, no Cb (nor classifier)
    meta = json.loads((out / "demo" / "scores" / "moodcat" / "meta.json").read_text())
    assert meta["training"]["moodcat_gan"]["sha256"] == entry["sha256"]
    assert meta["training"]["moodcat_cb"]["pretrained"] == str(path)
    scores = {name: len(torch.from_numpy(__import__("numpy").load(out / "demo" / "scores" / "moodcat" / name)["conf"]))
              for name in ("id_test.npz", "digits_6to9.npz")}
    assert all(count > 0 for count in scores.values())


def test_damaged_weights_file_is_a_one_line_error_before_training(tiny_weights, tmp_path, capsys):
    path, _ = tiny_weights
    shipped = tmp_path / "shipped"
    shutil.copytree(path.parent, shipped)
    damaged = shipped / path.name
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    out = tmp_path / "out"
    assert _cli(out, damaged) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: pretrained weights") and "\n" not in err
    assert str(damaged) in err and "do not match the sha256" in err and "export_moodcat_weights.py" in err
    assert not list((out / "checkpoints").glob("*"))  # nothing trained, not even the classifier


def test_unlisted_or_foreign_weights_are_refused(tiny_weights, tmp_path, capsys):
    path, _ = tiny_weights
    unlisted = tmp_path / "copy.pt"
    shutil.copy(path, unlisted)
    assert _cli(tmp_path / "a", unlisted) == 2
    assert "have no sha256" in capsys.readouterr().err
    # weights of another benchmark (checked when the method is built, before data or training)
    config = build_config("cifar10", ["moodcat"], "tiny", overrides=[CB_ONLY], flags={"device": "cpu"},
                          config_root=ROOT / "configs")
    config = merge(config, {"postprocessors": pretrained_flags(["moodcat"], str(path), ROOT / "configs")})
    with pytest.raises(ConfigError, match=r"were trained on demo \(6 classes\), this run is cifar10 \(10 classes\)"):
        MoodcatPostprocessor(method_config(Config(config), "moodcat"))


def test_missing_weights_file_or_a_folder_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="none.pt not found; check the path"):
        verify(tmp_path / "none.pt")
    with pytest.raises(CheckpointError, match="is a folder, not a weights file; check the path .* export one from a "
                                              "training run with scripts/export_moodcat_weights.py"):
        verify(tmp_path)


def test_export_names_a_run_folder_of_the_wrong_kind(tiny_weights, tmp_path):
    """--gan given a classifier or Cb run, or --cb given the generator run: one line naming both kinds."""
    checkpoints = tiny_weights[0].parents[1] / "train" / "checkpoints"
    gan, cb, classifier = (next(checkpoints.glob(f"demo-{kind}-*")) for kind in ("moodcat_gan", "moodcat_cb", "base"))
    for source, found in ((classifier, "classifier"), (cb, "Cb")):
        with pytest.raises(UserError, match=f"is a {found} run, not a MOODCAT generator run: give a "
                                            r"checkpoints/<benchmark>-moodcat_gan-<hash> folder"):
            export_weights(source, tmp_path / "x.pt")
    with pytest.raises(UserError, match="is a MOODCAT generator run, not a Cb run"):
        export_weights(gan, tmp_path / "x.pt", cb=gan)
    assert not (tmp_path / "x.pt").exists()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_torchrun_leaderboard_equals_one_process_leaderboard(tiny_weights, tmp_path):
    """Rank 0 evaluates alone with the one-process evaluator: with the same models (shipped
    weights, the same classifier checkpoint) the leaderboards are identical, and the other rank
    writes nothing."""
    path, _ = tiny_weights
    classifier = _classifier(path)
    common = ["-p", "moodcat", "msp", "--profile", "tiny", "--device", "cpu", "--no-progress", "--set", CB_ONLY,
              "--set", f"network.checkpoint={classifier}", "--pretrained", str(path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    script = str(ROOT / "scripts" / "run_benchmark.py")
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master_port={_free_port()}", script, *common, "--output-dir", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert main([*common, "--output-dir", str(tmp_path / "one")]) == 0
    board = lambda folder: json.loads((folder / "demo" / "leaderboard.json").read_text())  # noqa: E731
    assert board(tmp_path / "two") == board(tmp_path / "one")


def test_generator_only_file_trains_cb_on_it_and_exports_with_that_cb(tiny_weights, tmp_path):
    """The GPU check's flow: a generator snapshot without Cb; scoring trains Cb on the loaded
    generator (cached under the file's sha256), and the export joins the two into one file."""
    path, _ = tiny_weights
    gan_run = next((path.parents[1] / "train" / "checkpoints").glob("demo-moodcat_gan-*"))
    snapshot = tmp_path / "snapshots" / "gan_only.pt"
    export_weights(gan_run, snapshot)
    assert set(torch.load(snapshot, weights_only=True)["modules"]) == {"encoder", "decoder"}
    config = build_config("demo", ["moodcat"], "tiny", overrides=[CB_ONLY, f"network.checkpoint={_classifier(path)}"],
                          flags={"output_dir": str(tmp_path / "out"), "device": "cpu", "progress": False})
    config = merge(config, {"postprocessors": pretrained_flags(["moodcat"], str(snapshot), ROOT / "configs")})
    Runner(Config(config)).train_method("moodcat")
    trained = [folder.name.rsplit("-", 1)[0] for folder in (tmp_path / "out" / "checkpoints").iterdir()]
    assert trained == ["demo-moodcat_cb"]  # the Cb only: the generator came from the file
    cb_run = find_cb_run(snapshot, tmp_path / "out" / "checkpoints")
    entry = export_weights(snapshot, tmp_path / "shipped" / "moodcat_demo.pt", cb=cb_run)
    assert entry["parts"] == ["cb", "decoder", "encoder"] and entry["images_seen"] > 0 and "cb_val_acc" in entry


SHIPPED = sorted(read_manifest(ROOT / "weights")["files"])


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_match_their_checksum_and_score_images(name):
    """Every file listed in weights/MANIFEST.json is in the repository, matches its sha256, loads
    weights-only into the networks it names, and gives finite Cb logits for a few images."""
    content = load_weights(ROOT / "weights" / name)
    classes = int(content["num_classes"])
    gan_kwargs = {k: v for k, v in content["gan_network"].items() if k not in ("name", "checkpoint")}
    gan = MoodcatGAN(classes, **gan_kwargs)
    for part_name in ("encoder", "decoder"):
        getattr(gan, part_name).load_state_dict(full(content["modules"][part_name]))
    cb_kwargs = {k: v for k, v in content["cb_network"].items() if k not in ("name", "checkpoint")}
    cb = ConditionalBinaryClassifier(classes, **cb_kwargs)
    cb.load_state_dict(full(content["modules"]["cb"]))
    gan.eval(), cb.eval()
    torch.manual_seed(0)
    x, y = torch.rand(4, 3, 32, 32) * 2 - 1, torch.arange(4) % classes
    with torch.no_grad():
        _, synthesis = gan.synthesize(x, y)
        logits = cb(x, synthesis, y)
    assert synthesis.shape == x.shape and synthesis.abs().max() <= 1 and torch.isfinite(logits).all()


def test_a_method_with_another_cb_network_trains_its_own_cb_on_the_files_generator(tiny_weights, tmp_path):
    """moodcat_plus (feature-comparator Cb) with a file holding the paper's Cb: the file's generator
    is used, the file's Cb is not (it would be another method under this method's name)."""
    path, entry = tiny_weights
    out = tmp_path / "out"
    assert main(["-p", "moodcat_plus", "--profile", "tiny", "--device", "cpu", "--no-progress",
                 "--output-dir", str(out), "--pretrained", str(path),
                 "--set", f"network.checkpoint={_classifier(path)}"]) == 0
    trained = [run.name for run in (out / "checkpoints").iterdir()]
    assert len(trained) == 1 and trained[0].startswith("demo-moodcat_cb-")  # its Cb only, no generator
    assert json.loads((out / "checkpoints" / trained[0] / "config.json").read_text())["cb_network"]["name"] \
        == "feature_comparator_cb"
    meta = json.loads((out / "demo" / "scores" / "moodcat_plus" / "meta.json").read_text())
    assert meta["training"]["moodcat_gan"]["sha256"] == entry["sha256"]
    assert "pretrained" not in meta["training"]["moodcat_cb"]


def _listed_file(folder: Path, content) -> Path:
    """``content`` saved as weights.pt with a MANIFEST entry of its true sha256 (so it passes the check)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "weights.pt"
    torch.save(content, path)
    (folder / MANIFEST).write_text(json.dumps({"files": {path.name: {"sha256": sha256_of(path)}}}))
    return path


GOOD_LAYOUT = {"format": "moodcat-weights/1", "benchmark": "demo", "num_classes": 6, "gan_network": {},
               "provenance": {}, "modules": {"encoder": {"w": torch.zeros(2)}, "decoder": {"w": torch.zeros(2)}}}


@pytest.mark.parametrize("change, problem", [
    ({"modules": None}, "'modules' is missing"),
    ({"modules": [1, 2]}, "'modules' is list, not a dict"),
    ({"modules": {"encoder": {"w": torch.zeros(2)}}}, "no decoder in 'modules'"),
    ({"modules": {"encoder": {"w": 1}, "decoder": {}}}, "module 'encoder' is not a state dict of tensors"),
    ({"num_classes": "6"}, "'num_classes' is str, not a int"),
    ({"modules": {**GOOD_LAYOUT["modules"], "cb": {}}}, "a Cb without its 'cb_network' section"),
])
def test_malformed_weights_file_passing_its_sha256_is_one_line(tmp_path, change, problem):
    content = {k: v for k, v in {**GOOD_LAYOUT, **change}.items() if v is not None}
    path = _listed_file(tmp_path, content)
    with pytest.raises(CheckpointError) as caught:
        load_weights(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and problem in message and "re-export" in message
    assert load_weights(_listed_file(tmp_path / "good", GOOD_LAYOUT))["benchmark"] == "demo"


@pytest.mark.parametrize("manifest", [{"files": ["weights.pt"]}, {"files": {"weights.pt": "abc"}}, ["weights.pt"],
                                      {"files": {"weights.pt": {"sha256": 5}}}])
def test_malformed_manifest_is_one_line(tmp_path, manifest):
    path = _listed_file(tmp_path, GOOD_LAYOUT)
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"MANIFEST.json is malformed .* restore it"):
        verify(path)
