"""In-memory image sets and the readers that produce them (npz pack, OpenOOD image lists).

Every dataset becomes an :class:`ImageArray`: ``images`` uint8 (N, H, W, 3) RGB and ``labels``
int64 (N,), with -1 for OOD sets. 32x32 benchmarks fit in memory, which keeps loading simple and
fast on CPU. Labels must be integers; float labels are accepted only when every value is a whole
number (e.g. 3.0, as some converters write them); 2.5 or NaN is an error, never truncated.
"""
from __future__ import annotations

import ast
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision import transforms
from tqdm import tqdm

from moodcat_plugin.errors import DataError


@dataclass
class ImageArray:
    """A named set of images. images: uint8 (N, H, W, 3); labels: int64 (N,)."""

    name: str
    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise DataError(
                f"dataset '{self.name}': images must be uint8 (N, H, W, 3), got "
                f"{self.images.dtype} {self.images.shape}"
            )
        if len(self.images) != len(self.labels):
            raise DataError(f"dataset '{self.name}': {len(self.images)} images but {len(self.labels)} labels")
        self.labels = integer_labels(self.labels, self.name)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: np.ndarray, name: str | None = None) -> "ImageArray":
        return ImageArray(name or self.name, self.images[indices], self.labels[indices])

    def as_ood(self) -> "ImageArray":
        """Copy with every label set to -1 (OpenOOD's OOD label)."""
        return ImageArray(self.name, self.images, np.full(len(self), -1, dtype=np.int64))


def integer_labels(labels, name: str) -> np.ndarray:
    """``labels`` (N,) as int64. Integer dtypes pass; floats only if every value is whole."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"dataset '{name}': labels must be one class id per image (shape (N,)), got {labels.shape}")
    if labels.dtype.kind in "iu":
        return labels.astype(np.int64)
    if labels.dtype.kind == "f":
        not_whole = ~(np.isfinite(labels) & (labels == np.round(labels)))
    else:
        not_whole = np.ones(len(labels), dtype=bool)
    if not not_whole.any():
        return labels.astype(np.int64)
    raise DataError(f"dataset '{name}': labels must be integer class ids (-1 for OOD), got {labels.dtype} "
                    f"values such as {labels[not_whole][:3].tolist()}; store them as integers")


NPZ_FORMAT = "'images' uint8 (N, H, W, 3) and 'labels' int (N,)"
#: How an npz (a zip archive) and an npy file begin; numpy tries anything else as a pickle.
NUMPY_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY")


def starts_like_numpy(path: Path) -> bool:
    """Whether ``path`` begins as an npz archive or an npy array does (OSError if unreadable)."""
    with open(path, "rb") as handle:
        head = handle.read(6)
    return any(head.startswith(magic) for magic in NUMPY_MAGICS)


def read_npz(path: Path, name: str) -> ImageArray:
    """Read ``images``/``labels`` from an npz file of the data pack; every problem with the file
    (truncated, corrupt, wrong arrays) is a one-line DataError naming it."""
    try:
        if not starts_like_numpy(path):
            raise DataError(f"{path} is not an npz archive (it begins like neither a zip archive nor a numpy array: "
                            f"random bytes, another format or a damaged start); copy or re-create the file "
                            f"(it must hold {NPZ_FORMAT})")
        pack = np.load(path)
        if not isinstance(pack, np.lib.npyio.NpzFile):
            raise DataError(f"{path} is a single .npy array, not an npz archive; a data-pack file holds {NPZ_FORMAT}")
        with pack:
            missing = [key for key in ("images", "labels") if key not in pack.files]
            if missing:
                raise DataError(f"{path} has no {' or '.join(repr(k) for k in missing)} array (it has "
                                f"{pack.files}); a data-pack file holds {NPZ_FORMAT}")
            images, labels = pack["images"], pack["labels"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        reason = str(exc).split(". ")[0].splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path} is truncated or corrupt ({reason}); copy or re-create the file "
                        f"(it must hold {NPZ_FORMAT})") from exc
    try:
        return ImageArray(name, images, labels)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from exc


def _parse_imglist_label(extra: str, line: str, listfile: Path):
    extra = extra.strip()
    if not extra:
        return -1
    try:
        value = ast.literal_eval(extra)
    except (ValueError, SyntaxError) as exc:
        raise DataError(f"{listfile}: cannot parse label in line '{line.strip()}'") from exc
    if isinstance(value, dict):
        return value.get("class_label", value.get("label", -1))
    return value  # checked by ImageArray: an integer (or whole float) class id


def openood_test_resize(size: int) -> transforms.Compose:
    """OpenOOD v1.5's test-time geometry for 32x32 benchmarks (``TestStandardPreProcessor``): PIL
    ``Resize(size)`` of the shorter side with bilinear interpolation (the benchmarks' config
    ``dataset.interpolation: bilinear``), then ``CenterCrop(size)``. Its ToTensor/Normalize happen
    later, in our loaders. RGB PIL image in, RGB PIL image of size x size out."""
    return transforms.Compose([transforms.Resize(size, interpolation=transforms.InterpolationMode.BILINEAR),
                               transforms.CenterCrop(size)])


def _load_rgb(path: Path, resize: transforms.Compose) -> np.ndarray:
    """One image file -> uint8 (size, size, 3): converted to RGB first, as OpenOOD's ImglistDataset."""
    with Image.open(path) as image:
        return np.asarray(resize(image.convert("RGB")), dtype=np.uint8)


def read_imglist(listfile: Path, image_root: Path, name: str, image_size: int = 32,
                 progress: bool = True) -> ImageArray:
    """Read an OpenOOD ``benchmark_imglist`` file: lines ``<relative path> <label or dict>``; every
    image is resized and centre-cropped to ``image_size`` by :func:`openood_test_resize`."""
    lines = [line for line in listfile.read_text().splitlines() if line.strip()]
    images, labels = [], []
    resize = openood_test_resize(image_size)
    for line in tqdm(lines, desc=f"reading {name}", disable=not progress, leave=False):
        relative, _, extra = line.partition(" ")
        path = image_root / relative
        if not path.is_file():
            raise DataError(f"{listfile} names {path}, which does not exist; check --data-root "
                            "(it must hold benchmark_imglist/ and images_classic/)")
        images.append(_load_rgb(path, resize))
        labels.append(_parse_imglist_label(extra, line, listfile))
    if not images:
        raise DataError(f"{listfile} lists no images")
    try:
        return ImageArray(name, np.stack(images), np.asarray(labels))
    except (DataError, ValueError) as exc:  # ValueError: labels of mixed kinds (numbers and lists)
        raise DataError(f"{listfile}: {exc}") from exc


def stratified_holdout(array: ImageArray, fraction: float, seed: int) -> tuple:
    """Split ``array`` into (kept, held_out): a seeded ``fraction`` of every class held out.

    ``fraction`` 0 returns (array, array): nothing is held out and both parts are everything.
    """
    if fraction <= 0:
        return array, array
    rng = np.random.default_rng(seed)
    held = np.zeros(len(array), dtype=bool)
    for label in np.unique(array.labels):
        members = rng.permutation(np.flatnonzero(array.labels == label))
        held[members[:int(round(fraction * len(members)))]] = True
    return (array.subset(np.flatnonzero(~held), f"{array.name}_kept"),
            array.subset(np.flatnonzero(held), f"{array.name}_held_out"))
