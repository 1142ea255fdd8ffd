"""Decoded-image cache for OpenOOD-layout data: each image list decoded once, then read as one array.

Decoding an OpenOOD benchmark (PIL open, RGB, resize, centre crop per image) takes minutes per run;
the result of :func:`moodcat_plugin.data.arrays.read_imglist` is a uint8 array, which is stored once
in ``<data root>/.moodcat_cache/`` as an uncompressed ``.npz`` (``images`` uint8 (N, S, S, 3),
``labels`` int64 (N,)) and read back by later runs.

Key (in the file name): the sha256 of the image list's bytes, the image size and
``PREPROCESSING`` (the resize/crop recipe; bump it when :func:`openood_test_resize` changes), and
the modification times of the ``images_classic/<set>`` folders the list names (get_data.py
reinstalls a set by renaming a new folder into place, which changes them). A changed list, size or
reinstalled set therefore misses the cache and rewrites it; the stale file of that list is removed.
Not covered: an image file edited in place inside an unchanged folder (delete ``.moodcat_cache/``).
Writes are atomic (temporary name, then rename). A data folder that cannot be written (read-only)
is decoded every run, with a warning saying so.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np

from moodcat_plugin.data.arrays import ImageArray, read_imglist

log = logging.getLogger(__name__)
CACHE_FOLDER = ".moodcat_cache"
PREPROCESSING = "pil-rgb_resize-shorter-bilinear_center-crop_v1"


def cache_key(listfile: Path, image_root: Path, image_size: int) -> str:
    """Hex digest of everything the decoded array depends on (see the module docstring)."""
    text = listfile.read_bytes()
    digest = hashlib.sha256(text)
    digest.update(f"|{image_size}|{PREPROCESSING}".encode())
    sets = sorted({line.split(b"/", 1)[0] for line in text.splitlines() if line.strip()})
    for name in sets:
        folder = image_root / name.decode(errors="replace")
        stamp = folder.stat().st_mtime_ns if folder.is_dir() else -1
        digest.update(b"|" + name + f"={stamp}".encode())
    return digest.hexdigest()


def cache_stem(listfile: Path, data_root: Path) -> str:
    """File-name prefix of one list's cache entries, e.g. ``cifar10__test_cifar10``."""
    try:
        relative = listfile.resolve().relative_to(data_root.resolve())
    except ValueError:
        relative = Path(listfile.name)
    parts = relative.with_suffix("").parts
    return "__".join(parts[1:] if parts[0] == "benchmark_imglist" else parts)


def read_imglist_cached(listfile: Path, data_root: Path, name: str, image_size: int = 32,
                        progress: bool = True, cache_dir: Optional[Path] = None) -> ImageArray:
    """:func:`read_imglist` of ``listfile`` (images under ``data_root/images_classic``), through the
    cache in ``cache_dir`` (default ``data_root/.moodcat_cache``)."""
    image_root = data_root / "images_classic"
    cache_dir = data_root / CACHE_FOLDER if cache_dir is None else cache_dir
    stem = cache_stem(listfile, data_root)
    entry = cache_dir / f"{stem}-{image_size}px-{cache_key(listfile, image_root, image_size)[:20]}.npz"
    if entry.is_file():
        cached = _load(entry)
        if cached is not None:
            return ImageArray(name, *cached)
    array = read_imglist(listfile, image_root, name, image_size, progress)
    _store(entry, array, stale=f"{stem}-{image_size}px-")
    return array


def _load(entry: Path):
    """(images, labels) from a cache file, or None (with a warning) if it cannot be read."""
    try:
        with np.load(entry) as pack:
            images, labels = pack["images"], pack["labels"]
    except Exception as exc:  # noqa: BLE001 -- any damage to a cache file means: decode again
        log.warning("decoded-image cache %s is unreadable (%s); decoding the images again", entry, exc)
        return None
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(labels):
        log.warning("decoded-image cache %s holds arrays of the wrong shape; decoding the images again", entry)
        return None
    return images, labels


def _store(entry: Path, array: ImageArray, stale: str) -> None:
    """Write ``array`` to ``entry`` atomically and remove older entries of the same list."""
    temporary = entry.with_name(entry.name + ".tmp")
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as handle:
            np.savez(handle, images=array.images, labels=array.labels)
        os.replace(temporary, entry)
    except OSError as exc:
        log.warning("cannot write the decoded-image cache %s (%s); every run decodes these images again",
                    entry, exc)
        temporary.unlink(missing_ok=True)
        return
    for old in entry.parent.glob(f"{stale}*.npz"):
        if old != entry:
            old.unlink(missing_ok=True)
