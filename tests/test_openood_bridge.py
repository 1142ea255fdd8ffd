"""OpenOOD bridge: registration into a FAKE ``openood`` package (written to tmp_path, mirroring both
of OpenOOD's postprocessor lookups), a postprocess run, the OpenOOD missing-weights hint and the
bridge-mode cache key."""
from __future__ import annotations

import importlib
import sys
import textwrap
import types

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from moodcat_plugin.config import Config, load_yaml
from moodcat_plugin.data import make_loader
from moodcat_plugin.data.demo import build_demo_sets
from moodcat_plugin.errors import MissingWeightsError, UserError
from moodcat_plugin.pipeline import default_config_root

# The fake mirrors OpenOOD v1.5's layout: the evaluator's module-level dict and its
# get_postprocessor(config_root, name, id_data_name) reading <config_root>/postprocessors/<name>.yml;
# the pipelines' get_postprocessor(config) with a dict local to the function, re-exported by the
# package and imported BY NAME in the pipeline modules.
FAKE_OPENOOD = {
    "__init__.py": "",
    "postprocessors/__init__.py": """
        from .base_postprocessor import BasePostprocessor
        from .ebo_postprocessor import EBOPostprocessor
        from .utils import get_postprocessor
    """,
    "postprocessors/base_postprocessor.py": """
        class BasePostprocessor:
            def __init__(self, config):
                self.config = config
    """,
    "postprocessors/ebo_postprocessor.py": """
        from .base_postprocessor import BasePostprocessor

        class EBOPostprocessor(BasePostprocessor):
            pass
    """,
    "postprocessors/utils.py": """
        from .base_postprocessor import BasePostprocessor
        from .ebo_postprocessor import EBOPostprocessor

        def get_postprocessor(config):
            postprocessors = {'msp': BasePostprocessor, 'ebo': EBOPostprocessor}
            return postprocessors[config.postprocessor.name](config)
    """,
    "pipelines/__init__.py": "",
    "pipelines/test_ood_pipeline.py": """
        from openood.postprocessors import get_postprocessor

        def build_postprocessor(config):  # what TestOODPipeline.run does
            return get_postprocessor(config)
    """,
    "pipelines/test_ad_pipeline.py": """
        from openood.postprocessors.utils import get_postprocessor

        def build_postprocessor(config):
            return get_postprocessor(config)
    """,
    "evaluation_api/__init__.py": "",
    "evaluation_api/postprocessor.py": """
        import os
        import yaml
        from openood.postprocessors import BasePostprocessor, EBOPostprocessor

        postprocessors = {'msp': BasePostprocessor, 'ebo': EBOPostprocessor}

        class Config(dict):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                for key, value in self.items():
                    if isinstance(value, dict):
                        self[key] = Config(value)

            def __getattr__(self, name):
                return self[name]

        def get_postprocessor(config_root, postprocessor_name, id_data_name):
            with open(os.path.join(config_root, 'postprocessors', postprocessor_name + '.yml')) as file:
                config = Config(yaml.safe_load(file))
            config['dataset'] = Config({**config.get('dataset', {}), 'name': id_data_name})
            postprocessor = postprocessors[postprocessor_name](config)
            postprocessor.APS_mode = config.postprocessor.APS_mode
            postprocessor.hyperparam_search_done = False
            return postprocessor
    """,
}


@pytest.fixture
def fake_openood(tmp_path, monkeypatch):
    """The fake package on sys.path; the pipeline module that imports by name from the package is
    loaded BEFORE registration (as ``from openood.pipelines import ...`` would), the other after."""
    root = tmp_path / "fake_site"
    for relative, text in FAKE_OPENOOD.items():
        path = root / "openood" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(root))
    for name in [n for n in sys.modules if n == "openood" or n.startswith("openood.")]:
        monkeypatch.delitem(sys.modules, name)
    importlib.invalidate_caches()
    package = importlib.import_module("openood.postprocessors")
    ood_pipeline = importlib.import_module("openood.pipelines.test_ood_pipeline")
    api = importlib.import_module("openood.evaluation_api.postprocessor")
    yield types.SimpleNamespace(base=package.BasePostprocessor, ebo=package.EBOPostprocessor, package=package,
                                utils=sys.modules["openood.postprocessors.utils"], ood_pipeline=ood_pipeline,
                                api=api, registry=api.postprocessors)
    for name in [n for n in sys.modules if n == "openood" or n.startswith("openood.")]:
        del sys.modules[name]  # loaded during the test: not on sys.path any more


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


def openood_style_config(tmp_path, scorers=("cb", "lpips"), profile="tiny"):
    """What OpenOOD's evaluator builds: the method file plus dataset.name (no normalisation known for
    'demo', so it is given) and our top-level profile/output_dir choices."""
    raw = load_yaml(default_config_root() / "postprocessors" / "moodcat.yml")
    raw["postprocessor"]["postprocessor_args"]["scorers"] = list(scorers)
    raw.update({"profile": profile, "output_dir": str(tmp_path / "out"), "device": "cpu", "progress": False,
                "dataset": {"name": "demo", "normalization": {"mean": [0.3] * 3, "std": [0.3] * 3}}})
    return raw


