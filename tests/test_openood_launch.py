"""``python -m moodcat_plugin.openood_launch`` against a MINIATURE OpenOOD checkout built in tmp_path.

Real (ours, unchanged): the launcher, ``openood_bridge.register_into_openood`` and its wrapper,
``MoodcatPostprocessor`` with the ``tiny`` profile (GAN and Cb really train, a few steps), and
``configs/postprocessors/moodcat.yml`` read in place from this repository.

Stand-ins (OpenOOD v1.5 is not on the package index and tests run offline; its real ``openood``
also needs cv2, pandas, diffdist, ...): ``main.py`` (``setup_config()`` then
``get_pipeline(config).run()``, as OpenOOD's), ``openood.utils`` (a ``Config`` dict with attribute
access, ``setup_config`` merging the ``--config`` files in order and applying ``--key value``
overrides only to keys some file defines, as OpenOOD's does), ``openood.postprocessors`` (MSP base,
``get_postprocessor(config)`` with its table local to the function, imported by name in the
pipeline) and ``openood.evaluation_api.postprocessor.postprocessors``, and a ``test_ood`` pipeline
that builds a seeded linear classifier, random-tensor loaders, calls ``get_postprocessor(config)``,
``setup`` and ``inference``, and writes AUROC and what it ran to ``<output_dir>/result.json``.
Checked once by hand against the REAL OpenOOD (not part of this test; Jingkang50/OpenOOD 3c35632
cloned to a scratch folder, its missing deps pip-installed in a scratch venv: pandas,
opencv-python-headless, diffdist, imgaug, statsmodels, timm, foolbox, json5; scratch-only shims:
``np.sctypes`` for imgaug on NumPy 2, an empty ``libmr`` (OpenMax only), ``.cuda()`` as a no-op
because its main.py pipelines call it unconditionally and that machine has no GPU). Its real
``setup_config`` loads its cifar10 test_ood files plus the launcher-resolved moodcat.yml and profile
file, ``--profile tiny`` overrides it and the bridge maps it (2 GAN steps; default cpu: 200). Then
``python -m moodcat_plugin.openood_launch --config <256/64/128-image CIFAR-10 train/val/test and
128 TIN imglists> configs/networks/resnet18_32x32.yml configs/pipelines/test/test_ood.yml
configs/preprocessors/base_preprocessor.yml configs/postprocessors/moodcat.yml --network.pretrained
True --network.checkpoint <seeded random ResNet-18> --num_workers 0 --profile tiny`` ran OpenOOD's
main.py, TestOODPipeline and evaluator to "Completed!" with MOODCAT (ood.csv written, experiment
folder ``..._ood_moodcat_default``), 33.7 s wall on the shared 2-core CPU, 2026-12-05.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from moodcat_plugin import openood_launch
from moodcat_plugin.errors import UserError
from moodcat_plugin.openood_bridge import OPENOOD_MISSING

REPO = Path(__file__).resolve().parents[1]

MINI_OPENOOD = {
    "main.py": """
        from openood.pipelines import get_pipeline
        from openood.utils import setup_config

        if __name__ == '__main__':
            get_pipeline(setup_config()).run()
    """,
    "openood/__init__.py": "",
    "openood/utils/__init__.py": "from .config import Config, setup_config\n",
    "openood/utils/config.py": """
        import argparse
        import yaml

        class Config(dict):
            def __getattr__(self, key):
                return self[key]

        def as_config(value):
            return Config({k: as_config(v) for k, v in value.items()}) if isinstance(value, dict) else value

        def deep_merge(into, new):
            for key, value in new.items():
                if isinstance(value, dict) and isinstance(into.get(key), dict):
                    deep_merge(into[key], value)
                else:
                    into[key] = value

        def setup_config():
            parser = argparse.ArgumentParser()
            parser.add_argument('--config', nargs='+', required=True)
            opt, rest = parser.parse_known_args()
            merged = {}
            for path in opt.config:
                with open(path) as file:
                    deep_merge(merged, yaml.safe_load(file))
            for flag, text in zip(rest[::2], rest[1::2]):
                *parents, leaf = flag[2:].split('.')
                section = merged
                for part in parents:
                    section = section[part]
                old = section[leaf]  # unknown keys fail, as in OpenOOD
                section[leaf] = text if isinstance(old, str) else type(old)(text)
            return as_config(merged)
    """,
    "openood/postprocessors/__init__.py": """
        from .base_postprocessor import BasePostprocessor
        from .utils import get_postprocessor
    """,
    "openood/postprocessors/base_postprocessor.py": """
        import torch

        class BasePostprocessor:
            def __init__(self, config):
                self.config = config

            def setup(self, net, id_loader_dict, ood_loader_dict):
                pass

            @torch.no_grad()
            def postprocess(self, net, data):
                pred = net(data).softmax(1)
                return pred.argmax(1), pred.max(1).values

            def inference(self, net, data_loader, progress=True):
                preds, confs, labels = [], [], []
                for batch in data_loader:
                    pred, conf = self.postprocess(net, batch['data'])
                    preds.append(pred); confs.append(conf); labels.append(batch['label'])
                return torch.cat(preds).numpy(), torch.cat(confs).numpy(), torch.cat(labels).numpy()  # as v1.5
    """,
    "openood/postprocessors/utils.py": """
        from .base_postprocessor import BasePostprocessor

        def get_postprocessor(config):
            table = {'msp': BasePostprocessor}
            return table[config.postprocessor.name](config)
    """,
    "openood/evaluation_api/__init__.py": "",
    "openood/evaluation_api/postprocessor.py": """
        from openood.postprocessors import BasePostprocessor

        postprocessors = {'msp': BasePostprocessor}
    """,
    "openood/pipelines/__init__.py": """
        from .test_ood_pipeline import TestOODPipeline

        def get_pipeline(config):
            return {'test_ood': TestOODPipeline}[config.pipeline.name](config)
    """,
    "openood/pipelines/test_ood_pipeline.py": """
        import json
        import os

        import torch
        from sklearn.metrics import roc_auc_score
        from torch import nn

        from openood.postprocessors import get_postprocessor

        class Images(torch.utils.data.Dataset):
            def __init__(self, count, shift, seed):
                generator = torch.Generator().manual_seed(seed)
                self.data = (torch.rand(count, 3, 32, 32, generator=generator) * 0.5 + shift - 0.5) / 0.5
                self.label = torch.randint(0, 4, (count,), generator=generator)

            def __len__(self):
                return len(self.data)

            def __getitem__(self, index):
                return {'data': self.data[index], 'label': int(self.label[index])}

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(3 * 32 * 32, 4)

            def forward(self, x, return_feature=False):
                feature = x.flatten(1)
                return (self.fc(feature), feature) if return_feature else self.fc(feature)

        class TestOODPipeline:
            def __init__(self, config):
                self.config = config

            def run(self):
                torch.manual_seed(self.config.seed)
                net = Net().eval()

                def loader(count, shift, seed):
                    return torch.utils.data.DataLoader(Images(count, shift, seed), batch_size=16)

                id_loaders = {'train': loader(32, 0.0, 1), 'val': loader(16, 0.0, 2), 'test': loader(16, 0.0, 3)}
                ood_loaders = {'val': loader(16, 0.5, 4), 'near': {'bright': loader(16, 0.5, 5)}, 'far': {}}
                postprocessor = get_postprocessor(self.config)
                postprocessor.setup(net, id_loaders, ood_loaders)
                _, id_conf, _ = postprocessor.inference(net, id_loaders['test'], False)
                _, ood_conf, _ = postprocessor.inference(net, ood_loaders['near']['bright'], False)
                labels = [1] * len(id_conf) + [0] * len(ood_conf)
                scores = [float(s) for s in list(id_conf) + list(ood_conf)]
                plugin = getattr(postprocessor, 'plugin_config', {})
                os.makedirs(self.config.output_dir, exist_ok=True)
                with open(os.path.join(self.config.output_dir, 'result.json'), 'w') as file:
                    json.dump({'class': type(postprocessor).__name__, 'profile': plugin.get('profile'),
                               'gan_steps': plugin.get('gan', {}).get('steps_per_epoch'),
                               'auroc': roc_auc_score(labels, scores), 'scores': scores}, file)
    """,
    "configs/datasets/mini.yml": {"dataset": {"name": "mini", "normalization": {"mean": [0.5] * 3,
                                                                              "std": [0.5] * 3}}},
    "configs/pipelines/test_ood.yml": {"pipeline": {"name": "test_ood"}, "seed": 0, "num_gpus": 1,
                                       "num_machines": 1, "output_dir": "./results", "device": "cpu",
                                       "progress": False},
}


@pytest.fixture
def checkout(tmp_path):
    """The miniature OpenOOD checkout (no moodcat.yml anywhere in it)."""
    root = tmp_path / "OpenOOD"
    for relative, content in MINI_OPENOOD.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(content) if isinstance(content, dict) else textwrap.dedent(content))
    return root


def run_launcher(checkout, *args):
    """The real command line, in a fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "moodcat_plugin.openood_launch", *args], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def in_checkout(checkout, monkeypatch):
    """Run the launcher in this process, as `python -m` from the checkout would (cwd on sys.path)."""
    monkeypatch.chdir(checkout)
    monkeypatch.syspath_prepend(str(checkout))
    for name in [n for n in sys.modules if n == "openood" or n.startswith("openood.")]:
        monkeypatch.delitem(sys.modules, name)
    yield checkout
    for name in [n for n in sys.modules if n == "openood" or n.startswith("openood.")]:
        del sys.modules[name]  # the miniature package is gone after the test


