"""MOODCAT's trained parts: the generator and Cb runs, their cache keys, the training data they see.

Functions of explicit arguments (the run config ``config``, the loaded benchmark or None, the
classifier ``net`` or None, the device), called by the MOODCAT postprocessor (which keeps
arguments, setup and scoring) and by the paper's time estimate (which needs the keys only).

Each part is cached in its own run folder, ``run_folder(config, f"{benchmark}-moodcat_<part>",
key)``: the key names everything that determines the trained weights (the ``gan``/``cb`` and
network sections without their cache-neutral settings, the seed, where the training data come
from, and the classifier when the part reads it). ``tests/test_moodcat_cache_keys.py`` pins the
hashes of these keys: changing them orphans every trained model.
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from moodcat_plugin import distributed
from moodcat_plugin.config import Config
from moodcat_plugin.data import ImageArray, make_loader
from moodcat_plugin.data.arrays import stratified_holdout
from moodcat_plugin.errors import ConfigError, DataError
from moodcat_plugin.registry import NETWORKS, TRAINERS
from moodcat_plugin.training import FINAL, fit, run_folder, run_identity

PAPER_CB = "moodcat_cb"  # the Cb network a config without cb_network.name gets
FINGERPRINT_SAMPLES = 256
FINGERPRINT_SEED = 0


def cb_network_name(section) -> str:
    """The registered network name of a ``cb_network`` section (a config's or a weights file's)."""
    return section.get("name", PAPER_CB)


def num_classes(config) -> int:
    return int(config.dataset.num_classes)


def section_config(config, section: str) -> Config:
    """The run config with ``trainer`` replaced by its ``gan``/``cb`` section (trainer contract)."""
    view = Config({k: v for k, v in config.items()})
    view.trainer = config[section]
    return view


# -- cache keys ---------------------------------------------------------------------------------
def classifier_key(config) -> dict:
    """Identity of the classifier, for the runs that depend on it (pseudo-labels, class consistency)."""
    return {"classifier_network": config.get("network"), "classifier_trainer": config.get("trainer")}


def gan_uses_classifier(config) -> bool:
    """Whether the generator trains through the classifier (the class-consistency variant)."""
    return float(config.gan.get("class_consistency_weight", 0)) > 0


def gan_key(config, from_benchmark: bool = True) -> dict:
    """The generator's key without the classifier; ``from_benchmark=False``: trained on a loader
    no benchmark config names (the OpenOOD bridge, which adds :func:`training_data_fingerprint`)."""
    gan_trainer = TRAINERS.get(config.gan.name)
    return {"benchmark": config.dataset.name, "gan_network": config.gan_network,
            "gan": run_identity(config.gan, getattr(gan_trainer, "neutral_settings", {})),
            "seed": config.get("seed", 0),
            "train_source": "benchmark" if from_benchmark else "id_loader_dict"}


def gan_run_key(config, from_benchmark: bool = True) -> dict:
    """The generator's cache key (:func:`gan_key`, plus the classifier's identity when it trains
    through it), before the bridge's ``train_data``."""
    return {**gan_key(config, from_benchmark), **(classifier_key(config) if gan_uses_classifier(config) else {})}


def cb_needs_classifier(config) -> bool:
    """Whether Cb's training reads the classifier (features or predicted labels)."""
    cls = NETWORKS.get(cb_network_name(config.cb_network))
    return bool(getattr(cls, "needs_classifier", False) or config.cb.get("synthetic_negatives"))


def cb_key(config, variant: str, gan_key: dict, outlier_set: Optional[str]) -> dict:
    """Cache key of the Cb ``variant`` (``cb`` or ``cb_ext``) trained on the generator ``gan_key``.

    The settings only Cb(ext) reads (the trainer's ``ext_only_settings``) are left out of the
    plain Cb's key, so e.g. ``outlier_label: predicted`` reuses the plain Cb it shares with the
    paper's method. Cb(ext) trains on outliers pseudo-labelled by the classifier, so its key
    names the outlier set (``outlier_set``: its name, None without one) and the classifier."""
    cfg = config
    cb_trainer = TRAINERS.get(cfg.cb.name)
    cb_neutral = getattr(NETWORKS.get(cb_network_name(cfg.cb_network)), "neutral_settings", {})
    cb_section = dict(cfg.cb)
    if variant != "cb_ext":
        cb_section = {k: v for k, v in cb_section.items() if k not in getattr(cb_trainer, "ext_only_settings", ())}
    key = {"gan": gan_key, "cb_network": run_identity(cfg.cb_network, {"name": PAPER_CB, **cb_neutral}),
           "cb": run_identity(cb_section, getattr(cb_trainer, "neutral_settings", {})), "variant": variant}
    if cb_needs_classifier(cfg):
        key.update(classifier_key(cfg))
    if variant == "cb_ext":
        key.update({"outlier_set": outlier_set, **classifier_key(cfg)})
    return key


