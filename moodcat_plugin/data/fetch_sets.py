"""What ``scripts/get_data.py`` fetches: the sets of each benchmark, where they come from, and the
loop that fetches, checks and installs them into OpenOOD's layout under one root folder.

Layout written (what ``run_benchmark.py --data-root ROOT`` reads)::

    ROOT/benchmark_imglist/cifar10/*.txt, cifar100/*.txt   OpenOOD v1.5's image lists
    ROOT/images_classic/<set>/...                           the images they name
    ROOT/.get_data/<set>.json                               written last: the set is complete
    ROOT/downloads/<set>/                                   transfers in progress (removed when installed)

Sources: torchvision's own URLs and md5s for CIFAR-10/100, MNIST and SVHN (read from torchvision's
dataset classes at run time, so they follow the installed torchvision); OpenOOD v1.5's published
archives on Google Drive (file ids as in OpenOOD's ``scripts/download/download.py``) for the image
lists, Tiny-ImageNet (``tin``: its val images; ``tin597``: the outlier training set), Textures and
Places365. OpenOOD publishes no size or checksum for its archives: each is checked member by member
against the CRC-32 stored in the zip, and the image lists we read are checked against the sha256 of
OpenOOD v1.5's lists (``LIST_SHA256``). Sizes of those archives in ``--help`` are our estimates.

A set that fails is reported with its reason and what to do; the other sets still complete. A set
folder already there without our marker (e.g. fetched by OpenOOD's own script) is kept, not
fetched, when it passes the checks (lists: v1.5's sha256; images: every image the lists name exists).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from tqdm import tqdm

from moodcat_plugin.data.download import RemoteFile, fetch, file_digest
from moodcat_plugin.data.layout import IMAGES, LISTS, convert_torchvision, install_zip, listed_images
from moodcat_plugin.errors import DataError

MB = 1_000_000
TORCHVISION_KINDS = ("cifar10", "cifar100", "mnist", "svhn")


@dataclass(frozen=True)
class DataSet:
    """One set to fetch. ``kind``: a torchvision dataset (cifar10, cifar100, mnist, svhn), ``zip``
    (an OpenOOD image archive, extracted to images_classic/<name>) or ``imglist`` (OpenOOD's
    image lists, extracted to benchmark_imglist/)."""

    name: str
    kind: str
    description: str
    files: Tuple[RemoteFile, ...]

    @property
    def shown_size(self) -> Tuple[int, bool]:
        """(bytes, whether published): published sizes where given, our estimates otherwise."""
        total = sum(f.shown_size or 0 for f in self.files)
        return total, all(f.size is not None for f in self.files)

    @property
    def target(self) -> str:
        return LISTS if self.kind == "imglist" else f"{IMAGES}/{self.name}"


def _gdrive(name: str, file_id: str, approx_mb: float) -> RemoteFile:
    return RemoteFile(f"{name}.zip", gdrive_id=file_id, approx_size=int(approx_mb * MB))


def torchvision_files(kind: str) -> Tuple[RemoteFile, ...]:
    """The files torchvision's own ``download=True`` fetches for ``kind``, with its md5s.
    Approximate sizes (for --help only; the md5 is what is checked) are the published archives'."""
    from torchvision import datasets

    if kind in ("cifar10", "cifar100"):
        cls = datasets.CIFAR10 if kind == "cifar10" else datasets.CIFAR100
        return (RemoteFile(cls.filename, urls=(cls.url,), md5=cls.tgz_md5, approx_size=int(170 * MB)),)
    if kind == "mnist":
        approx = {"train-images": 9.9, "train-labels": 0.03, "t10k-images-": 1.6, "t10k-labels-": 0.005}
        return tuple(RemoteFile(name, urls=tuple(m + name for m in datasets.MNIST.mirrors), md5=md5,
                                approx_size=int(approx[name[:12]] * MB))
                     for name, md5 in datasets.MNIST.resources)
    if kind == "svhn":
        url, name, md5 = datasets.SVHN.split_list["test"]
        return (RemoteFile(name, urls=(url,), md5=md5, approx_size=int(64.3 * MB)),)
    raise ValueError(kind)


