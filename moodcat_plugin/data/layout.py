"""Writing OpenOOD's data layout: ``<root>/benchmark_imglist/<benchmark>/<list>.txt`` naming images
under ``<root>/images_classic/<set>/...``.

Three writers, each building a set in a staging folder and renaming it into place as a whole
(:func:`install_folder`), so a set folder either is complete or does not exist:

* :func:`convert_torchvision`: CIFAR-10/100, MNIST and SVHN read from torchvision's own on-disk
  formats by torchvision's dataset classes, written as lossless PNG files under the names OpenOOD's
  image lists use (see "where we differ" below).
* :func:`install_zip`: an archive OpenOOD publishes (Tiny-ImageNet, Textures, Places365, the image
  lists), extracted as OpenOOD's download script does.
* :func:`write_array_layout`: in-memory :class:`ImageArray` sets written as PNG files plus image
  lists (tests, and the cache benchmark built from the npz pack).

Where we differ from OpenOOD: OpenOOD publishes its own re-encoded copies of CIFAR, MNIST and SVHN;
we write torchvision's originals. The file names follow OpenOOD's lists: CIFAR
``<split>/<class name>/<k>.png`` with k the 1-based position of the image among its class in
torchvision's order (4 digits), MNIST ``<split>/<label>_<i>.jpg`` with i the 0-based index in its
split, SVHN ``test/<i>_<label>.jpg`` with i 1-based (6 digits). OpenOOD does not publish the order it
numbered its files in, so which CIFAR test images fall in its val list rather than its test list may
differ from OpenOOD's copy (both are still disjoint parts of the official test split). MNIST and SVHN
files hold PNG data under OpenOOD's ``.jpg`` names (PIL reads the content, not the name); OpenOOD's
own copies are JPEG re-encodings, so their pixels differ slightly from ours.
"""
from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
from PIL import Image

from moodcat_plugin.data.arrays import ImageArray
from moodcat_plugin.errors import DataError

IMAGES = "images_classic"
LISTS = "benchmark_imglist"


