"""The authors' weights in our pipeline (issue 25): a reference-layout file imported by
scripts/import_moodcat_weights.py scores from the CLI with --pretrained and through
scripts/moodcat_protocols.py; and a set's masks (so its scores) do not depend on the sets scored
before it."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from authors_reference import reference_layout_state
from moodcat_plugin.cli import main
from moodcat_plugin.moodcat.authors_weights import import_authors_weights
from moodcat_plugin.pipeline import Runner
from moodcat_plugin.postprocessors.moodcat_postprocessor import MoodcatPostprocessor
from test_authors_weights import FIXTURE

CB_ONLY = "postprocessors.moodcat.postprocessor.postprocessor_args.scorers=[cb]"
CLASS_KEYS = ("shared.weight", "embedding.weight_orig", "embedding.weight_u")


@pytest.fixture(autouse=True)
def _no_grids(monkeypatch):
    """Picture grids (matplotlib) are not what these tests check."""
    monkeypatch.setattr(MoodcatPostprocessor, "_save_grids", lambda self, *args: None)


def authors_files_for(folder, classes: int) -> dict:
    """The authors' E, G and Cb files (reference layout, the equality fixture's recipe) for ``classes``."""
    meta = json.loads(str(np.load(FIXTURE)["meta"]))
    seeds, paths = meta["seeds"], {}
    folder.mkdir(parents=True, exist_ok=True)
    for part, name in (("encoder", "E_ep_7.pth"), ("decoder", "G_ep_7.pth"), ("cb", "acc=0.8.pth")):
        layout = [(k, [classes] + shape[1:] if k in CLASS_KEYS else shape) for k, shape in meta["layouts_10"][part]]
        state = reference_layout_state(layout, seeds[part])
        paths[part] = folder / name
        torch.save({"state_dict": state} if part == "cb" else state, paths[part])
    return paths


@pytest.fixture(scope="module")
def demo_authors_weights(tmp_path_factory):
    """The authors' paper-size networks for the 6-class demo benchmark, imported into our format."""
    root = tmp_path_factory.mktemp("authors_demo")
    paths = authors_files_for(root / "ckpt", 6)
    out = root / "weights" / "moodcat_demo_authors.pt"
    out.parent.mkdir()
    entry = import_authors_weights("demo", 6, paths["encoder"], paths["decoder"], out, cb=paths["cb"])
    return out, entry


def test_imported_file_scores_from_the_cli(demo_authors_weights, shared_checkpoints, tmp_path, capsys):
    path, entry = demo_authors_weights
    out = tmp_path / "out"
    assert main(["-p", "moodcat", "msp", "--profile", "tiny", "--device", "cpu", "--no-progress",
                 "--output-dir", str(out), "--set", CB_ONLY, "--set", f"checkpoint_dir={shared_checkpoints}",
                 "--pretrained", str(path)]) == 0
    assert "# Leaderboard: demo" in capsys.readouterr().out
    meta = json.loads((out / "demo" / "scores" / "moodcat" / "meta.json").read_text())
    assert meta["training"]["moodcat_gan"]["sha256"] == entry["sha256"]
    assert meta["training"]["moodcat_cb"]["pretrained"] == str(path)  # the authors' Cb, not one trained here
    conf = np.load(out / "demo" / "scores" / "moodcat" / "digits_6to9.npz")["conf"]
    assert len(conf) > 0 and np.isfinite(conf).all()


def test_protocol_table_on_the_imported_file(demo_authors_weights, shared_checkpoints, tmp_path, script):
    path, entry = demo_authors_weights
    out = tmp_path / "out"
    assert script("moodcat_protocols").main(["-b", "demo", "--profile", "tiny", "--output-dir", str(out),
                                             "--no-progress", "--set", CB_ONLY, "--set",
                                             f"checkpoint_dir={shared_checkpoints}", "--pretrained", str(path)]) == 0
    table = json.loads((out / "demo" / "protocols.json").read_text())
    assert set(table) == {"deployable", "authors", "true_id"}
    assert all(0 <= row["digits_6to9"]["AUROC"] <= 1 for row in table.values())
    assert f"from the weights file {path} (sha256 {entry['sha256'][:12]}" in (out / "demo" / "protocols.md").read_text()


def test_a_sets_scores_do_not_depend_on_the_sets_scored_before_it(demo_authors_weights, make_config):
    path, _ = demo_authors_weights
    runner = Runner(make_config(["moodcat"], CB_ONLY, f"postprocessors.moodcat.pretrained.file={path}"))
    post, net, _ = runner.prepare_method("moodcat")
    evaluator = runner.evaluator
    post.setup(net, evaluator.id_loader_dict, evaluator.ood_loader_dict)
    near = evaluator.ood_loader_dict["near"]["digits_6to9"]
    alone = evaluator.score(post, net, near).conf
    evaluator.score(post, net, evaluator.id_loader_dict["test"])
    evaluator.score(post, net, evaluator.ood_loader_dict["far"]["flower_patches"])
    after_others = evaluator.score(post, net, near).conf
    np.testing.assert_array_equal(alone, after_others)
    # and the masks really are drawn: another mask_seed gives other scores for the same set
    post.mask_seed = 1
    assert not np.array_equal(evaluator.score(post, net, near).conf, alone)