def pipeline_config(tmp_path, **kwargs):
    """What OpenOOD's main.py pipelines pass get_postprocessor: one merged Config (attribute access)
    whose dataset section is the full dataset file, number of classes included."""
    raw = openood_style_config(tmp_path, **kwargs)
    raw["dataset"].update({"num_classes": 6, "pre_size": 32, "image_size": 32, "interpolation": "bilinear"})
    return Config(raw)


def write_config_root(tmp_path, raw) -> str:
    """OpenOOD's <config_root>/postprocessors/ with our moodcat.yml (as the bridge docs say) and ebo.yml."""
    folder = tmp_path / "configs" / "postprocessors"
    folder.mkdir(parents=True)
    (folder / "moodcat.yml").write_text(yaml.safe_dump(raw))
    (folder / "ebo.yml").write_text(yaml.safe_dump({"postprocessor": {"name": "ebo", "APS_mode": False}}))
    return str(tmp_path / "configs")


def demo_loaders(train_slice=slice(0, 64)):
    sets = build_demo_sets(seed=0)

    def loader(name, part=slice(0, 16), train=False):
        return make_loader(sets[name].subset(part), [0.3] * 3, [0.3] * 3, 8, train=train,
                           augment=("crop", "flip") if train else ())

    id_loaders = {"train": loader("digits_train", train_slice, train=True), "val": loader("digits_val"),
                  "test": loader("digits_test")}
    ood_loaders = {"val": loader("digits_6to9_val"), "nearood": {"digits_6to9": loader("digits_6to9")},
                   "farood": {"flower_patches": loader("flower_patches")}}
    return id_loaders, ood_loaders


def test_register_and_run_through_the_openood_contract(fake_openood, tmp_path):
    from moodcat_plugin.openood_bridge import register_into_openood, to_plugin_config

    cls = register_into_openood()
    assert fake_openood.registry["moodcat"] is cls and issubclass(cls, fake_openood.base)
    assert register_into_openood() is cls  # one class per OpenOOD base

    # the evaluator's path: <config_root>/postprocessors/moodcat.yml + dataset.name
    post = fake_openood.api.get_postprocessor(write_config_root(tmp_path, openood_style_config(tmp_path)),
                                              "moodcat", "demo")
    assert isinstance(post, cls) and isinstance(post, fake_openood.base)
    assert post.APS_mode is False and post.hyperparam_search_done is False
    with pytest.raises(RuntimeError, match="setup"):
        post.postprocess(TinyClassifier(), torch.zeros(1, 3, 32, 32))

    id_loaders, ood_loaders = demo_loaders()
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
    # a set scores the same whatever OpenOOD scored before it (masks drawn per set and image)
    post.inference(net, id_loaders["test"], progress=False)
    _, conf_again, _ = post.inference(net, ood_loaders["farood"]["flower_patches"], progress=False)
    assert np.array_equal(conf_all, conf_again)
    assert (tmp_path / "out" / "demo" / "moodcat_grids" / "flower_patches.png").is_file()  # farood -> far

    plugin = to_plugin_config({"postprocessor": {"name": "moodcat"}, "dataset": {"name": "cifar10"}})
    assert plugin.dataset.normalization.mean == [0.4914, 0.4822, 0.4465] and plugin.output_dir


def test_moodcat_resolves_through_both_openood_lookups(fake_openood, tmp_path):
    from moodcat_plugin.openood_bridge import register_into_openood

    config = pipeline_config(tmp_path)
    with pytest.raises(KeyError, match="moodcat"):  # main.py's path knows nothing of a dict registration
        fake_openood.ood_pipeline.build_postprocessor(config)

    cls = register_into_openood()
    assert register_into_openood() is cls
    wrapper = fake_openood.utils.get_postprocessor
    # one wrapper, bound in utils, the package and the pipeline that imported it by name before registration
    assert fake_openood.package.get_postprocessor is wrapper and fake_openood.ood_pipeline.get_postprocessor is wrapper
    assert not hasattr(wrapper.__wrapped__, "moodcat_plugin_classes")  # not wrapped twice
    ad_pipeline = importlib.import_module("openood.pipelines.test_ad_pipeline")  # imported after registration
    for build in (fake_openood.ood_pipeline.build_postprocessor, ad_pipeline.build_postprocessor,
                  fake_openood.package.get_postprocessor):
        post = build(config)
        assert type(post) is cls and post.inner.scorer_names == ["cb", "lpips"]
        assert post.APS_mode is False and post.hyperparam_search_done is False
    # every other name still reaches OpenOOD's own table, unknown names still fail as before
    assert type(ad_pipeline.build_postprocessor(Config({"postprocessor": {"name": "msp"}}))) is fake_openood.base
    assert type(fake_openood.ood_pipeline.build_postprocessor(Config({"postprocessor": {"name": "ebo"}}))) \
        is fake_openood.ebo
    with pytest.raises(KeyError, match="nope"):
        wrapper(Config({"postprocessor": {"name": "nope"}}))

    # the evaluator's dict path, for moodcat and for OpenOOD's own names
    root = write_config_root(tmp_path, openood_style_config(tmp_path))
    assert type(fake_openood.api.get_postprocessor(root, "moodcat", "demo")) is cls
    assert type(fake_openood.api.get_postprocessor(root, "ebo", "demo")) is fake_openood.ebo
    assert set(fake_openood.registry) == {"msp", "ebo", "moodcat"}