def training_data_fingerprint(loader, samples: int = FINGERPRINT_SAMPLES) -> dict:
    """What the GAN/Cb cache keys record about training data that no benchmark config names (the
    OpenOOD bridge trains on ``id_loader_dict['train']``, known only by ``dataset.name``).

    ``{'images': len(dataset), 'sampled': k, 'sha256': ...}``: the hash covers the ``data`` and
    ``label`` of ``k = min(samples, len)`` items at evenly spaced indices (first and last
    included), read straight from ``loader.dataset`` with the torch, numpy and ``random`` global
    RNGs seeded (and restored afterwards), so random train augmentation gives the same bytes on
    every run. A sample rather than the whole set keeps this to a few hundred reads at any size;
    the cost is that two sets of equal size differing only in unsampled items share a cache.
    A dataset whose augmentation draws from its own unseeded RNG gets a new hash each run:
    it retrains rather than silently reusing weights. Batches/items: dicts with ``data`` (and
    ``label``), as OpenOOD's, or ``(data, label)`` tuples. Our own batch sources (``dataset`` an
    :class:`ImageArray`) are hashed whole.
    """
    dataset = getattr(loader, "dataset", None)
    if isinstance(dataset, ImageArray):  # our own batches: the arrays themselves, whole
        digest = hashlib.sha256(dataset.images.tobytes() + dataset.labels.tobytes())
        return {"images": len(dataset), "sampled": len(dataset), "sha256": digest.hexdigest()}
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")) or len(dataset) == 0:
        raise DataError("id_loader_dict['train'] needs a non-empty map-style dataset (len() and indexing) so "
                        "MOODCAT can fingerprint its training data for the GAN/Cb cache")
    count = len(dataset)
    indices = sorted({round(i) for i in np.linspace(0, count - 1, min(samples, count))})
    digest = hashlib.sha256()
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(FINGERPRINT_SEED)
            random.seed(FINGERPRINT_SEED)
            np.random.seed(FINGERPRINT_SEED)
            for index in indices:
                item = dataset[index]
                parts = (item["data"], item.get("label")) if isinstance(item, Mapping) else tuple(item)[:2]
                for part in parts:
                    array = np.asarray(part.detach().cpu() if torch.is_tensor(part) else part)
                    digest.update(f"{array.dtype}{array.shape}".encode())
                    digest.update(np.ascontiguousarray(array).tobytes())
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    return {"images": count, "sampled": len(indices), "sha256": digest.hexdigest()}


# -- training -----------------------------------------------------------------------------------
def train_loader(config, benchmark, id_loader_dict, section, seed: int, part: str, device):
    """ID train images for the generator (``part='gan'``) or Cb (``'cb'``), with the batch
    size and augmentation of the ``gan``/``cb`` section (not the classifier's crop:
    zero-padded crops put black borders no test image has into 98 % of the training images).
    With ``gan.holdout_for_cb`` = f > 0, a stratified f of the images is kept from the
    generator and is all Cb trains on, so Cb learns from syntheses of unseen images, as at
    test time. Bare OpenOOD use (``benchmark`` None): its own train loader as it is."""
    if benchmark is None:
        return id_loader_dict["train"]
    kept, held_out = stratified_holdout(benchmark.id["train"], float(config.gan.holdout_for_cb),
                                        int(config.get("seed", 0)))
    return make_loader(kept if part == "gan" else held_out, benchmark.mean, benchmark.std,
                       int(section.batch_size), train=True, augment=section.augment, seed=seed,
                       device=device, shard=distributed.shard())


def fit_run(config, trainer, name: str, key: dict, description: str, section: str) -> dict:
    """Train (or load) the run ``name`` keyed by ``key`` (its settings: the method's ``section``,
    ``gan`` or ``cb``, named in error hints); returns its summary for ``training_info``
    (folder, cached, last epoch's loss / train_acc / val_acc)."""
    folder = run_folder(config, f"{config.dataset.name}-{name}", key)
    result = fit(trainer, folder, progress=bool(config.get("progress", True)), key=key,
                 description=description, settings=f"postprocessors.<method>.{section}")
    info = {"folder": str(folder), "cached": result["cached"]}
    last = (result.get("history") or [{}])[-1]
    info.update({k: v for k, v in last.items() if k in ("loss", "train_acc", "val_acc")})
    return info


