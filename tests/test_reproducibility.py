"""Trustworthy training runs: weights-only checkpoints, exact resume, seeded data streams,
divergence stops, and a cache keyed on what changes results."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from moodcat_plugin.cli import main
from moodcat_plugin.config import Config
from moodcat_plugin.data import ShuffledBatches, make_loader
from moodcat_plugin.data.demo import build_demo_sets
from moodcat_plugin.data.loaders import random_crops
from moodcat_plugin.errors import CheckpointError
from moodcat_plugin.networks.conditional_binary_classifier import ConditionalBinaryClassifier
from moodcat_plugin.networks.moodcat_gan import MoodcatGAN
from moodcat_plugin.pipeline import Runner, build_network, method_config
from moodcat_plugin.registry import TRAINERS
from moodcat_plugin.trainers.moodcat_cb_trainer import MoodcatCbTrainer
from moodcat_plugin.trainers.moodcat_gan_trainer import MoodcatGANTrainer
from moodcat_plugin.training import TrainingDivergedError, fit, run_folder
from moodcat_plugin.utils import load_checkpoint

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


class _RunsCode:
    """Unpickling this calls Path.touch(marker): what a crafted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _malicious_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"modules": {"net": _RunsCode(marker)}, "state_dict": _RunsCode(marker)}, path)
    with open(path, "rb") as handle:  # the payload is really there: plain pickle would run it
        assert b"touch" in handle.read()
    return path


def test_malicious_checkpoint_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = _malicious_checkpoint(tmp_path / "evil.ckpt", marker)
    with pytest.raises(CheckpointError, match="holds more than weights"):
        load_checkpoint(path)
    assert not marker.exists()