def test_missing_weights_hint_inside_openood_names_the_config_key(fake_openood, tmp_path, monkeypatch):
    from moodcat_plugin.openood_bridge import register_into_openood, to_plugin_config
    from moodcat_plugin.postprocessors.moodcat_postprocessor import MoodcatPostprocessor

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty_hub"))
    register_into_openood()
    config = pipeline_config(tmp_path, profile="gpu")  # pretrained IQA trunks; construction fails first
    with pytest.raises(MissingWeightsError) as error:
        fake_openood.ood_pipeline.build_postprocessor(config)
    message = str(error.value)
    assert "vgg16-397923af.pth" in message
    assert "postprocessor.postprocessor_args.scorers: [cb]" in message and "--set" not in message
    # the evaluator's path learns the number of classes in setup, and fails there, before any training
    root = write_config_root(tmp_path, openood_style_config(tmp_path, profile="gpu"))
    post = fake_openood.api.get_postprocessor(root, "moodcat", "demo")
    id_loaders, _ = demo_loaders()
    with pytest.raises(MissingWeightsError, match=r"scorers: \[cb\] in the OpenOOD config") as error:
        post.setup(TinyClassifier(), id_loaders, {})
    assert "--set" not in str(error.value) and not (tmp_path / "out" / "checkpoints").exists()
    # our own CLI keeps its --set hint
    with pytest.raises(MissingWeightsError, match="--set postprocessors.moodcat.postprocessor"):
        MoodcatPostprocessor(to_plugin_config(config))


def test_bridge_cache_key_follows_the_training_data(fake_openood, tmp_path):
    """Two different training sets under one dataset.name must not share GAN/Cb weights."""
    from moodcat_plugin.openood_bridge import register_into_openood

    register_into_openood()
    net = TinyClassifier().eval()
    root = write_config_root(tmp_path, openood_style_config(tmp_path, scorers=("cb",)))

    def setup_on(train_slice):
        post = fake_openood.api.get_postprocessor(root, "moodcat", "demo")
        id_loaders, ood_loaders = demo_loaders(train_slice)
        post.setup(net, id_loaders, ood_loaders)
        return post.inner.training_info

    first, other, again = setup_on(slice(0, 64)), setup_on(slice(64, 128)), setup_on(slice(0, 64))
    for part in ("moodcat_gan", "moodcat_cb"):
        assert other[part]["folder"] != first[part]["folder"] and not other[part]["cached"]
        # same data (with random crop/flip augmentation) -> same key -> the trained weights are reused
        assert again[part]["folder"] == first[part]["folder"] and again[part]["cached"]


class _OpenOODStyleDataset(torch.utils.data.Dataset):
    """Map-style dataset as OpenOOD's: dict items, random flip drawn from torch's global RNG."""

    def __init__(self, array):
        self.array = array

    def __len__(self):
        return len(self.array)

    def __getitem__(self, index):
        image = torch.from_numpy(self.array.images[index]).permute(2, 0, 1).float() / 255
        if torch.rand(()) < 0.5:
            image = image.flip(-1)
        return {"data": image, "label": int(self.array.labels[index])}


def test_training_data_fingerprint_is_deterministic_and_leaves_the_rngs_alone():
    from moodcat_plugin.moodcat.runs import training_data_fingerprint

    sets = build_demo_sets(seed=0)
    array = sets["digits_train"].subset(slice(0, 40))
    make = lambda a: torch.utils.data.DataLoader(_OpenOODStyleDataset(a), batch_size=8, shuffle=True)  # noqa: E731
    state = torch.get_rng_state()
    print_ = training_data_fingerprint(make(array), samples=8)
    assert torch.equal(torch.get_rng_state(), state)
    assert print_ == training_data_fingerprint(make(array), samples=8)
    assert print_["images"] == 40 and print_["sampled"] == 8
    changed = array.subset(slice(0, 40))
    changed.images = changed.images.copy()
    changed.images[39] = 255 - changed.images[39]  # the last item is always sampled
    assert training_data_fingerprint(make(changed), samples=8)["sha256"] != print_["sha256"]