def gan_trainer(config, benchmark, net, id_loader_dict, device):
    """(generator, its trainer, its cache key) as :func:`train_gan` builds them; the run folder is
    ``run_folder(config, f"{benchmark}-moodcat_gan", key)`` (e.g. for a time-boxed run)."""
    cfg = config
    kwargs = {k: v for k, v in cfg.gan_network.items() if k not in ("name", "checkpoint")}
    torch.manual_seed(int(cfg.get("seed", 0)))  # initial weights independent of what ran before
    gan = NETWORKS.get(cfg.gan_network.get("name", "moodcat_gan"))(num_classes=num_classes(cfg), **kwargs)
    gan = gan.to(device)
    loader = train_loader(cfg, benchmark, id_loader_dict, cfg.gan, int(cfg.get("seed", 0)), "gan", device)
    trainer = TRAINERS.get(cfg.gan.name)(gan, loader, section_config(cfg, "gan"),
                                         classifier=net if gan_uses_classifier(cfg) else None)
    key = gan_run_key(cfg, from_benchmark=benchmark is not None)
    if benchmark is None:  # OpenOOD bridge: the data are not named by a benchmark config
        key["train_data"] = training_data_fingerprint(id_loader_dict["train"])
    return gan, trainer, key


def train_gan(config, benchmark, net, id_loader_dict, device):
    """(frozen generator, its cache key, its ``training_info`` entry), trained or from the cache."""
    gan, trainer, key = gan_trainer(config, benchmark, net, id_loader_dict, device)
    info = fit_run(config, trainer, "moodcat_gan", key, "MOODCAT generator (encoder + decoder + U-Net discriminator)",
                   "gan")
    return gan.eval().requires_grad_(False), key, info


def build_cb(config, net, mean, std) -> torch.nn.Module:
    """The Cb network of ``cb_network`` (default the paper's ``moodcat_cb``); a network that
    compares classifier features gets the frozen classifier (not part of its weights)."""
    section = config.cb_network
    cls = NETWORKS.get(cb_network_name(section))
    kwargs = {k: v for k, v in section.items() if k not in ("name", "checkpoint")}
    if getattr(cls, "needs_classifier", False):
        if net is None:
            raise ConfigError(f"cb_network '{section.get('name')}' reads the classifier's features; it cannot "
                              "be built without the classifier")
        kwargs.update(classifier=net, mean=mean, std=std)
    return cls(num_classes=num_classes(config), **kwargs)


@torch.no_grad()
def pseudo_labelled_outliers(config, outlier, net, mean, std, device) -> ImageArray:
    """The benchmark's outlier images labelled with the CLASSIFIER's argmax (paper 3.6)."""
    if outlier is None:
        raise ConfigError("cb_variants includes cb_ext (Cb trained with extra outlier data), but no outlier set "
                          "is available: use a benchmark with splits.outlier, or cb_variants: [cb]")
    loader = make_loader(outlier, mean, std, int(config.get("eval_batch_size", 256)), device=device)
    preds = [net(batch["data"].to(device)).argmax(dim=1).cpu()
             for batch in tqdm(loader, desc="pseudo-labelling outliers", leave=False,
                               disable=not config.get("progress", True))]
    return ImageArray(f"{outlier.name}_pseudo", outlier.images, torch.cat(preds).numpy())


def train_cb(config, benchmark, variant: str, net, id_loader_dict, gan, gan_key: dict, mean, std, device):
    """(frozen Cb ``variant`` trained on the frozen generator ``gan``, its ``training_info`` entry)."""
    cfg = config
    outlier = getattr(benchmark, "outlier", None)
    torch.manual_seed(int(cfg.get("seed", 0)) + 1)
    cb = build_cb(cfg, net, mean, std).to(device)
    loader = train_loader(cfg, benchmark, id_loader_dict, cfg.cb, int(cfg.get("seed", 0)) + 1, "cb", device)
    key = cb_key(cfg, variant, gan_key, getattr(outlier, "name", None))
    unlabeled = None
    if variant == "cb_ext":
        folder = run_folder(cfg, f"{cfg.dataset.name}-moodcat_{variant}", key)
        if not (folder / FINAL).is_file():  # cached runs need no pseudo-labels
            outliers = pseudo_labelled_outliers(cfg, outlier, net, mean, std, device)
            unlabeled = make_loader(outliers, mean, std,
                                    int(cfg.cb.get("outlier_batch_size", cfg.cb.batch_size)), train=True,
                                    augment=cfg.cb.augment, seed=int(cfg.get("seed", 0)) + 2,
                                    device=device, shard=distributed.shard())
    trainer = TRAINERS.get(cfg.cb.name)(cb, loader, section_config(cfg, "cb"), generator=gan,
                                        unlabeled_loader=unlabeled, val_loader=id_loader_dict.get("val"),
                                        classifier=net if cfg.cb.get("synthetic_negatives") else None)
    what = "with pseudo-labelled outliers" if variant == "cb_ext" else "on ID pairs"
    info = fit_run(cfg, trainer, f"moodcat_{variant}", key, f"MOODCAT {variant} (conditional binary classifier, {what})",
                   "cb")
    return cb.eval().requires_grad_(False), info