def default_catalog() -> Dict[str, DataSet]:
    """Every set get_data.py can fetch, by name."""
    sets = [
        DataSet("imglist", "imglist", "OpenOOD v1.5 benchmark image lists (all benchmarks)",
                (_gdrive("benchmark_imglist", "1lI1j0_fDDvjIt9JlWAw09X8ks-yrR_H1", 30),)),
        DataSet("cifar10", "cifar10", "CIFAR-10 train 50k + test 10k (torchvision)", torchvision_files("cifar10")),
        DataSet("cifar100", "cifar100", "CIFAR-100 train 50k + test 10k (torchvision)", torchvision_files("cifar100")),
        DataSet("mnist", "mnist", "MNIST 70k, far-OOD (torchvision)", torchvision_files("mnist")),
        DataSet("svhn", "svhn", "SVHN test 26k, far-OOD (torchvision)", torchvision_files("svhn")),
        DataSet("tin", "zip", "Tiny-ImageNet val: near-OOD and OOD val (OpenOOD)",
                (_gdrive("tin", "1PZ-ixyx52U989IKsMA2OT-24fToTrelC", 25),)),
        DataSet("tin597", "zip", "Tiny-ImageNet 597 classes: outlier training data (OpenOOD)",
                (_gdrive("tin597", "1R0d8zBcUxWNXz6CPXanobniiIfQbpKzn", 70),)),
        DataSet("texture", "zip", "Describable Textures 5.6k, far-OOD (OpenOOD)",
                (_gdrive("texture", "1OSz1m3hHfVWbRdmMwKbUzoU8Hg9UKcam", 600),)),
        DataSet("places365", "zip", "Places365 35k, far-OOD (OpenOOD)",
                (_gdrive("places365", "1Ec-LRSTf6u5vEctKX9vRp9OA6tqnJ0Ay", 900),)),
    ]
    return {s.name: s for s in sets}


_CIFAR_LISTS = ("train_{id}", "val_{id}", "test_{id}", "val_tin", "train_tin597", "test_{near}", "test_tin",
                "test_mnist", "test_svhn", "test_texture", "test_places365")
BENCHMARK_LISTS: Dict[str, Tuple[str, ...]] = {
    "cifar10": tuple(f"cifar10/{n.format(id='cifar10', near='cifar100')}.txt" for n in _CIFAR_LISTS),
    "cifar100": tuple(f"cifar100/{n.format(id='cifar100', near='cifar10')}.txt" for n in _CIFAR_LISTS),
    "osr": ("cifar10/train_cifar10.txt", "cifar10/val_cifar10.txt", "cifar10/test_cifar10.txt",
            "cifar10/val_tin.txt", "cifar100/test_cifar100.txt"),
}
_ALL_IMAGE_SETS = ("cifar10", "cifar100", "tin", "tin597", "mnist", "svhn", "texture", "places365")
BENCHMARK_SETS: Dict[str, Tuple[str, ...]] = {
    "cifar10": ("imglist",) + _ALL_IMAGE_SETS,
    "cifar100": ("imglist",) + _ALL_IMAGE_SETS,
    "osr": ("imglist", "cifar10", "cifar100", "tin"),
}
BENCHMARK_CONFIGS = {"cifar10": "cifar10, cifar10_scood (no LSUN)", "cifar100": "cifar100, cifar100_scood (no LSUN)",
                     "osr": "osr_cifar6_split0/1/2, osr_cifar_plus"}
# benchmark config names (configs/benchmarks/*.yml) accepted for the data they read
ALIASES = {"cifar10_scood": "cifar10", "cifar100_scood": "cifar100", "osr_cifar6_split0": "osr",
           "osr_cifar6_split1": "osr", "osr_cifar6_split2": "osr", "osr_cifar_plus": "osr"}

