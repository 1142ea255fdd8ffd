"""The cache keys of trained MOODCAT runs (generator, Cb, Cb(ext), classifier) are pinned.

A model is found again only if its key hashes to the same folder name, so moving or reshaping
the code that builds the keys must leave every hash below unchanged (they were computed on main
before the MOODCAT code moved out of the postprocessor, issue 28). A failure here means every
model trained so far would be retrained: change a hash only for a deliberate change of what a
run means. The compute part of the folder name (device, threads) is not part of these hashes.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from moodcat_plugin.config import config_hash
from moodcat_plugin.data import ImageArray, make_loader
from moodcat_plugin.pipeline import build_config, classifier_run, method_config
from moodcat_plugin.moodcat import runs
from moodcat_plugin.moodcat.runs import training_data_fingerprint

CASES = {  # name: (benchmark, profile, method, overrides)
    "demo-demo-moodcat": ("demo", "demo", "moodcat", []),
    "demo-demo-moodcat_ext": ("demo", "demo", "moodcat_ext", []),
    "demo-demo-moodcat_plus": ("demo", "demo", "moodcat_plus", []),
    "cifar10-cpu-moodcat": ("cifar10", "cpu", "moodcat", []),
    "cifar10-cpu-moodcat_ext": ("cifar10", "cpu", "moodcat_ext", []),
    "cifar10-cpu-moodcat_plus": ("cifar10", "cpu", "moodcat_plus", []),
    "cifar10-gpu-moodcat": ("cifar10", "gpu", "moodcat", []),
    "cifar10-cpu-joint": ("cifar10", "cpu", "moodcat", ["postprocessors.moodcat.gan.cutmix_consistency=joint"]),
    "cifar10-cpu-consistency": ("cifar10", "cpu", "moodcat", ["postprocessors.moodcat.gan.class_consistency_weight=0.1"]),
    "demo-demo-ext_predicted": ("demo", "demo", "moodcat_ext", ["postprocessors.moodcat_ext.cb.outlier_label=predicted"]),
}

PINNED = {  # computed on main before the move (commit b5c1d75)
    "cifar10-cpu-consistency": {"classifier": "a73b69fb32fa", "gan": "902b34ad2802", "cb": "079304280efc", "cb_ext": "7e28b383a8e9", "gan_bridge": "96a4b9697ac2"},
    "cifar10-cpu-joint": {"classifier": "a73b69fb32fa", "gan": "f47bb40c5b75", "cb": "f8844694e35a", "cb_ext": "ad827210b7dc", "gan_bridge": "df41e0e46493"},
    "cifar10-cpu-moodcat": {"classifier": "a73b69fb32fa", "gan": "ea824760d563", "cb": "3a052247b827", "cb_ext": "585eef83a837", "gan_bridge": "a4ea900c8bd9"},
    "cifar10-cpu-moodcat_ext": {"classifier": "a73b69fb32fa", "gan": "ea824760d563", "cb": "3a052247b827", "cb_ext": "585eef83a837", "gan_bridge": "a4ea900c8bd9"},
    "cifar10-cpu-moodcat_plus": {"classifier": "a73b69fb32fa", "gan": "ea824760d563", "cb": "8718e5fdb5c7", "cb_ext": "7ad7a3d4864d", "gan_bridge": "a4ea900c8bd9"},
    "cifar10-gpu-moodcat": {"classifier": "64095d4fb06b", "gan": "4bb50db8cffb", "cb": "b17f78f3d2e0", "cb_ext": "af5f064c1025", "gan_bridge": "cdccbdc39c4a"},
    "demo-demo-ext_predicted": {"classifier": "29f49517a198", "gan": "da7460740a5b", "cb": "2e6c1cdff7e8", "cb_ext": "478082d088cd", "gan_bridge": "240eced36cf7"},
    "demo-demo-moodcat": {"classifier": "29f49517a198", "gan": "da7460740a5b", "cb": "2e6c1cdff7e8", "cb_ext": "db1ecc387ce8", "gan_bridge": "240eced36cf7"},
    "demo-demo-moodcat_ext": {"classifier": "29f49517a198", "gan": "da7460740a5b", "cb": "2e6c1cdff7e8", "cb_ext": "db1ecc387ce8", "gan_bridge": "240eced36cf7"},
    "demo-demo-moodcat_plus": {"classifier": "29f49517a198", "gan": "da7460740a5b", "cb": "00ed61e91220", "cb_ext": "085b4843fdfa", "gan_bridge": "240eced36cf7"},
}
PINNED_FINGERPRINTS = [
    {"images": 20, "sampled": 20, "sha256": "7b8214e92dc55f5cfa7fd795ebe592a8a70fecd41b130bf3f168551a011b9da2"},
    {"images": 20, "sampled": 8, "sha256": "eb71f2f4db38c5112d982a84337ed61ea1427f9194930195a64784ae2181e29e"},
]


def run_keys(cfg) -> dict:
    """{part: hash of its cache key} for one method config, through the public functions."""
    gan_key = runs.gan_run_key(cfg)  # trained on a benchmark's images, as the Runner does
    hashes = {"classifier": config_hash(classifier_run(cfg)[0]), "gan": config_hash(gan_key)}
    for variant in ("cb", "cb_ext"):
        hashes[variant] = config_hash(runs.cb_key(cfg, variant, gan_key, "outlier"))
    hashes["gan_bridge"] = config_hash(runs.gan_key(cfg, from_benchmark=False))  # OpenOOD: before train_data
    return hashes


def _config(tmp_path, benchmark, profile, method, overrides):
    flags = {"output_dir": str(tmp_path), "device": "cpu", "progress": False}
    return method_config(build_config(benchmark, [method], profile, overrides=overrides, flags=flags), method)


@pytest.mark.parametrize("name", sorted(CASES))
def test_cache_keys_of_trained_runs_are_unchanged(name, tmp_path):
    assert run_keys(_config(tmp_path, *CASES[name])) == PINNED[name]


def test_openood_training_data_fingerprints_are_unchanged():
    """The bridge's GAN key names its training data by this fingerprint: our arrays whole, any
    other map-style dataset by an evenly spaced sample of its items."""
    rng = np.random.default_rng(0)
    array = ImageArray("pinned", rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), np.arange(20) % 4)
    assert training_data_fingerprint(make_loader(array, [0.5] * 3, [0.5] * 3, 4)) == PINNED_FINGERPRINTS[0]
    items = [{"data": torch.from_numpy(image).permute(2, 0, 1).float() / 255, "label": int(label)}
             for image, label in zip(array.images, array.labels)]
    assert training_data_fingerprint(DataLoader(items, batch_size=4), samples=8) == PINNED_FINGERPRINTS[1]
