"""Use MOODCAT inside OpenOOD (v1.5) itself: a ``BasePostprocessor`` subclass and its registration.

OpenOOD has no plugin hook: its evaluator looks postprocessor names up in the module-level dict
``openood.evaluation_api.postprocessor.postprocessors``. :func:`register_into_openood` adds
MOODCAT there::

    from moodcat_plugin.openood_bridge import register_into_openood
    register_into_openood()                       # postprocessors['moodcat'] = wrapper class
    # copy configs/postprocessors/moodcat.yml (this package) into OpenOOD's
    # <config_root>/postprocessors/, optionally with a top-level `profile: cpu` (default gpu)
    evaluator = Evaluator(net, id_name="cifar10", postprocessor_name="moodcat", ...)

or pass ``OpenOODMoodcatPostprocessor(config)`` as a ready instance. Importing this module never
needs OpenOOD; only the registration and the class do (a clear UserError otherwise).

What the wrapper maps (OpenOOD's config holds only the method file plus ``dataset.name``):
``profiles`` -> the profile named by a top-level ``profile`` key (default ``gpu``);
normalisation -> OpenOOD's CIFAR-10/100 values unless ``dataset.normalization`` is given; number
of classes -> the classifier's output width (one forward pass in ``setup``); device -> CUDA when
available; ``output_dir`` (GAN/Cb caches, grids) -> ``./results/moodcat`` unless set. Without our
benchmark object the GAN and Cb train on OpenOOD's ``id_loader_dict['train']`` as it is (its
batch size and augmentation), and Cb(ext) is unavailable (no outlier set is passed to setup).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import torch

from moodcat_plugin.config import Config, merge
from moodcat_plugin.errors import ConfigError, UserError

DEFAULT_PROFILE = "gpu"
DEFAULT_OUTPUT_DIR = "./results/moodcat"
# OpenOOD v1.5's normalisation of the 32x32 benchmarks (openood/preprocessors/transform.py).
OPENOOD_NORMALIZATION = {
    "cifar10": {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]},
    "cifar100": {"mean": [0.5071, 0.4867, 0.4408], "std": [0.2675, 0.2565, 0.2761]},
}
OPENOOD_MISSING = ("OpenOOD is not installed: clone github.com/Jingkang50/OpenOOD and `pip install -e .` it "
                   "(it is not on the package index). The rest of moodcat_plugin works without it.")
_WRAPPERS: Dict[type, type] = {}  # OpenOOD's BasePostprocessor -> our subclass of it


def _plain(value: Any) -> Any:
    """OpenOOD's Config (or any mapping) -> plain nested dicts/lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def to_plugin_config(openood_config: Mapping) -> Config:
    """Map an OpenOOD postprocessor config to what :class:`MoodcatPostprocessor` reads."""
    raw = _plain(openood_config)
    profiles = raw.pop("profiles", None) or {}
    profile = raw.pop("profile", DEFAULT_PROFILE)
    if profiles:
        if profile not in profiles:
            raise ConfigError(f"profile '{profile}' is not one of {', '.join(profiles)} in the moodcat config")
        raw = merge(raw, profiles[profile] or {}, strict=False)
    if "postprocessor" not in raw:
        raise ConfigError("the OpenOOD config has no 'postprocessor' section (use configs/postprocessors/moodcat.yml)")
    dataset = dict(raw.get("dataset") or {})
    name = str(dataset.get("name", "openood"))
    if "normalization" not in dataset:
        if name not in OPENOOD_NORMALIZATION:
            raise ConfigError(f"no known normalisation for dataset '{name}': set dataset.normalization "
                              "{mean: [...], std: [...]} in the config, as OpenOOD's preprocessor uses it")
        dataset["normalization"] = OPENOOD_NORMALIZATION[name]
    dataset.update({"name": name, "num_classes": dataset.get("num_classes")})
    dataset.setdefault("train_augment", [])
    defaults = {"device": "cuda" if torch.cuda.is_available() else "cpu", "seed": 0, "progress": True,
                "output_dir": DEFAULT_OUTPUT_DIR, "eval_batch_size": 200, "num_workers": 0,
                "network": {"name": "openood"}, "trainer": {"name": "openood"}, "profile": profile}
    for key, value in defaults.items():
        if raw.get(key) is None:
            raw[key] = value
    raw["dataset"] = dataset
    return Config(raw)