# sha256 of OpenOOD v1.5's image lists that our benchmark configs read (from the published lists).
LIST_SHA256 = {
    "cifar10/train_cifar10.txt": "7f11207b0363ebc8bdb6ceb7a6d110b3d7059251daa8264cf6df437e742bdfa0",
    "cifar10/val_cifar10.txt": "e50a15f1bd5761c1dc1f0f48a95b4a25098d29eb59a8ac46a4581d280a760718",
    "cifar10/test_cifar10.txt": "e81c2572da0f89b6e6086fffd099518064095927d49a08ce71df5ab8787c53e2",
    "cifar10/val_tin.txt": "59c8dc00248967033324e0a2583095b6bd64ab0881bcbbe43ba994784a064677",
    "cifar10/train_tin597.txt": "55df4dbc2d2692e99c20ee1120f91b15ed3d005ed35a107ee283d083c8cddffc",
    "cifar10/test_cifar100.txt": "620a06d8792a7b2ee992aec0679adb10a2386454f7baada0d89ed76c821430e1",
    "cifar10/test_tin.txt": "4c2d6ce8a3e5edc920cafa2a8d4333536f429699daf29cf33d91eef55cf2fe92",
    "cifar10/test_mnist.txt": "faa70f4cffe014b24c64bee67183e4753c4f847cbf452809fb07c09a47eb724a",
    "cifar10/test_svhn.txt": "d454c4b0c4f894cce60000cfc896fec77f0f925f7e90ad5673e9120fb84d7f18",
    "cifar10/test_texture.txt": "0eddb2a9f7d815858164eb5f0909f5d673b39ca26c44ba79059eb16b3e097cd3",
    "cifar10/test_places365.txt": "e8213480f3b7f0c26d8bceaf5c75685679f4e09373f590de267d10348a827215",
    "cifar100/train_cifar100.txt": "0ef4142ea90c0b464323265263fe5e483686500e8d57c0fa8731fc76a9a3aa62",
    "cifar100/val_cifar100.txt": "49d2c7cb5985ad0e8cf38fdf163402231acf81afd69eda8fbb193d25961e14db",
    "cifar100/test_cifar100.txt": "5afb5a505ffb6e231e1633e0efe1365864e20e96b3acfe0fa67be97ee7cad556",
    "cifar100/val_tin.txt": "7053a5795a1e5d75868a6e9e6c2e1b2f153ff1a4e928d3f6e5eade2da826e77b",
    "cifar100/train_tin597.txt": "55df4dbc2d2692e99c20ee1120f91b15ed3d005ed35a107ee283d083c8cddffc",
    "cifar100/test_cifar10.txt": "93c9b51f07629d90920ade4edcc1c4792473414b5b5543b76dd4a6a84540a973",
    "cifar100/test_tin.txt": "8e5b028a18410c2718f93aa9adb12491a358485d4f326311eaaad76e18ccac55",
    "cifar100/test_mnist.txt": "faa70f4cffe014b24c64bee67183e4753c4f847cbf452809fb07c09a47eb724a",
    "cifar100/test_svhn.txt": "d454c4b0c4f894cce60000cfc896fec77f0f925f7e90ad5673e9120fb84d7f18",
    "cifar100/test_texture.txt": "0eddb2a9f7d815858164eb5f0909f5d673b39ca26c44ba79059eb16b3e097cd3",
    "cifar100/test_places365.txt": "e0ba9aa0409cfb04842a7c21d1a42e1a2f6d58c7324209523b3a7b366db44904",
}


def expand_benchmarks(names: Sequence[str]) -> List[str]:
    """Benchmark names with ``all`` expanded, in a fixed order, without repeats."""
    chosen = list(BENCHMARK_SETS) if "all" in names else [ALIASES.get(n, n) for n in names]
    unknown = [n for n in chosen if n not in BENCHMARK_SETS]
    if unknown:
        raise DataError(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARK_SETS)} or all")
    return [n for n in BENCHMARK_SETS if n in chosen]


