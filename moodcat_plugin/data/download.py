"""Fetching one remote file: resumable, checked (size and checksum), renamed into place atomically.

Every download goes through ``gdown`` (the library OpenOOD's own download script uses): a
Google Drive file id (OpenOOD's published archives) or a plain http(s) URL (torchvision's
dataset files, or a test server on 127.0.0.1). gdown writes to ``<name>.fetch<random>.part``
beside the target, resumes such a partial file with an HTTP Range request when the command is run
again, refuses a body shorter than the announced length, and shows a progress bar in bytes.

What we add: the finished transfer lands under a staging name, is checked against the size and
checksum of the file table (md5 where the publisher gives md5, as torchvision does; sha256
otherwise; for a zip with no published checksum, the CRC-32 of every member), and only then is
renamed to its final name. A file under its final name has therefore always been checked. A
failed check deletes the staging file (the next run restarts that file); an interrupted
transfer keeps its ``.part`` (the next run resumes it).
"""
from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from moodcat_plugin.errors import DataError

CHUNK = 1 << 20


class FetchError(DataError):
    """A file could not be fetched or failed its check; the message says what to do."""


@dataclass(frozen=True)
class RemoteFile:
    """One published file. ``urls`` are tried in order (mirrors); ``gdrive_id`` is a Google Drive
    file id fetched the way OpenOOD's download script does. ``size`` in bytes and ``md5``/``sha256``
    are the publisher's values; ``None`` where none is published (then a zip's member CRCs are
    checked instead, and ``approx_size`` is only our estimate, shown in ``--help``)."""

    name: str
    urls: Tuple[str, ...] = ()
    gdrive_id: str = ""
    size: Optional[int] = None
    md5: Optional[str] = None
    sha256: Optional[str] = None
    approx_size: Optional[int] = None

    def __post_init__(self):
        if not self.urls and not self.gdrive_id:
            raise ValueError(f"remote file {self.name}: give urls or a gdrive_id")
        if not (self.md5 or self.sha256 or self.name.endswith(".zip")):
            raise ValueError(f"remote file {self.name}: no checksum; every file must be checkable")

    @property
    def shown_size(self) -> Optional[int]:
        return self.size if self.size is not None else self.approx_size

    @property
    def sources(self) -> Tuple[dict, ...]:
        """Keyword arguments for gdown.download, one per source (mirror)."""
        if self.gdrive_id:
            return ({"id": self.gdrive_id},)
        return tuple({"url": url} for url in self.urls)


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def check_file(path: Path, remote: RemoteFile) -> Optional[str]:
    """None if ``path`` has the size and checksum of ``remote``, else the reason (one clause)."""
    actual = path.stat().st_size
    if remote.size is not None and actual != remote.size:
        return f"{remote.name} has {actual} bytes, expected {remote.size} (truncated or replaced)"
    for algorithm in ("md5", "sha256"):
        expected = getattr(remote, algorithm)
        if expected and file_digest(path, algorithm) != expected:
            return f"{remote.name} has the wrong {algorithm} checksum (corrupted in transfer or changed upstream)"
    if remote.name.endswith(".zip") and not (remote.md5 or remote.sha256):
        return _zip_problem(path, remote.name)
    return None


def _zip_problem(path: Path, name: str) -> Optional[str]:
    """None if every member of the zip reads back with its stored CRC-32."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        return f"{name} is not a complete zip archive ({exc})"
    return None if bad is None else f"{name} member {bad} fails its CRC check (corrupted in transfer)"


def fetch(remote: RemoteFile, folder: Path, retries: int = 3, quiet: bool = False, timeout: float = 60.0) -> Path:
    """``folder / remote.name``, downloaded and checked unless a checked copy is already there.

    Raises FetchError (one line: which file, why, what to do) when every source fails or the
    download fails its check; nothing is then left under the final name. ``timeout``: seconds
    without data before a connection counts as dropped.
    """
    import gdown  # imported here: only get_data needs it, the benchmark CLI never downloads

    folder.mkdir(parents=True, exist_ok=True)
    final = folder / remote.name
    if final.is_file():
        problem = check_file(final, remote)
        if problem is None:
            return final
        final.unlink()  # a complete-looking file that fails its check is replaced, never used
    staging = folder / f"{remote.name}.fetch"
    errors, problems = [], []
    for source in remote.sources:  # mirrors, in order
        try:
            gdown.download(output=str(staging), quiet=quiet, resume=True, retries=retries, timeout=timeout, **source)
        except Exception as exc:  # noqa: BLE001 -- gdown/requests raise many types; each is reported
            errors.append(_first_line(exc))
            continue
        problem = check_file(staging, remote)
        if problem is None:
            os.replace(staging, final)
            return final
        staging.unlink()
        problems.append(problem)
    if problems:
        raise FetchError(f"{problems[-1]}; run the same command again to download it anew")
    manual = (f", or save https://drive.google.com/uc?id={remote.gdrive_id} from a browser as {final} "
              "and run it again (the file is checked)") if remote.gdrive_id else ""
    raise FetchError(f"{remote.name} could not be downloaded ({'; '.join(errors)}); check the network "
                     f"and run the same command again (a partial download resumes){manual}")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
