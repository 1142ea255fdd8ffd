"""OpenOOD's post-hoc detectors in our pipeline: they run on the demo, read one shared forward pass
per dataset, and their ID-train fits reuse the pass cached beside the classifier's checkpoint."""
import numpy as np
import pytest

from moodcat_plugin.pipeline import Runner, available, default_config_root, expand_methods
from moodcat_plugin.registry import POSTPROCESSORS

DETECTORS = ["mls", "temp_scaling", "gen", "klm", "mds", "rmds", "knn", "vim", "react", "ash", "scale", "she", "dice"]


def test_all_includes_the_detectors_and_they_declare_what_they_read():
    root = default_config_root()
    assert set(DETECTORS) <= set(expand_methods(["all"], root)) == set(available(root, "postprocessors"))
    needs = {name: POSTPROCESSORS.get(name).needs for name in DETECTORS}
    assert set(needs.values()) == {"logits", "features"}
    assert POSTPROCESSORS.get("odin").needs == "forward" and POSTPROCESSORS.get("moodcat").needs == "forward"


def test_detectors_share_one_pass_and_reuse_the_cached_training_pass(make_config, forward_passes):
    passes = forward_passes
    runner = Runner(make_config(DETECTORS))
    for method in DETECTORS:
        folder = runner.run_method(method)
        with np.load(folder / "id_test.npz") as scores:
            assert np.isfinite(scores["conf"]).all(), method
    assert len(passes) == len(set(passes))  # every dataset through the classifier once for all 13
    train_name = runner.benchmark.id["train"].name
    assert list(runner.checkpoint_root.rglob("outputs_train.npz")), "ID-train outputs kept beside the checkpoint"

    passes.clear()
    again = Runner(make_config(["mds"]))
    again.run_method("mds")
    assert train_name not in passes and passes  # fitted from the cached training pass


def test_knn_k_beyond_the_training_set_is_a_config_error(make_config):
    runner = Runner(make_config(["knn"], "postprocessors.knn.postprocessor.postprocessor_args.K=100000",
                                "postprocessors.knn.postprocessor.APS_mode=false"))
    with pytest.raises(Exception, match="K = 100000 exceeds the .* ID training images"):
        runner.run_method("knn")


def test_list_shows_one_line_per_detector(capsys):
    from moodcat_plugin.cli import main

    assert main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in DETECTORS:
        line = next(l for l in lines if l.startswith(f"  {name} "))
        assert f"needs {POSTPROCESSORS.get(name).needs}" in line and "fit: " in line
    assert any(l.startswith("  mds ") and "fit: ID train (labels)" in l for l in lines)