BASE_ARGS = ("--config", "configs/datasets/mini.yml", "configs/pipelines/test_ood.yml")


def test_launcher_runs_openoods_main_with_moodcat(checkout):
    """The real command line; OpenOOD's own override syntax picks the profile."""
    done = run_launcher(checkout, *BASE_ARGS, "moodcat_plugin:moodcat", "--profile", "tiny", "--output_dir", "./out")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((checkout / "out" / "result.json").read_text())
    assert result["class"] == "OpenOODMoodcatPostprocessor" and result["profile"] == "tiny"
    assert result["gan_steps"] == 2 and 0.0 <= result["auroc"] <= 1.0 and len(result["scores"]) == 32
    assert (checkout / "out" / "mini" / "moodcat_grids").is_dir()  # MOODCAT's own outputs
    assert not list(checkout.rglob("moodcat.yml"))  # nothing copied into OpenOOD's tree


def test_openood_path_spelling_and_openoods_own_methods(in_checkout):
    """OpenOOD's usual path for a method file it lacks means ours; MSP (OpenOOD's own table) still runs."""
    method = "configs/postprocessors/moodcat.yml"
    assert openood_launch.main([*BASE_ARGS, method, "--profile", "tiny", "--output_dir", "./results_b"]) == 0
    result = json.loads((in_checkout / "results_b" / "result.json").read_text())
    assert result["class"] == "OpenOODMoodcatPostprocessor" and result["profile"] == "tiny"
    assert not list(in_checkout.rglob("moodcat.yml"))
    (in_checkout / "configs" / "msp.yml").write_text(yaml.safe_dump({"postprocessor": {"name": "msp"}}))
    assert openood_launch.main([*BASE_ARGS, "configs/msp.yml", "--output_dir", "./results_msp"]) == 0
    assert json.loads((in_checkout / "results_msp" / "result.json").read_text())["class"] == "BasePostprocessor"


