"""Use MOODCAT inside OpenOOD (v1.5) itself: a ``BasePostprocessor`` subclass and its registration.

OpenOOD has no plugin hook. It looks postprocessor names up in two places:

- its evaluator (``openood.evaluation_api``) in the module-level dict
  ``openood.evaluation_api.postprocessor.postprocessors``;
- its ``main.py`` pipelines in ``openood.postprocessors.utils.get_postprocessor(config)``, which
  builds a dict local to the function; the pipelines import that function by name
  (``from openood.postprocessors import get_postprocessor``).

:func:`register_into_openood` covers both: it adds MOODCAT to the dict, and replaces
``get_postprocessor`` (in ``openood.postprocessors.utils``, the package, and every loaded
``openood`` module that imported it by name) with a wrapper that builds MOODCAT for
``config.postprocessor.name == 'moodcat'`` and hands every other name to OpenOOD's function.
Modules imported later get the wrapper from the package. Calling it again changes nothing::

    from moodcat_plugin.openood_bridge import register_into_openood
    register_into_openood()
    # copy configs/postprocessors/moodcat.yml (this package) into OpenOOD's
    # <config_root>/postprocessors/, optionally with a top-level `profile: gpu` (default cpu)
    evaluator = Evaluator(net, id_name="cifar10", postprocessor_name="moodcat", ...)
    # or, in a script that then runs OpenOOD's main.py pipeline with --config ... moodcat.yml:
    pipeline = get_pipeline(config); pipeline.run()

or pass ``OpenOODMoodcatPostprocessor(config)`` as a ready instance. Importing this module never
needs OpenOOD; only the registration and the class do (a clear UserError otherwise). Without the
LPIPS/DISTS weights the error says to set ``postprocessor.postprocessor_args.scorers: [cb]`` in the
OpenOOD config (our CLI's ``--set`` does not exist there).

What the wrapper maps (OpenOOD's config holds only the method file plus ``dataset.name``):
``profiles`` -> the profile named by a top-level ``profile`` key (default ``cpu``);
normalisation -> OpenOOD's CIFAR-10/100 values unless ``dataset.normalization`` is given; number
of classes -> the classifier's output width (one forward pass in ``setup``); device -> CUDA when
available; ``output_dir`` (GAN/Cb caches, grids) -> ``./results/moodcat`` unless set. Without our
benchmark object the GAN and Cb train on OpenOOD's ``id_loader_dict['train']`` as it is (its
batch size and augmentation), and Cb(ext) is unavailable (no outlier set is passed to setup).
Their cache folders are keyed by a fingerprint of that training set (its size and a hash of an
evenly spaced sample of its items, see :func:`moodcat_plugin.moodcat.runs.training_data_fingerprint`),
so a different dataset under the same ``dataset.name`` trains anew instead of reusing the old weights.
"""
from __future__ import annotations

import functools
import sys
from typing import Callable, Dict, Mapping, Optional

import torch

from moodcat_plugin.config import Config, merge, plain_data
from moodcat_plugin.errors import ConfigError, UserError

DEFAULT_PROFILE = "cpu"  # no `profile` key: the 2-CPU-core schedule, never paper-scale training unasked
DEFAULT_OUTPUT_DIR = "./results/moodcat"
# OpenOOD v1.5's normalisation of the 32x32 benchmarks (openood/preprocessors/transform.py).
OPENOOD_NORMALIZATION = {
    "cifar10": {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]},
    "cifar100": {"mean": [0.5071, 0.4867, 0.4408], "std": [0.2675, 0.2565, 0.2761]},
}
OPENOOD_MISSING = ("OpenOOD is not installed: clone github.com/Jingkang50/OpenOOD and `pip install -e .` it "
                   "(it is not on the package index). The rest of moodcat_plugin works without it.")
# How to drop the IQA scorers when their weights are missing, in OpenOOD's terms.
OPENOOD_DROP_HINT = ("set postprocessor.postprocessor_args.scorers: [cb] in the OpenOOD config (the moodcat "
                     "yml under <config_root>/postprocessors/, or the config given to the postprocessor)")
_WRAPPERS: Dict[type, type] = {}  # OpenOOD's BasePostprocessor -> our subclass of it
_PIPELINE_CLASSES = "moodcat_plugin_classes"  # attribute of our get_postprocessor wrapper: name -> class


def to_plugin_config(openood_config: Mapping) -> Config:
    """Map an OpenOOD postprocessor config to what :class:`MoodcatPostprocessor` reads."""
    raw = plain_data(openood_config)  # OpenOOD's Config -> dicts/lists
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
                "output_dir": DEFAULT_OUTPUT_DIR, "eval_batch_size": 200,
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


