"""OpenOOD bridge: registration into a FAKE minimal ``openood`` package and a postprocess run."""
from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn

from moodcat_plugin.config import load_yaml
from moodcat_plugin.data import make_loader
from moodcat_plugin.data.demo import build_demo_sets
from moodcat_plugin.errors import UserError
from moodcat_plugin.pipeline import default_config_root


@pytest.fixture
def fake_openood(monkeypatch):
    """``openood``, ``openood.postprocessors`` (BasePostprocessor) and
    ``openood.evaluation_api.postprocessor`` (the ``postprocessors`` dict) as bare modules."""

    class BasePostprocessor:
        def __init__(self, config):
            self.config = config

    package = types.ModuleType("openood")
    postprocessors = types.ModuleType("openood.postprocessors")
    postprocessors.BasePostprocessor = BasePostprocessor
    api = types.ModuleType("openood.evaluation_api")
    api_postprocessor = types.ModuleType("openood.evaluation_api.postprocessor")
    api_postprocessor.postprocessors = {"msp": BasePostprocessor}
    package.postprocessors, package.evaluation_api, api.postprocessor = postprocessors, api, api_postprocessor
    for name, module in {"openood": package, "openood.postprocessors": postprocessors,
                         "openood.evaluation_api": api, "openood.evaluation_api.postprocessor": api_postprocessor}.items():
        monkeypatch.setitem(sys.modules, name, module)
    return types.SimpleNamespace(base=BasePostprocessor, registry=api_postprocessor.postprocessors)


def test_import_without_openood_works_and_registration_explains(monkeypatch):
    monkeypatch.setitem(sys.modules, "openood", None)  # makes `import openood` fail
    import moodcat_plugin.openood_bridge as bridge

    with pytest.raises(UserError, match="OpenOOD is not installed"):
        bridge.register_into_openood()
    with pytest.raises(UserError, match="OpenOOD is not installed"):
        bridge.OpenOODMoodcatPostprocessor  # noqa: B018


class TinyClassifier(nn.Module):
    def __init__(self, num_classes=6):
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


def openood_style_config(tmp_path):
    """What OpenOOD's get_postprocessor builds: the method file plus dataset.name (no normalisation
    known for 'demo', so it is given) and our top-level profile/output_dir choices."""
    raw = load_yaml(default_config_root() / "postprocessors" / "moodcat.yml")
    raw["postprocessor"]["postprocessor_args"]["scorers"] = ["cb", "lpips"]
    raw.update({"profile": "tiny", "output_dir": str(tmp_path / "out"), "device": "cpu", "progress": False,
                "dataset": {"name": "demo", "normalization": {"mean": [0.3] * 3, "std": [0.3] * 3}}})
    return raw


def test_register_and_run_through_the_openood_contract(fake_openood, tmp_path):
    from moodcat_plugin.openood_bridge import register_into_openood, to_plugin_config

    cls = register_into_openood()
    assert fake_openood.registry["moodcat"] is cls and issubclass(cls, fake_openood.base)
    assert register_into_openood() is cls  # one class per OpenOOD base

    post = fake_openood.registry["moodcat"](openood_style_config(tmp_path))
    assert isinstance(post, fake_openood.base)
    assert post.APS_mode is False and post.hyperparam_search_done is False
    with pytest.raises(RuntimeError, match="setup"):
        post.postprocess(TinyClassifier(), torch.zeros(1, 3, 32, 32))

    sets = build_demo_sets(seed=0)
    loader = lambda name, n=16, train=False: make_loader(sets[name].subset(slice(0, n)), [0.3] * 3, [0.3] * 3, 8,  # noqa: E731
                                                         train=train)
    id_loaders = {"train": loader("digits_train", 64, train=True), "val": loader("digits_val"),
                  "test": loader("digits_test")}
    ood_loaders = {"val": loader("digits_6to9_val"), "nearood": {"digits_6to9": loader("digits_6to9")},
                   "farood": {"flower_patches": loader("flower_patches")}}
    net = TinyClassifier().eval()
    post.setup(net, id_loaders, ood_loaders)  # number of classes inferred from the classifier
    assert post.plugin_config.dataset.num_classes == 6
    data = next(iter(id_loaders["test"]))["data"]
    pred, conf = post.postprocess(net, data)
    assert torch.equal(pred, net(data).argmax(dim=1))
    assert conf.shape == (8,) and torch.isfinite(conf).all()
    assert set(post.inner.last_components) == {"cb", "lpips"}
    pred_all, conf_all, labels = post.inference(net, ood_loaders["farood"]["flower_patches"], progress=False)
    assert pred_all.shape == conf_all.shape == labels.shape == (16,)
    assert (tmp_path / "out" / "demo" / "moodcat_grids" / "flower_patches.png").is_file()  # farood -> far

    plugin = to_plugin_config({"postprocessor": {"name": "moodcat"}, "dataset": {"name": "cifar10"}})
    assert plugin.dataset.normalization.mean == [0.4914, 0.4822, 0.4465] and plugin.output_dir