@dataclass
class Fetcher:
    """Fetches and installs sets under ``root``. ``catalog`` and ``list_sha256`` default to the
    published sources; tests pass their own (files served from 127.0.0.1)."""

    root: Path
    catalog: Optional[Dict[str, DataSet]] = None
    list_sha256: Optional[Dict[str, str]] = None
    retries: int = 3
    quiet: bool = False

    def __post_init__(self):
        self.root = Path(self.root).expanduser()
        self.catalog = default_catalog() if self.catalog is None else self.catalog
        self.list_sha256 = LIST_SHA256 if self.list_sha256 is None else self.list_sha256

    def marker(self, dataset: DataSet) -> Path:
        return self.root / ".get_data" / f"{dataset.name}.json"

    def installed(self, dataset: DataSet) -> bool:
        return self.marker(dataset).is_file() and (self.root / dataset.target).is_dir()

    def run(self, benchmarks: Sequence[str]) -> List[str]:
        """Fetch every set of ``benchmarks``; returns one line per failed set (empty: all done)."""
        names = expand_benchmarks(benchmarks)
        lists = sorted({entry for name in names for entry in BENCHMARK_LISTS[name]})
        sets = [s for s in dict.fromkeys(x for name in names for x in BENCHMARK_SETS[name])]
        failures = []
        with tqdm(sets, desc="sets", unit="set", disable=self.quiet) as bar:
            for name in bar:
                bar.set_postfix_str(name)
                try:
                    self.fetch_set(self.catalog[name], lists)
                except Exception as exc:  # noqa: BLE001 -- one failed set never stops the others
                    failures.append(f"set '{name}': {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
                    tqdm.write(f"FAILED {failures[-1]}")
        return failures

    def fetch_set(self, dataset: DataSet, lists: Sequence[str]) -> None:
        """Download, check and install one set unless it is installed already; then check that every
        image the lists name is there (on every run: sets installed before the lists get checked too)."""
        if not self.installed(dataset) and not self.adopt(dataset, lists):
            self.install(dataset, lists)
        self.check_listed_images(dataset, lists)

    def adopt(self, dataset: DataSet, lists: Sequence[str]) -> bool:
        """Keep a set folder already there (e.g. fetched by OpenOOD's own script) if it passes the
        checks: the lists with v1.5's sha256, or every image the lists name present. Marks it installed."""
        target = self.root / dataset.target
        if not target.is_dir():
            return False
        try:
            if dataset.kind == "imglist":
                self.check_lists(target, lists)
            else:
                self.check_listed_images(dataset, lists, require_lists=True)
        except DataError:
            return False
        self.write_marker(dataset, {"adopted": True})
        return True

    def install(self, dataset: DataSet, lists: Sequence[str]) -> None:
        folder = self.root / "downloads" / dataset.name
        if dataset.kind == "mnist":
            folder = folder / "MNIST" / "raw"  # where torchvision's MNIST class looks
        files = [fetch(remote, folder, retries=self.retries, quiet=self.quiet) for remote in dataset.files]
        record = {f.name: file_digest(f, "sha256") for f in files}
        final = self.root / dataset.target
        if dataset.kind == "imglist":
            install_zip(files[0], final, check=lambda staging: self.check_lists(staging, lists))
        elif dataset.kind == "zip":
            install_zip(files[0], final)
        else:
            self.unpack_torchvision(dataset.kind, files)
            with tqdm(desc=f"writing {dataset.name}", unit="img", disable=self.quiet, leave=False) as bar:
                convert_torchvision(dataset.kind, self.root / "downloads" / dataset.name, final, bar)
        self.write_marker(dataset, {"files_sha256": record})
        shutil.rmtree(self.root / "downloads" / dataset.name, ignore_errors=True)

    def write_marker(self, dataset: DataSet, record: dict) -> None:
        marker = self.marker(dataset)
        marker.parent.mkdir(parents=True, exist_ok=True)
        temporary = marker.with_name(marker.name + ".tmp")
        temporary.write_text(json.dumps(record, indent=1))
        os.replace(temporary, marker)

    @staticmethod
    def unpack_torchvision(kind: str, files: List[Path]) -> None:
        """Unpack downloaded archives where torchvision's dataset classes read them."""
        from torchvision.datasets.utils import extract_archive

        for path in files:
            if path.name.endswith((".tar.gz", ".gz")):
                extract_archive(str(path), str(path.parent))

    def check_lists(self, folder: Path, lists: Sequence[str]) -> None:
        """Every list our benchmarks read exists in ``folder`` with OpenOOD v1.5's sha256."""
        for name in lists:
            path = folder / name
            if not path.is_file():
                raise DataError(f"the image-list archive has no {name}; it is not OpenOOD v1.5's, "
                                "report it (the published archive may have changed)")
            expected = self.list_sha256.get(name)
            if expected and file_digest(path, "sha256") != expected:
                raise DataError(f"{name} differs from OpenOOD v1.5's list (sha256); the published archive "
                                "changed: report it, or place the v1.5 lists in benchmark_imglist/ by hand")

    def check_listed_images(self, dataset: DataSet, lists: Sequence[str], require_lists: bool = False) -> None:
        """Every image of ``dataset`` named by the benchmark lists exists (lists installed first;
        without them nothing is checked unless ``require_lists``)."""
        if dataset.kind == "imglist":
            return
        present = [name for name in lists if (self.root / LISTS / name).is_file()]
        wanted = listed_images(self.root, present, dataset.name)
        if require_lists and not wanted:
            raise DataError(f"no installed list names images of {dataset.name}")
        missing = [p for p in wanted if not (self.root / IMAGES / p).is_file()]
        if missing:
            raise DataError(f"{len(missing)} of {len(wanted)} images the lists name are missing under "
                            f"{IMAGES}/{dataset.name} (e.g. {missing[0]}); delete {IMAGES}/{dataset.name} "
                            "and report it: the archive does not match OpenOOD v1.5's lists")


def describe(catalog: Dict[str, DataSet]) -> str:
    """The --help text: every benchmark with its sets, every set with its size and source."""
    lines = ["benchmarks (--benchmark):"]
    for name, sets in BENCHMARK_SETS.items():
        if not set(sets) <= set(catalog):
            continue
        size = sum(catalog[s].shown_size[0] for s in sets)
        lines.append(f"  {name:<9} ~{size / MB:6.0f} MB  sets: {' '.join(sets)}  (configs: {BENCHMARK_CONFIGS[name]})")
    lines.append(f"  {'all':<9} every set below")
    lines.append("sets:")
    for s in catalog.values():
        size, published = s.shown_size
        where = "torchvision" if s.kind in TORCHVISION_KINDS else "OpenOOD, Google Drive"
        note = "" if published else "~"
        lines.append(f"  {s.name:<9} {note}{size / MB:6.0f} MB  {s.description} [{where}] -> {s.target}/")
    lines.append("~: estimate (the publisher gives no size; files are checked by md5, sha256 or zip CRC).")
    return "\n".join(lines)