def openood_set_name(data_loader) -> str:
    """A stable name for the set behind an OpenOOD loader: its image list's path (OpenOOD's
    ``ImglistDataset.imglist_pth``), else the dataset's ``name``, else its class name and length."""
    dataset = getattr(data_loader, "dataset", None)
    for attribute in ("imglist_pth", "name"):
        value = getattr(dataset, attribute, None)
        if value:
            return str(value)
    return f"{type(dataset).__name__}-{len(dataset) if hasattr(dataset, '__len__') else 0}"


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
                self.inner = self._build_inner()

        def _build_inner(self) -> MoodcatPostprocessor:
            # missing IQA weights: tell the user OpenOOD's config key, not our CLI's --set
            return MoodcatPostprocessor(self.plugin_config, drop_scorers_hint=OPENOOD_DROP_HINT)

        def setup(self, net, id_loader_dict, ood_loader_dict):
            self.id_loaders = list(id_loader_dict.values())
            if self.inner is None:
                dataset = self.plugin_config.dataset
                dataset.num_classes = infer_num_classes(net, id_loader_dict, torch.device(self.plugin_config.device))
                self.inner = self._build_inner()
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
            """OpenOOD scores one set per call: restart the per-image mask draws for that set (named
            by its image list), so a set scores the same whatever OpenOOD scored before it."""
            inner = self._ready()
            is_id = any(data_loader is loader for loader in getattr(self, "id_loaders", []))
            inner.start_set(openood_set_name(data_loader), is_id=is_id)
            return inner.inference(net, data_loader, progress)

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
        import openood.postprocessors.utils as utils
    except ImportError as exc:
        raise UserError(OPENOOD_MISSING) from exc
    return postprocessors, utils, api


def openood_postprocessor_class() -> type:
    """The wrapper class for the installed OpenOOD (built once per BasePostprocessor class)."""
    postprocessors, _, _ = _openood_modules()
    base = postprocessors.BasePostprocessor
    if base not in _WRAPPERS:
        _WRAPPERS[base] = _make_wrapper_class(base)
    return _WRAPPERS[base]


def _postprocessor_name(config) -> Optional[str]:
    """``config.postprocessor.name`` of an OpenOOD Config (attribute access) or a plain mapping."""
    section = config.get("postprocessor") if isinstance(config, Mapping) else getattr(config, "postprocessor", None)
    return section.get("name") if isinstance(section, Mapping) else getattr(section, "name", None)


def _wrap_get_postprocessor(original: Callable) -> Callable:
    """OpenOOD's ``get_postprocessor(config)`` plus the names in its ``moodcat_plugin_classes``."""
    classes: Dict[str, type] = {}

    @functools.wraps(original)
    def get_postprocessor(config):
        cls = classes.get(_postprocessor_name(config))
        return cls(config) if cls is not None else original(config)

    setattr(get_postprocessor, _PIPELINE_CLASSES, classes)
    return get_postprocessor


def _register_for_pipelines(utils, name: str, cls: type) -> None:
    """Make ``get_postprocessor(config)`` of OpenOOD's main.py pipelines build ``cls`` for ``name``:
    wrap it once, and rebind it wherever a loaded ``openood`` module holds OpenOOD's function."""
    wrapper = utils.get_postprocessor
    if not hasattr(wrapper, _PIPELINE_CLASSES):
        wrapper = _wrap_get_postprocessor(utils.get_postprocessor)
    original = wrapper.__wrapped__
    for module_name, module in list(sys.modules.items()):
        if (module_name == "openood" or module_name.startswith("openood.")) and \
                getattr(module, "get_postprocessor", None) is original:
            module.get_postprocessor = wrapper  # utils itself, the package, the pipelines
    getattr(wrapper, _PIPELINE_CLASSES)[name] = cls


def register_into_openood(name: str = "moodcat") -> type:
    """Make ``name`` build the wrapper through both OpenOOD lookups: the evaluator's dict
    ``openood.evaluation_api.postprocessor.postprocessors`` and the pipelines'
    ``openood.postprocessors.utils.get_postprocessor(config)``. Idempotent."""
    _, utils, api = _openood_modules()
    if not isinstance(getattr(api, "postprocessors", None), dict) or not callable(
            getattr(utils, "get_postprocessor", None)):
        raise UserError("this OpenOOD has no openood.evaluation_api.postprocessor.postprocessors dict or no "
                        "openood.postprocessors.utils.get_postprocessor (v1.5 needed); pass "
                        "OpenOODMoodcatPostprocessor(config) to its Evaluator instead")
    cls = openood_postprocessor_class()
    api.postprocessors[name] = cls
    _register_for_pipelines(utils, name, cls)
    return cls


def __getattr__(name: str):  # PEP 562: the class exists only where OpenOOD is importable
    if name == "OpenOODMoodcatPostprocessor":
        return openood_postprocessor_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["register_into_openood", "openood_postprocessor_class", "to_plugin_config", "OPENOOD_NORMALIZATION",
           "OPENOOD_DROP_HINT"]