def install_folder(build: Callable[[Path], None], final: Path) -> None:
    """Run ``build(staging)`` on an empty staging folder beside ``final``, then rename it to ``final``.

    A leftover staging folder of an interrupted run is removed first; an existing ``final`` is
    replaced only after the new one is complete.
    """
    staging = final.parent / f".{final.name}.partial"
    old = final.parent / f".{final.name}.old"
    for leftover in (staging, old):
        shutil.rmtree(leftover, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        build(staging)
        if final.exists():
            os.replace(final, old)
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def save_png(image: np.ndarray, path: Path) -> None:
    """uint8 (H, W) grey or (H, W, 3) RGB -> lossless PNG data at ``path`` (whatever its extension)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG")


def cifar_names(labels: Sequence[int], classes: Sequence[str], split: str) -> List[str]:
    """OpenOOD's CIFAR file names: ``<split>/<class>/<k:04d>.png``, k 1-based within the class."""
    seen: Dict[int, int] = {}
    names = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        names.append(f"{split}/{classes[label]}/{seen[label]:04d}.png")
    return names


def mnist_names(labels: Sequence[int], split: str) -> List[str]:
    return [f"{split}/{label}_{index}.jpg" for index, label in enumerate(labels)]


def svhn_names(labels: Sequence[int]) -> List[str]:
    return [f"test/{index + 1:06d}_{label}.jpg" for index, label in enumerate(labels)]


def torchvision_splits(kind: str, folder: Path) -> Iterable[tuple]:
    """(images uint8 (N, H, W[, 3]), relative file names) per split of torchvision's dataset
    ``kind`` whose files torchvision expects under ``folder``. torchvision's classes check their
    own md5s of the extracted files here and raise if one is missing or damaged."""
    from torchvision import datasets

    root = str(folder)
    if kind in ("cifar10", "cifar100"):
        dataset_class = datasets.CIFAR10 if kind == "cifar10" else datasets.CIFAR100
        for train, split in ((True, "train"), (False, "test")):
            data = dataset_class(root, train=train, download=False)
            yield data.data, cifar_names(data.targets, data.classes, split)
    elif kind == "mnist":
        for train, split in ((True, "train"), (False, "test")):
            data = datasets.MNIST(root, train=train, download=False)
            yield data.data.numpy(), mnist_names(data.targets.tolist(), split)
    elif kind == "svhn":
        data = datasets.SVHN(root, split="test", download=False)
        yield data.data.transpose(0, 2, 3, 1), svhn_names(data.labels.tolist())
    else:
        raise ValueError(f"no torchvision converter for {kind}")


def convert_torchvision(kind: str, folder: Path, final: Path, progress=None) -> int:
    """Write torchvision's ``kind`` (files under ``folder``) as image files into ``final``
    (atomically, see :func:`install_folder`). Returns the number of images written."""
    count = [0]

    def build(staging: Path) -> None:
        for images, names in torchvision_splits(kind, folder):
            for image, name in zip(images, names):
                save_png(np.ascontiguousarray(image), staging / name)
                count[0] += 1
                if progress is not None:
                    progress.update(1)

    try:
        install_folder(build, final)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        raise DataError(f"torchvision cannot read {kind} from {folder} ({exc})") from exc
    return count[0]


def install_zip(archive: Path, final: Path, check: Optional[Callable[[Path], None]] = None) -> None:
    """Extract ``archive`` into ``final`` (atomically). An archive holding one top folder named
    like ``final`` (``benchmark_imglist.zip`` holds ``benchmark_imglist/``) is unwrapped, so the
    result is the same for both ways OpenOOD packs its archives. ``check(folder)`` runs on the
    extracted folder before it is renamed into place (it raises to refuse it)."""

    def build(staging: Path) -> None:
        with zipfile.ZipFile(archive) as handle:
            for member in handle.namelist():
                target = (staging / member).resolve()
                if not target.is_relative_to(staging.resolve()):
                    raise DataError(f"{archive.name} names {member}, outside its folder; delete {archive} "
                                    "and run the same command again")
            handle.extractall(staging)
        shutil.rmtree(staging / "__MACOSX", ignore_errors=True)
        inner = staging / final.name
        if [p.name for p in staging.iterdir()] == [final.name] and inner.is_dir():
            for item in list(inner.iterdir()):
                os.replace(item, staging / item.name)
            inner.rmdir()
        if check is not None:
            check(staging)

    install_folder(build, final)


def write_array_layout(root: Path, lists: Dict[str, ImageArray], image_folder: str = "pack") -> None:
    """Write each array of ``lists`` (list path relative to ``benchmark_imglist/``, e.g.
    ``cifar10/test_cifar10.txt`` -> set) as PNG files under ``images_classic/<image_folder>/<set>/``
    and its image list (``<relative path> <label>``, label -1 for OOD). Lists are written last, each
    atomically, so a list never names an image that is not there."""
    for listname, array in lists.items():
        folder = Path(IMAGES) / image_folder / Path(listname).with_suffix("").as_posix().replace("/", "_")
        lines = []
        for index, (image, label) in enumerate(zip(array.images, array.labels)):
            relative = folder.relative_to(IMAGES) / f"{index:06d}.png"
            target = root / IMAGES / relative
            if not target.is_file():
                save_png(image, target)
            lines.append(f"{relative.as_posix()} {int(label)}")
        listfile = root / LISTS / listname
        listfile.parent.mkdir(parents=True, exist_ok=True)
        temporary = listfile.with_name(listfile.name + ".tmp")
        temporary.write_text("\n".join(lines) + "\n")
        os.replace(temporary, listfile)


def listed_images(root: Path, listfiles: Iterable[str], prefix: str) -> List[str]:
    """Every image path (relative to images_classic/) under ``prefix/`` named by the image lists
    ``listfiles`` (relative to ``root/benchmark_imglist``), without repeats."""
    names = set()
    for listname in listfiles:
        for line in (root / LISTS / listname).read_text().splitlines():
            relative = line.partition(" ")[0]
            if relative.startswith(prefix + "/"):
                names.add(relative)
    return sorted(names)