@torch.no_grad()
def infer_num_classes(net, id_loader_dict, device) -> int:
    """Width of the classifier's logits, from one batch of ID val (or train) images."""
    loader = id_loader_dict.get("val", id_loader_dict.get("train"))
    if loader is None:
        raise UserError("cannot infer the number of classes: id_loader_dict has neither 'val' nor 'train'; "
                        "set dataset.num_classes in the config")
    batch = next(iter(loader))
    return int(net(batch["data"][:2].to(device)).shape[1])


def _ood_groups(ood_loader_dict: Mapping) -> dict:
    """OpenOOD v1.0 names the test groups nearood/farood, v1.5 near/far: give ours near/far."""
    mapped = dict(ood_loader_dict)
    for old, new in (("nearood", "near"), ("farood", "far")):
        if old in mapped and new not in mapped:
            mapped[new] = mapped[old]
    return mapped


def _make_wrapper_class(base: type) -> type:
    from moodcat_plugin.postprocessors.moodcat_postprocessor import MoodcatPostprocessor

    class OpenOODMoodcatPostprocessor(base):
        """MOODCAT behind OpenOOD's postprocessor contract (delegates to MoodcatPostprocessor)."""

        def __init__(self, config):
            super().__init__(config)
            self.config = config
            self.plugin_config = to_plugin_config(config)
            section = self.plugin_config.postprocessor
            self.args = dict(section.get("postprocessor_args") or {})
            self.args_dict = dict(section.get("postprocessor_sweep") or {})
            self.APS_mode = bool(section.get("APS_mode", False))
            self.hyperparam_search_done = False
            self.inner: Optional[MoodcatPostprocessor] = None
            if self.plugin_config.dataset.num_classes is not None:
                self.inner = MoodcatPostprocessor(self.plugin_config)

        def setup(self, net, id_loader_dict, ood_loader_dict):
            if self.inner is None:
                dataset = self.plugin_config.dataset
                dataset.num_classes = infer_num_classes(net, id_loader_dict, torch.device(self.plugin_config.device))
                self.inner = MoodcatPostprocessor(self.plugin_config)
            self.inner.setup(net, id_loader_dict, _ood_groups(ood_loader_dict))

        def _ready(self) -> MoodcatPostprocessor:
            if self.inner is None or self.inner.gan is None:
                raise RuntimeError("call setup(net, id_loader_dict, ood_loader_dict) before postprocess()")
            return self.inner

        @torch.no_grad()
        def postprocess(self, net, data):
            inner = self._ready()
            return inner.postprocess(net, data.to(inner.device))

        def inference(self, net, data_loader, progress: bool = True):
            return self._ready().inference(net, data_loader, progress)

        def set_hyperparam(self, hyperparam: list):
            if self.inner is not None:
                self.inner.set_hyperparam(hyperparam)

        def get_hyperparam(self):
            return self.inner.get_hyperparam() if self.inner is not None else []

    return OpenOODMoodcatPostprocessor


def _openood_modules():
    try:
        import openood.evaluation_api.postprocessor as api
        import openood.postprocessors as postprocessors
    except ImportError as exc:
        raise UserError(OPENOOD_MISSING) from exc
    return postprocessors, api


def openood_postprocessor_class() -> type:
    """The wrapper class for the installed OpenOOD (built once per BasePostprocessor class)."""
    postprocessors, _ = _openood_modules()
    base = postprocessors.BasePostprocessor
    if base not in _WRAPPERS:
        _WRAPPERS[base] = _make_wrapper_class(base)
    return _WRAPPERS[base]


def register_into_openood(name: str = "moodcat") -> type:
    """Put the wrapper into ``openood.evaluation_api.postprocessor.postprocessors[name]``."""
    _, api = _openood_modules()
    if not isinstance(getattr(api, "postprocessors", None), dict):
        raise UserError("this OpenOOD has no openood.evaluation_api.postprocessor.postprocessors dict "
                        "(v1.5 needed); pass OpenOODMoodcatPostprocessor(config) to its Evaluator instead")
    cls = openood_postprocessor_class()
    api.postprocessors[name] = cls
    return cls


def __getattr__(name: str):  # PEP 562: the class exists only where OpenOOD is importable
    if name == "OpenOODMoodcatPostprocessor":
        return openood_postprocessor_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["register_into_openood", "openood_postprocessor_class", "to_plugin_config", "OPENOOD_NORMALIZATION"]