def test_default_profile_is_cpu_and_put_first(tmp_path):
    args = openood_launch.rewrite_arguments(["--config", "a.yml", "moodcat_plugin:moodcat", "--seed", "1"], tmp_path)
    assert yaml.safe_load(Path(args[1]).read_text()) == {"profile": "cpu"}  # a later file or --profile wins
    assert args[2:] == ["a.yml", str(REPO / "configs" / "postprocessors" / "moodcat.yml"), "--seed", "1"]
    plain = ["--config", "a.yml", "configs/postprocessors/knn.yml"]  # not ours: untouched, no profile file
    assert openood_launch.rewrite_arguments(plain, tmp_path) == plain


@pytest.mark.parametrize("item", ["moodcat_plugin:knn", "moodcat_plugin:../../etc/passwd",
                                  "moodcat_plugin:moodcat_ext"])
def test_unknown_or_outside_method_names_are_refused(tmp_path, item):
    with pytest.raises(UserError, match="registered moodcat"):
        openood_launch.rewrite_arguments(["--config", item], tmp_path / "unused")


def test_errors_are_one_line(in_checkout, monkeypatch, capsys):
    def error_of(*args):
        assert openood_launch.main(list(args)) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err
        return err

    assert "unknown moodcat_plugin method 'nope'" in error_of(*BASE_ARGS, "moodcat_plugin:nope")
    assert "num_gpus * num_machines = 2" in error_of(*BASE_ARGS, "moodcat_plugin:moodcat", "--num_gpus", "2")
    assert not (in_checkout / "results").exists()  # refused before OpenOOD's pipeline ran
    assert "no OpenOOD main.py" in error_of("--openood-root", str(in_checkout / "configs"), *BASE_ARGS)
    assert "no --config list" in error_of("--seed", "1")
    monkeypatch.setitem(sys.modules, "openood", None)  # not installed
    assert error_of(*BASE_ARGS) == "error: " + OPENOOD_MISSING
