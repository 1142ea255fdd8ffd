"""ResNet18_32x32 compatibility with OpenOOD checkpoints, and resumable classifier training."""
import torch
import pytest

from moodcat_plugin.errors import CheckpointError
from moodcat_plugin.networks.resnet18_32x32 import ResNet18_32x32
from moodcat_plugin.pipeline import Runner, build_network, method_config
from moodcat_plugin.registry import TRAINERS
from moodcat_plugin.training import fit
from moodcat_plugin.utils import load_checkpoint, load_state_dict_strict


def openood_resnet18_state_dict(num_classes=10):
    """OpenOOD v1.5 ResNet18_32x32 state-dict layout, written out from its documented structure."""
    state = {"conv1.weight": torch.randn(64, 3, 3, 3)}

    def bn(prefix, c):
        state.update({f"{prefix}.weight": torch.randn(c), f"{prefix}.bias": torch.randn(c),
                      f"{prefix}.running_mean": torch.randn(c), f"{prefix}.running_var": torch.rand(c),
                      f"{prefix}.num_batches_tracked": torch.tensor(5)})

    bn("bn1", 64)
    in_planes = 64
    for layer, planes in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            p = f"layer{layer}.{block}"
            state[f"{p}.conv1.weight"] = torch.randn(planes, in_planes if block == 0 else planes, 3, 3)
            bn(f"{p}.bn1", planes)
            state[f"{p}.conv2.weight"] = torch.randn(planes, planes, 3, 3)
            bn(f"{p}.bn2", planes)
            if block == 0 and in_planes != planes:
                state[f"{p}.shortcut.0.weight"] = torch.randn(planes, in_planes, 1, 1)
                bn(f"{p}.shortcut.1", planes)
        in_planes = planes
    state["fc.weight"] = torch.randn(num_classes, 512)
    state["fc.bias"] = torch.randn(num_classes)
    return state


def test_openood_state_dict_loads_strictly(tmp_path):
    state = openood_resnet18_state_dict()
    net = ResNet18_32x32(num_classes=10)
    path = tmp_path / "best.ckpt"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)  # DataParallel prefix too
    load_state_dict_strict(net, load_checkpoint(path), str(path))
    assert torch.equal(net.fc.weight, state["fc.weight"])
    logits, feature = net(torch.randn(2, 3, 32, 32), return_feature=True)
    assert logits.shape == (2, 10) and feature.shape == (2, 512)
    _, feats = net(torch.randn(2, 3, 32, 32), return_feature_list=True)
    assert len(feats) == 5


def test_wrong_class_count_and_corrupt_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="number of classes"):
        load_state_dict_strict(ResNet18_32x32(num_classes=100), openood_resnet18_state_dict(10), "x")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)


def test_checkpoint_flag_skips_training(make_config, tmp_path):
    path = tmp_path / "openood.ckpt"
    torch.save(openood_resnet18_state_dict(6), path)
    cfg = make_config(["msp"], "network.width=1.0", f"network.checkpoint={path}")
    net, info = Runner(cfg).network_for(method_config(cfg, "msp"), "msp")
    assert "from" in info["network"] and info["trainer"] is None


def _trainer(cfg, runner):
    mcfg = method_config(cfg, "msp")
    net = build_network(mcfg.network, 6)
    return TRAINERS.get("base")(net, runner.train_loader(mcfg), mcfg)


def test_interrupted_training_resumes(make_config, tmp_path):
    cfg = make_config(["msp"], "trainer.num_epochs=3")
    runner = Runner(cfg)
    run_dir = tmp_path / "run"
    first = fit(_trainer(cfg, runner), run_dir, progress=False, stop_after_epochs=1)
    assert first.get("interrupted") and (run_dir / "last.ckpt").is_file()
    second_trainer = _trainer(cfg, runner)
    second = fit(second_trainer, run_dir, progress=False)
    assert second["resumed_from"] == 1 and len(second["history"]) == 3
    assert (run_dir / "final.ckpt").is_file() and not (run_dir / "last.ckpt").exists()
    # the learning-rate schedule continued instead of restarting
    assert second_trainer.scheduler.last_epoch == 3 * len(second_trainer.train_loader)
    third = fit(_trainer(cfg, runner), run_dir, progress=False)
    assert third["cached"]


def test_loss_decreases_on_demo(make_config):
    cfg = make_config(["msp"], "trainer.num_epochs=4")
    runner = Runner(cfg)
    trainer = _trainer(cfg, runner)
    losses = [trainer.train_epoch(e)[1]["loss"] for e in range(1, 5)]
    assert losses[-1] < losses[0]
