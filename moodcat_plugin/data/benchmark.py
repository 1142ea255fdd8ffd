"""Benchmarks: which image sets play which role, read from a benchmark YAML.

A benchmark file (``configs/benchmarks/*.yml``) names, for every role, where its images come
from in each supported source::

    splits:
      id: {train: SPEC, val: SPEC, test: SPEC}     # required
      ood_val: SPEC                                # required (APS, calibration)
      ood_val_far: SPEC                            # optional far-OOD validation (variant selection)
      outlier: SPEC                                # optional (OE, UDG, MCD, MOODCAT+ext)
      near: {NAME: SPEC, ...}                      # optional sets, skipped with a warning if absent
      far: {NAME: SPEC, ...}

where ``SPEC`` maps a source to a location: ``npz: cifar100_test`` (a file of the npz pack in
the data root), ``imglist: benchmark_imglist/cifar10/test_cifar100.txt`` (OpenOOD layout under
the data root, images under ``images_classic/``, decoded once into ``.moodcat_cache/`` there:
:mod:`moodcat_plugin.data.cache`), ``demo: digits_6to9`` (embedded demo) or
``builtin: digits_and_photos`` (built from scikit-learn's data whatever the data root:
:data:`moodcat_plugin.data.demo.BUILTIN_SETS`; the CIFAR benchmarks' far-OOD validation set).

Class subsets (open-set recognition, e.g. 6 known / 4 unknown CIFAR-10 classes): the benchmark's
``known_classes: [0, 7, 2, ...]`` keeps only those class ids in every ID split and relabels them
0..K-1 in the listed order; an OOD or outlier SPEC's ``classes: [6, 4, ...]`` keeps only those ids
of its file. Every listed class must have images (checked at load); an OOD set read from an ID
file must list classes disjoint from the known ones (checked with the config,
:func:`moodcat_plugin.run_schema.check_class_selection`). Note that trained models are cached
under the benchmark's ``name``: a changed class split needs a new name.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import numpy as np

from moodcat_plugin.config import require_keys
from moodcat_plugin.data.arrays import ImageArray, read_npz
from moodcat_plugin.data.cache import read_imglist_cached
from moodcat_plugin.errors import ConfigError, DataError

log = logging.getLogger(__name__)
OOD_GROUPS = ("near", "far")
ID_SPLITS = ("train", "val", "test")
SOURCES = ("npz", "imglist", "demo", "builtin")
SPEC_KEYS = SOURCES + ("classes",)
GET_DATA_HINT = (
    "Pass --data-root with the npz data pack (files like cifar10_test.npz) or OpenOOD's layout "
    "(benchmark_imglist/ and images_classic/: python scripts/get_data.py --benchmark NAME --root DIR fetches it), "
    "or try the embedded demo: python scripts/run_benchmark.py --benchmark demo."
)


@dataclass
class Benchmark:
    """Loaded image sets of one benchmark. Images uint8 NHWC; ID labels in [0, num_classes)."""

    name: str
    num_classes: int
    mean: List[float]
    std: List[float]
    id: Dict[str, ImageArray]
    ood_val: ImageArray
    ood_val_far: Optional[ImageArray] = None
    near: Dict[str, ImageArray] = field(default_factory=dict)
    far: Dict[str, ImageArray] = field(default_factory=dict)
    outlier: Optional[ImageArray] = None
    missing: List[str] = field(default_factory=list)

    def ood_groups(self) -> Dict[str, Dict[str, ImageArray]]:
        return {"near": self.near, "far": self.far}


def detect_source(data_root: Optional[Path], spec_sources: List[str]) -> str:
    """Which source to read: ``demo`` if the benchmark is embedded, else npz or OpenOOD layout."""
    if spec_sources == ["demo"]:
        return "demo"
    if data_root is None:
        raise DataError(f"this benchmark needs a data folder. {GET_DATA_HINT}")
    if not data_root.is_dir():
        what = "is a file, not a folder" if data_root.exists() else "does not exist"
        raise DataError(f"data folder {data_root} {what}. {GET_DATA_HINT}")
    return "imglist" if (data_root / "benchmark_imglist").is_dir() else "npz"


class _Reader:
    """Resolves SPECs for one source and remembers which optional sets are missing."""

    def __init__(self, source: str, data_root: Optional[Path], image_size: int, progress: bool):
        self.source, self.data_root, self.image_size, self.progress = source, data_root, image_size, progress
        self._demo_sets = None
        if source == "demo":
            from moodcat_plugin.data.demo import build_demo_sets

            self._demo_sets = build_demo_sets(seed=0)
        self.missing: List[str] = []

    def path_of(self, spec: Mapping) -> Optional[Path]:
        if self.source not in spec:
            return None
        if self.source == "npz":
            return self.data_root / f"{spec['npz']}.npz"
        if self.source == "imglist":
            return self.data_root / spec["imglist"]
        return None

    def read(self, role: str, name: str, spec: Mapping, required: bool,
             classes: Optional[List[int]] = None) -> Optional[ImageArray]:
        """The set ``name`` (role e.g. 'ID', 'far-OOD'), checked to be non-empty and of the
        benchmark's image size; a missing optional set is skipped (None) with a warning.
        ``classes`` (default: the SPEC's own ``classes``) keeps only those class ids."""
        classes = spec.get("classes") if classes is None else classes
        if spec.get("builtin") is not None:
            where = f"builtin set '{spec['builtin']}'"
            array = _builtin_set(spec["builtin"]).subset(slice(None), name)
        elif self.source == "demo":
            where = f"demo set '{spec['demo']}'"
            array = self._demo_set(spec["demo"]).subset(slice(None), name)
        else:
            path = self.path_of(spec)
            if path is None or not path.is_file():
                where = path if path is not None else f"(no '{self.source}' entry in the benchmark file)"
                if required:
                    raise DataError(f"{role} set '{name}' not found: {where}. {GET_DATA_HINT}")
                log.warning("skipping %s set '%s': %s is missing", role, name, where)
                self.missing.append(name)
                return None
            where = path
            array = read_npz(path, name) if self.source == "npz" else read_imglist_cached(
                path, self.data_root, name, self.image_size, self.progress)
        if classes is not None:
            array = select_classes(array, classes, f"{role} set '{name}' ({where})")
        return self._checked(role, array, where)

    def _demo_set(self, key: str) -> ImageArray:
        if key not in self._demo_sets:
            raise DataError(f"the benchmark file names demo set '{key}', which does not exist; "
                            f"valid demo sets: {', '.join(self._demo_sets)}")
        return self._demo_sets[key]

    def _checked(self, role: str, array: ImageArray, where) -> ImageArray:
        """``array`` unless it is empty or its images are not image_size x image_size."""
        if len(array) == 0:
            raise DataError(f"{role} set '{array.name}' ({where}) holds no images; fix the file, or remove the "
                            "set from the benchmark file if it is optional")
        size = self.image_size
        if array.images.shape[1:3] != (size, size):
            raise DataError(f"{role} set '{array.name}' ({where}) has images of shape {array.images.shape[1:]} but "
                            f"the benchmark's image_size is {size} ({size}, {size}, 3); resize the images to "
                            f"{size}x{size} RGB, or fix image_size in the benchmark file")
        return array


def _builtin_set(key: str) -> ImageArray:
    from moodcat_plugin.data.demo import BUILTIN_SETS

    if key not in BUILTIN_SETS:
        raise DataError(f"the benchmark file names builtin set '{key}', which does not exist; "
                        f"valid builtin sets: {', '.join(BUILTIN_SETS)}")
    return BUILTIN_SETS[key]()


def select_classes(array: ImageArray, classes: List[int], what: str) -> ImageArray:
    """The images of ``array`` whose label is in ``classes`` (labels unchanged). DataError naming
    ``what`` when a listed class has no image (a wrong id, or the wrong file)."""
    present = set(np.unique(array.labels).tolist())
    absent = [c for c in classes if c not in present]
    if absent:
        raise DataError(f"{what} has no images of class(es) {absent} (its labels: {sorted(present)[:12]}"
                        f"{' ...' if len(present) > 12 else ''}); fix the class list in the benchmark file")
    return array.subset(np.flatnonzero(np.isin(array.labels, classes)))


def relabel_known(array: ImageArray, known: List[int]) -> ImageArray:
    """``array`` (only known classes) with label ``known[k]`` replaced by ``k`` (0..K-1)."""
    lookup = np.full(max(known) + 1, -1, dtype=np.int64)
    lookup[np.asarray(known)] = np.arange(len(known))
    return ImageArray(array.name, array.images, lookup[array.labels])


def _check_id_labels(array: ImageArray, num_classes: int) -> None:
    low, high = int(array.labels.min()), int(array.labels.max())
    if low < 0 or high >= num_classes:
        raise DataError(
            f"ID set '{array.name}' has labels in [{low}, {high}] but the benchmark declares "
            f"num_classes={num_classes}; fix num_classes in the benchmark file or the labels"
        )


def load_benchmark(spec: Mapping, data_root: Optional[str], progress: bool = True) -> Benchmark:
    """Read every set of the benchmark described by ``spec`` (the benchmark config section).

    Every set is checked here, before any training: required keys present, sets non-empty,
    images of the declared ``image_size``, integer labels, ID labels within ``num_classes``.
    """
    require_keys(spec, ["name", "num_classes", "normalization", "splits"], f"benchmark '{spec.get('name')}'")
    splits = spec["splits"]
    _check_splits(splits, spec["name"])
    sources = sorted({source for s in _all_specs(splits) for source in s})
    root = Path(data_root).expanduser() if data_root else None
    reader = _Reader(detect_source(root, sources), root, spec.get("image_size", 32), progress)

    known = spec.get("known_classes")
    id_sets = {split: reader.read("ID", f"{spec['name']}_{split}", splits["id"][split], True, known)
               for split in ID_SPLITS}
    if known is not None:
        id_sets = {split: relabel_known(array, known) for split, array in id_sets.items()}
    for array in id_sets.values():
        _check_id_labels(array, spec["num_classes"])
    ood_val = reader.read("OOD validation", "ood_val", splits["ood_val"], True).as_ood()
    ood_val_far = None
    if splits.get("ood_val_far"):
        ood_val_far = reader.read("far-OOD validation", "ood_val_far", splits["ood_val_far"], True).as_ood()
    groups = {group: {} for group in OOD_GROUPS}
    for group in OOD_GROUPS:
        for name, item in (splits.get(group) or {}).items():
            array = reader.read(f"{group}-OOD", name, item, False)
            if array is not None:
                groups[group][name] = array.as_ood()
    outlier = None
    if splits.get("outlier"):
        outlier = reader.read("outlier", "outlier", splits["outlier"], False)
    return Benchmark(
        name=spec["name"], num_classes=spec["num_classes"],
        mean=list(spec["normalization"]["mean"]), std=list(spec["normalization"]["std"]),
        id=id_sets, ood_val=ood_val, ood_val_far=ood_val_far, near=groups["near"], far=groups["far"],
        outlier=outlier, missing=reader.missing,
    )


def _check_splits(splits, benchmark: str) -> None:
    """ConfigError naming the key when ``splits`` lacks a required role or a SPEC is malformed."""
    where = f"benchmark '{benchmark}'"
    if not isinstance(splits, Mapping):
        raise ConfigError(f"{where}: 'splits' must be a mapping of roles (id, ood_val, near, far, outlier)")
    require_keys(splits, ["id", "ood_val"], f"{where} splits")
    if not isinstance(splits["id"], Mapping):
        raise ConfigError(f"{where}: splits.id must map train/val/test to sets, e.g. test: {{npz: cifar10_test}}")
    missing = [f"splits.id.{split}" for split in ID_SPLITS if split not in splits["id"]]
    if missing:
        raise ConfigError(f"{where} is missing required key(s): {', '.join(missing)}")
    named = {f"splits.id.{k}": v for k, v in splits["id"].items()}
    named.update({f"splits.{k}": splits[k] for k in ("ood_val", "ood_val_far", "outlier") if splits.get(k)})
    for group in OOD_GROUPS:
        sets = splits.get(group) or {}
        if not isinstance(sets, Mapping):
            raise ConfigError(f"{where}: splits.{group} must map set names to sets, e.g. svhn: {{npz: svhn_test}}")
        named.update({f"splits.{group}.{k}": v for k, v in sets.items()})
    for key, item in named.items():
        if not isinstance(item, Mapping) or not set(item) & set(SOURCES) or set(item) - set(SPEC_KEYS):
            raise ConfigError(f"{where}: {key} must map a source ({', '.join(SOURCES)}) to a location, "
                              f"e.g. {{npz: cifar10_test}} (optionally with classes: [...]); got {item!r}")


def _all_specs(splits: Mapping):
    yield from splits["id"].values()
    yield splits["ood_val"]
    if splits.get("ood_val_far"):
        yield splits["ood_val_far"]
    if splits.get("outlier"):
        yield splits["outlier"]
    for group in OOD_GROUPS:
        yield from (splits.get(group) or {}).values()
