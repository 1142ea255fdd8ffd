"""MOODCAT postprocessor: scorers (offline, cached weights), contract, end-to-end runs and caching."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from moodcat_plugin.data import make_loader
from moodcat_plugin.errors import ConfigError, MissingWeightsError
from moodcat_plugin.moodcat.scorers import DISTSScorer, LPIPSScorer, required_weight_files
from moodcat_plugin.pipeline import Runner, method_config
from moodcat_plugin.postprocessors.moodcat_postprocessor import MoodcatPostprocessor

VGG_FILE = "vgg16-397923af.pth"
DISTS_FILE = "dists_weights.pt"


@pytest.fixture
def hub_dir(tmp_path):
    """Point torch.hub at an empty temporary folder for the test, then restore it."""
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub" / "checkpoints"
    torch.hub.set_dir(previous)


@pytest.fixture
def no_download(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


# -- scorers ---------------------------------------------------------------------------------------
def test_required_cache_file_names():
    assert required_weight_files(["cb", "lpips", "dists"]) == {
        "cb": [], "lpips": [VGG_FILE], "dists": [VGG_FILE, DISTS_FILE]}
    assert required_weight_files(["lpips"], lpips_trunk="alex") == {"lpips": ["alexnet-owt-7be5be79.pth"]}


def test_missing_weights_error_names_file_folder_and_alternative(hub_dir, no_download, make_config):
    for build, missing in ((lambda: LPIPSScorer("vgg", pretrained=True), [VGG_FILE]),
                           (lambda: DISTSScorer(pretrained=True), [VGG_FILE, DISTS_FILE])):
        with pytest.raises(MissingWeightsError) as error:
            build()
        message = str(error.value)
        assert all(name in message for name in missing)
        assert str(hub_dir) in message
        assert "scorers=[cb]" in message
    # the postprocessor fails at construction (before any GAN training) unless the scorers are dropped
    cfg = make_config(["moodcat"], "postprocessors.moodcat.iqa.pretrained=true")
    with pytest.raises(MissingWeightsError, match=VGG_FILE):
        MoodcatPostprocessor(method_config(cfg, "moodcat"))
    cfg = make_config(["moodcat"], "postprocessors.moodcat.iqa.pretrained=true",
                      "postprocessors.moodcat.postprocessor.postprocessor_args.scorers=[cb]")
    assert MoodcatPostprocessor(method_config(cfg, "moodcat")).scorer_names == ["cb"]


def test_pretrained_trunks_load_from_the_cache_only(hub_dir, no_download):
    hub_dir.mkdir(parents=True)
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, hub_dir / VGG_FILE)
    alpha_beta = {"alpha": torch.rand(1, 1475, 1, 1), "beta": torch.rand(1, 1475, 1, 1)}
    torch.save(alpha_beta, hub_dir / DISTS_FILE)
    original_loader = torch.hub.load_state_dict_from_url

    lpips_scorer = LPIPSScorer("vgg", pretrained=True)
    dists_scorer = DISTSScorer(pretrained=True)
    assert torch.equal(lpips_scorer.metric.net.slice1[0].weight, features[0].weight)
    assert torch.equal(lpips_scorer.metric.net.slice5._modules["28"].bias, features[28].bias)
    assert torch.equal(dists_scorer.metric.model[0].weight, features[0].weight)
    assert torch.equal(dists_scorer.metric.weights[0], alpha_beta["alpha"][:, :3])
    assert torch.hub.load_state_dict_from_url is original_loader  # the temporary redirection is undone
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    assert lpips_scorer(x, x.flip(0), torch.zeros(3, dtype=torch.long)).shape == (3,)


def test_random_trunk_scorers_run_offline(no_download):
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    other = torch.rand(4, 3, 32, 32) * 2 - 1
    y = torch.zeros(4, dtype=torch.long)
    for scorer in (LPIPSScorer("vgg", pretrained=False), LPIPSScorer("alex", pretrained=False),
                   DISTSScorer(pretrained=False)):
        same, different = scorer(x, x, y), scorer(x, other, y)
        assert same.shape == different.shape == (4,)
        assert torch.allclose(same, torch.zeros(4), atol=1e-5)
        assert (different > same + 1e-4).all(), scorer.name


# -- configuration -------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, match", [
    ("postprocessors.moodcat.postprocessor.postprocessor_args.label_source=true", "TRUE label"),
    ("postprocessors.moodcat.postprocessor.postprocessor_args.scorers=[cb,ssim]", "subset"),
    ("postprocessors.moodcat.postprocessor.postprocessor_args.cb_variants=[cb_ext]", r"\[cb, cb_ext\]"),
    ("postprocessors.moodcat.postprocessor.postprocessor_args.num_masks=0", "num_masks"),
])
def test_bad_arguments_are_config_errors(make_config, override, match):
    with pytest.raises(ConfigError, match=match):
        MoodcatPostprocessor(method_config(make_config(["moodcat"], override), "moodcat"))


# -- contract --------------------------------------------------------------------------------------
class ConstantClassifier(nn.Module):
    """Predicts class 4 for every input (whatever the true label)."""

    def forward(self, x):
        logits = torch.zeros(len(x), 6)
        logits[:, 4] = 1.0
        return logits + 0 * x.mean()


def test_postprocess_contract_conditions_on_the_classifier_prediction(make_config):
    cfg = method_config(make_config(["moodcat"], "postprocessors.moodcat.postprocessor.postprocessor_args.scorers=[cb]",
                                    "postprocessors.moodcat.postprocessor.postprocessor_args.num_masks=2"), "moodcat")
    runner = Runner(make_config(["msp"]))
    bench = runner.benchmark
    loader = lambda array, train=False: make_loader(array.subset(slice(0, 24)), bench.mean, bench.std, 12,  # noqa: E731
                                                    train=train)
    id_loaders = {"train": make_loader(bench.id["train"], bench.mean, bench.std, 16, train=True),
                  "val": loader(bench.id["val"]), "test": loader(bench.id["test"])}
    ood_loaders = {"val": loader(bench.ood_val), "near": {"digits_6to9": loader(bench.near["digits_6to9"])}, "far": {}}
    post = MoodcatPostprocessor(cfg)  # no benchmark attached: the bare OpenOOD path (id_loader_dict['train'])
    net = ConstantClassifier()
    post.setup(net, id_loaders, ood_loaders)

    conditioned = []
    original = post.gan.synthesize_from_masked
    post.gan.synthesize_from_masked = lambda masked, y, **kw: conditioned.append(y.clone()) or original(masked, y, **kw)
    batch = next(iter(id_loaders["test"]))
    assert len(set(batch["label"].tolist())) > 1
    pred, conf = post.postprocess(net, batch["data"])
    assert pred.shape == conf.shape == (12,) and pred.dtype == torch.int64
    assert (pred == 4).all()  # the classifier's argmax, not the ground truth
    assert len(conditioned) == 2 and all((y == 4).all() for y in conditioned)  # K = 2 masks
    assert torch.isfinite(conf).all() and ((conf >= 0) & (conf <= 1.01)).all()
    assert set(post.last_components) == {"cb"} and post.last_components["cb"].shape == (12,)
    assert post.run_meta["scorers"] == ["cb"] and post.training_info["moodcat_gan"]["cached"] is False
    grids = Path(cfg.output_dir) / "demo" / "moodcat_grids"
    assert (grids / "id_test.png").is_file() and (grids / "digits_6to9.png").is_file()


# -- end to end ------------------------------------------------------------------------------------------
def _final_checkpoints(checkpoint_dir: Path) -> dict:
    return {p.parent.name: p.stat().st_mtime_ns for p in Path(checkpoint_dir).glob("demo-moodcat*/final.ckpt")}


def test_end_to_end_rows_grids_and_cache_reuse(make_config, no_download, shrink):
    cfg = make_config(["moodcat"])
    checkpoints = Path(cfg.checkpoint_dir)  # shared by the session: compare snapshots, not counts
    runner = shrink(Runner(cfg))
    runner.run_method("moodcat")
    runner.leaderboard()
    results = Path(cfg.output_dir) / "demo"
    rows = {row["method"]: row for row in json.loads((results / "leaderboard.json").read_text())["rows"]}
    assert {"moodcat", "moodcat:cb", "moodcat:lpips", "moodcat:dists"} <= set(rows)
    assert rows["moodcat"]["outlier_data"] is False
    for name in ("id_test", "digits_6to9", "flower_patches"):
        assert (results / "moodcat_grids" / f"{name}.png").is_file()
    trained = _final_checkpoints(checkpoints)
    assert any(n.startswith("demo-moodcat_gan-") for n in trained)
    assert any(n.startswith("demo-moodcat_cb-") for n in trained)

    # second run: same GAN and Cb (other scorers do not change them), plus Cb(ext) for moodcat_ext
    scorers_cb = "postprocessor.postprocessor_args.scorers=[cb]"
    cfg2 = make_config(["moodcat", "moodcat_ext"], f"postprocessors.moodcat.{scorers_cb}",
                       f"postprocessors.moodcat_ext.{scorers_cb}")
    runner2 = shrink(Runner(cfg2))
    runner2.run_method("moodcat")
    runner2.run_method("moodcat_ext")
    runner2.leaderboard()
    after = _final_checkpoints(checkpoints)
    assert {k: after[k] for k in trained} == trained  # nothing retrained
    new = set(after) - set(trained)  # only Cb(ext) may be new (unless an earlier test trained it)
    assert all(name.startswith("demo-moodcat_cb_ext-") for name in new)
    assert any(name.startswith("demo-moodcat_cb_ext-") for name in after)
    rows = {row["method"]: row for row in json.loads((results / "leaderboard.json").read_text())["rows"]}
    assert {"moodcat_ext", "moodcat_ext:cb", "moodcat_ext:cb_ext"} <= set(rows)
    assert rows["moodcat_ext"]["outlier_data"] is True