def test_malicious_network_checkpoint_and_cached_final_run_nothing(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = _malicious_checkpoint(tmp_path / "evil.ckpt", marker)
    common = ["-p", "msp", "--profile", "tiny", "--device", "cpu", "--no-progress", "--output-dir", str(tmp_path / "out")]
    assert main([*common, "--set", f"network.checkpoint={evil}"]) == 2
    assert "holds more than weights" in capsys.readouterr().err and not marker.exists()
    # a crafted final.ckpt planted in the cache folder of the run
    assert main(common) == 0
    final = next((tmp_path / "out" / "checkpoints").glob("demo-base-*/final.ckpt"))
    _malicious_checkpoint(final, marker)
    assert main(common) == 2
    assert not marker.exists()


# -- data streams ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_sets():
    return build_demo_sets(0)


def test_stream_batches_depend_only_on_seed_and_position(demo_sets):
    array = demo_sets["digits_train"]
    first = ShuffledBatches(array, MEAN, STD, 16, augment=["crop", "flip"], seed=3)
    second = ShuffledBatches(array, MEAN, STD, 16, augment=["crop", "flip"], seed=3)
    for _ in range(len(first) + 5):  # consume across a pass boundary
        first.next()
    second.load_state_dict(first.state_dict())
    for _ in range(3):
        a, b = first.next(), second.next()
        assert torch.equal(a["data"], b["data"]) and torch.equal(a["index"], b["index"])
    other_seed = ShuffledBatches(array, MEAN, STD, 16, augment=["crop", "flip"], seed=4)
    assert not torch.equal(other_seed.batch_at(0, 0)["index"], first.batch_at(0, 0)["index"])
    # one pass visits every image once (drop_last of the partial batch aside)
    seen = torch.cat([batch["index"] for batch in ShuffledBatches(array, MEAN, STD, 16, seed=3)])
    assert len(seen) == len(first) * 16 and len(set(seen.tolist())) == len(seen)


def test_iterating_a_stream_gives_one_pass_per_epoch(demo_sets):
    stream = ShuffledBatches(demo_sets["digits_val"], MEAN, STD, 8, seed=0)
    epoch1 = [b["index"] for b in stream]
    epoch2 = [b["index"] for b in stream]
    assert len(epoch1) == len(epoch2) == len(stream)
    assert torch.equal(epoch2[0], stream.batch_at(1, 0)["index"])


def test_random_crops_pad_with_zeros_and_flip():
    images = torch.arange(2 * 3 * 6 * 6, dtype=torch.uint8).view(2, 3, 6, 6) + 1
    same = random_crops(images, torch.tensor([4, 4]), torch.tensor([4, 4]))
    assert torch.equal(same, images)
    shifted = random_crops(images, torch.tensor([0, 8]), torch.tensor([0, 8]))
    assert (shifted[0, :, :4, :] == 0).all() and torch.equal(shifted[0, :, 4:, 4:], images[0, :, :2, :2])
    assert (shifted[1, :, 2:, :] == 0).all() and torch.equal(shifted[1, :, :2, :2], images[1, :, 4:, 4:])


def test_generator_training_images_have_no_black_borders(make_config):
    """Issue 8: the GAN/Cb streams use their section's augmentation (flips), never padded crops."""
    cfg = make_config(["moodcat"])
    for section in ("gan", "cb"):
        assert list(cfg.postprocessors.moodcat[section].augment) == ["flip"]
    runner = Runner(cfg)
    from moodcat_plugin.moodcat.runs import train_loader
    method_cfg = method_config(cfg, "moodcat")
    stream = train_loader(method_cfg, runner.benchmark, {}, method_cfg.gan, seed=0, part="gan", device="cpu")
    raw = torch.from_numpy(runner.benchmark.id["train"].images).permute(0, 3, 1, 2).float() / 255
    for _ in range(3):
        batch = stream.next()
        unit = batch["data"] * torch.tensor(runner.benchmark.std).view(1, 3, 1, 1) + torch.tensor(
            runner.benchmark.mean).view(1, 3, 1, 1)
        originals = raw[batch["index"]]
        flipped = originals.flip(-1)
        match = [(torch.allclose(u, o, atol=1e-5) or torch.allclose(u, f, atol=1e-5))
                 for u, o, f in zip(unit, originals, flipped)]
        assert all(match)


# -- exact resume ------------------------------------------------------------------------------------

def _classifier_trainer(cfg, runner):
    mcfg = method_config(cfg, "msp")
    torch.manual_seed(cfg.seed)
    net = build_network(mcfg.network, 6)
    return TRAINERS.get("base")(net, runner.train_loader(mcfg), mcfg)


def _weights(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _assert_identical(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_interrupted_classifier_resumes_bit_identically(make_config, tmp_path):
    cfg = make_config(["msp"], "trainer.num_epochs=3")
    runner = Runner(cfg)
    straight = _classifier_trainer(cfg, runner)
    fit(straight, tmp_path / "straight", progress=False)

    first = _classifier_trainer(cfg, runner)
    assert fit(first, tmp_path / "resumed", progress=False, stop_after_epochs=1)["interrupted"]
    torch.manual_seed(12345)  # a new process starts with another RNG state
    resumed = _classifier_trainer(cfg, runner)
    assert fit(resumed, tmp_path / "resumed", progress=False)["resumed_from"] == 1
    _assert_identical(_weights(straight.net), _weights(resumed.net))


def _gan_config():
    section = {"name": "moodcat_gan", "num_epochs": 3, "steps_per_epoch": 2, "batch_size": 8, "lr_g": 2e-4,
               "lr_d": 2e-4, "betas": [0.0, 0.999], "cutmix": True, "cutmix_warmup_epochs": 1, "ema_decay": 0.9,
               "sample_every": 0, "log_every": 0}
    return Config({"device": "cpu", "progress": False,
                   "dataset": {"normalization": {"mean": list(MEAN), "std": list(STD)}}, "trainer": section})


def _gan_trainer(array):
    torch.manual_seed(0)
    gan = MoodcatGAN(6, ch=8, latent_dim=16, disc_ch=8)
    return MoodcatGANTrainer(gan, make_loader(array, MEAN, STD, 8, train=True, augment=["flip"], seed=0),
                             _gan_config())


def test_interrupted_gan_resumes_bit_identically(demo_sets, tmp_path):
    array = demo_sets["digits_train"]
    straight = _gan_trainer(array)
    fit(straight, tmp_path / "straight", progress=False)
    first = _gan_trainer(array)
    assert fit(first, tmp_path / "resumed", progress=False, stop_after_epochs=2)["interrupted"]
    torch.manual_seed(999)
    resumed = _gan_trainer(array)
    fit(resumed, tmp_path / "resumed", progress=False)
    _assert_identical(_weights(straight.net), _weights(resumed.net))


def test_interrupted_cb_ext_resumes_bit_identically(demo_sets, tmp_path):
    gan = _gan_trainer(demo_sets["digits_train"]).net.eval()
    cb_section = {"name": "moodcat_cb", "num_epochs": 2, "steps_per_epoch": 2, "batch_size": 8, "lr": 1e-3,
                  "betas": [0.0, 0.999]}
    config = Config({**_gan_config(), "trainer": cb_section})

    def trainer():
        torch.manual_seed(1)
        cb = ConditionalBinaryClassifier(6, ch=8)
        unlabeled = make_loader(demo_sets["china_patches"], MEAN, STD, 8, train=True, seed=2)
        return MoodcatCbTrainer(cb, make_loader(demo_sets["digits_train"], MEAN, STD, 8, train=True, seed=1),
                                config, gan, unlabeled_loader=unlabeled)

    straight = trainer()
    fit(straight, tmp_path / "straight", progress=False)
    first = trainer()
    fit(first, tmp_path / "resumed", progress=False, stop_after_epochs=1)
    torch.manual_seed(7)
    resumed = trainer()
    fit(resumed, tmp_path / "resumed", progress=False)
    _assert_identical(_weights(straight.net), _weights(resumed.net))


# -- divergence and cache keys ---------------------------------------------------------------------

def test_diverging_training_stops_and_caches_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    common = ["-p", "msp", "--profile", "tiny", "--device", "cpu", "--no-progress", "--output-dir", str(out)]
    assert main([*common, "--set", "trainer.lr=1.0e+10"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: training in") and "diverged" in err and "\n" not in err
    run_dirs = list((out / "checkpoints").glob("demo-base-*"))
    assert run_dirs and not any((d / "final.ckpt").exists() for d in run_dirs)
    for d in run_dirs:
        if (d / "history.json").exists():
            json.loads((d / "history.json").read_text())  # valid JSON, no NaN
    assert main(common) == 0  # the folder of the diverged run breaks nothing


def test_gan_with_exploding_discriminator_stops_and_saves_nothing(demo_sets, tmp_path):
    """A U-Net discriminator whose logits blow up (seen on CIFAR-100: real+fake BCE in the
    thousands while every loss stays finite) stops the run; the bad epoch is never checkpointed."""
    trainer = _gan_trainer(demo_sets["digits_train"])
    healthy = trainer.discriminator_loss

    def exploding(x, fake, y, use_cutmix):
        losses = healthy(x, fake, y, use_cutmix)
        return {**losses, "d_fake": losses["d_fake"] + 5000.0}

    trainer.discriminator_loss = exploding
    with pytest.raises(TrainingDivergedError, match="discriminator .* diverged in epoch 1"):
        fit(trainer, tmp_path / "gan", progress=False)
    assert not (tmp_path / "gan" / "last.ckpt").exists() and not (tmp_path / "gan" / "final.ckpt").exists()


def test_diverging_generator_is_the_one_line_divergence_error(demo_sets, tmp_path):
    """A generator whose output turns NaN (seen with gan.lr_g=1.0) stops with the README's one-line
    divergence error naming the generator's own learning rates, not piq's SSIM AssertionError."""
    trainer = _gan_trainer(demo_sets["digits_train"])
    with torch.no_grad():
        for param in trainer.net.decoder.parameters():
            param.fill_(float("nan"))
    with pytest.raises(TrainingDivergedError) as caught:
        fit(trainer, tmp_path / "gan", progress=False, settings="postprocessors.<method>.gan")
    message = str(caught.value)
    assert "\n" not in message and "diverged in epoch 1" in message and "generator's output" in message
    assert "postprocessors.<method>.gan.lr_g or postprocessors.<method>.gan.lr_d" in message
    assert not (tmp_path / "gan" / "last.ckpt").exists() and not (tmp_path / "gan" / "final.ckpt").exists()


def test_diverging_cb_hint_names_the_cb_learning_rate(make_config, monkeypatch, tmp_path):
    """Through the postprocessor: the hint names ``cb.lr`` of the method, not ``trainer.lr``
    (own checkpoint folder: a Cb cached by another test would not train)."""
    runner = Runner(make_config(["moodcat"], checkpoint_dir=str(tmp_path / "fresh")))

    def diverged(self, epoch_idx):
        return self.net, {"epoch_idx": epoch_idx, "loss": float("nan")}

    monkeypatch.setattr(MoodcatCbTrainer, "train_epoch", diverged)
    with pytest.raises(TrainingDivergedError, match=r"lower the learning rate \(postprocessors\.<method>\.cb\.lr,"):
        runner.train_method("moodcat")


def test_diverging_method_trainer_hint_names_the_method_section(make_config, monkeypatch, tmp_path):
    """A method training its own classifier (OE) names its own section's lr."""
    runner = Runner(make_config(["oe"], checkpoint_dir=str(tmp_path / "fresh")))
    monkeypatch.setattr(TRAINERS.get("oe"), "train_epoch",
                        lambda self, epoch_idx: (self.net, {"epoch_idx": epoch_idx, "loss": float("inf")}))
    with pytest.raises(TrainingDivergedError, match=r"\(postprocessors\.oe\.trainer\.lr,"):
        runner.train_method("oe")


TINY_MSP = ["-p", "msp", "--profile", "tiny", "--device", "cpu", "--no-progress", "--set", "trainer.num_epochs=1"]


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory):
    """An output folder holding one trained tiny classifier (copied by each test that spoils it)."""
    out = tmp_path_factory.mktemp("trained_once")
    assert main([*TINY_MSP, "--output-dir", str(out)]) == 0
    return out


@pytest.mark.parametrize("stale", ["plain_state_dict", "other_shape", "last_other_layout", "nan_weights"])
def test_stale_checkpoint_in_a_run_folder_is_one_line(trained_once, tmp_path, capsys, stale):
    """A final.ckpt of another layout (OpenOOD's best.ckpt, a plain state dict, copied in) or shape
    (a classifier of other classes), or a last.ckpt of another layout: one line naming the file."""
    out = tmp_path / "out"
    shutil.copytree(trained_once / "checkpoints", out / "checkpoints")
    run_dir, = (out / "checkpoints").glob("demo-base-*")
    final = load_checkpoint(run_dir / "final.ckpt")
    if stale == "plain_state_dict":
        torch.save(final["modules"]["net"], run_dir / "final.ckpt")
    elif stale == "other_shape":
        final["modules"]["net"]["fc.weight"] = torch.zeros(3, final["modules"]["net"]["fc.weight"].shape[1])
        torch.save(final, run_dir / "final.ckpt")
    elif stale == "nan_weights":  # named as the culprit, not a hint to re-score the method
        final["modules"]["net"]["fc.weight"].fill_(float("nan"))
        torch.save(final, run_dir / "final.ckpt")
    else:
        (run_dir / "final.ckpt").unlink()
        torch.save({"epoch": 1, "trainer": {"weights": torch.zeros(2)}}, run_dir / "last.ckpt")
    capsys.readouterr()
    assert main([*TINY_MSP, "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    name = "last.ckpt" if stale == "last_other_layout" else "final.ckpt"
    assert "\n" not in err and str(run_dir / name) in err and "delete it to retrain" in err, err
    assert not (out / "demo" / "scores").exists()  # refused before scoring


def test_cache_key_includes_cpu_threads(make_config):
    cfg = make_config(["msp"])
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run_folder(cfg, "x", {"a": 1})
        torch.set_num_threads(2)
        two = run_folder(cfg, "x", {"a": 1})
    finally:
        torch.set_num_threads(previous)
    assert one != two


def test_checkpoints_hold_only_weights_and_plain_values(make_config, tmp_path):
    cfg = make_config(["msp"], "trainer.num_epochs=2")
    runner = Runner(cfg)
    run_dir = tmp_path / "run"
    fit(_classifier_trainer(cfg, runner), run_dir, progress=False, stop_after_epochs=1)
    last = torch.load(run_dir / "last.ckpt", weights_only=True, map_location="cpu")
    assert last["epoch"] == 1 and last["trainer"]["data"]["train"] == {"pass_index": 0, "position": 10}  # 649 images // 64
    fit(_classifier_trainer(cfg, runner), run_dir, progress=False)
    assert set(torch.load(run_dir / "final.ckpt", weights_only=True)["modules"]) == {"net"}


def test_switches_at_their_neutral_value_do_not_change_the_cached_run(make_config):
    """Adding an off switch to a section must not orphan the models trained before it existed."""
    from moodcat_plugin.moodcat import runs
    from moodcat_plugin.training import run_identity

    assert run_identity({"lr": 1, "holdout_for_cb": 0.0}, {"holdout_for_cb": 0.0}) == {"lr": 1}
    assert run_identity({"lr": 1, "synthetic_negatives": ()}, {"synthetic_negatives": []}) == {"lr": 1}
    keys = []
    for overrides in ([], ["postprocessors.moodcat.gan.holdout_for_cb=0.2"],
                      ["postprocessors.moodcat.gan.cutmix_consistency=detached"]):
        cfg = make_config(["moodcat"], *overrides)
        keys.append(runs.gan_key(method_config(cfg, "moodcat")))
    assert "holdout_for_cb" not in keys[0]["gan"] and keys[1]["gan"]["holdout_for_cb"] == 0.2
    assert keys[2] == keys[0] and "cutmix_consistency" not in keys[0]["gan"]


def test_settings_only_cb_ext_reads_do_not_name_the_plain_cb(make_config):
    """``outlier_label: predicted`` changes Cb(ext) only: the plain Cb it shares with the paper's
    method keeps its cache key (before, the ext_predicted variant retrained an identical plain Cb)."""
    from moodcat_plugin.moodcat import runs

    keys = {}
    for label in ("wrong", "predicted"):
        cfg = method_config(make_config(["moodcat"], f"postprocessors.moodcat.cb.outlier_label={label}"), "moodcat")
        keys[label] = {variant: runs.cb_key(cfg, variant, runs.gan_key(cfg, from_benchmark=False), None)
                       for variant in ("cb", "cb_ext")}
    assert keys["predicted"]["cb"] == keys["wrong"]["cb"]
    assert keys["predicted"]["cb_ext"] != keys["wrong"]["cb_ext"]
    assert keys["predicted"]["cb_ext"]["cb"]["outlier_label"] == "predicted"


def test_nan_weights_in_a_given_checkpoint_name_it():
    """``network.checkpoint`` / shipped weights with NaN: the file is named, before any scoring."""
    from moodcat_plugin.utils import load_state_dict_strict

    state = {"weight": torch.full((2, 2), float("nan")), "bias": torch.zeros(2)}
    with pytest.raises(CheckpointError, match=r"checkpoint best.ckpt holds NaN or infinite weights \(weight\)"):
        load_state_dict_strict(torch.nn.Linear(2, 2), state, "checkpoint best.ckpt")


def test_more_threads_than_cpus_warns_in_one_line(caplog, monkeypatch):
    """Accepted (a container may see fewer CPUs than it may use) but never silently."""
    import logging
    import os

    from moodcat_plugin.utils import set_num_threads

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    previous = torch.get_num_threads()
    try:
        with caplog.at_level(logging.WARNING):
            assert set_num_threads(64) == 64
            warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warnings) == 1 and "num_threads=64 is more than the 2 CPUs" in warnings[0]
            assert "\n" not in warnings[0]
            caplog.clear()
            set_num_threads(2)
            assert not caplog.records
    finally:
        torch.set_num_threads(previous)
