"""Small shared helpers: devices, seeding, atomic file writes (with one-line errors for a full disk,
a read-only folder or a file in the way), checkpoint loading."""
from __future__ import annotations

import errno
import json
import logging
import os
import random
import secrets
import shutil
import sys
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from moodcat_plugin.errors import CheckpointError, ConfigError, UserError


def resolve_device(name: str) -> torch.device:
    """``'auto'`` -> cuda when available else cpu; ``'cpu'``/``'cuda'``/``'cuda:N'`` as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asked for but CUDA is not available; use --device cpu or auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"unknown device '{name}'; use auto, cpu or cuda")
    return torch.device(name)


DEFAULT_THREADS = torch.get_num_threads()  # torch's choice at import: OMP_NUM_THREADS, else physical cores


def set_num_threads(setting) -> int:
    """Apply ``num_threads`` (``'auto'`` = torch's default, or an int >= 1); return the count.

    More threads than CPUs is allowed (a container may see fewer CPUs than it may use, and the
    count is part of the cache key of runs trained elsewhere) but warned about in one line: the
    extra threads only wait on each other."""
    threads = DEFAULT_THREADS if setting == "auto" else int(setting)
    if threads < 1:
        raise ConfigError(f"num_threads must be 'auto' or an integer >= 1, got {setting!r}")
    cpus = os.cpu_count() or threads
    if threads > cpus:
        logging.getLogger(__name__).warning(
            "num_threads=%d is more than the %d CPUs of this machine: the extra threads slow every step down; "
            "set num_threads=%d or auto (--set num_threads=...)", threads, cpus, cpus)
    torch.set_num_threads(threads)
    return threads


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


OUTPUT_FIX = "choose another output folder (--output-dir, or --set checkpoint_dir=...)"


def _blocking_file(path: Path) -> Path | None:
    """The outermost of ``path`` and its ancestors that exists but is not a folder, else None."""
    for candidate in reversed([path, *path.parents]):
        if candidate.exists() and not candidate.is_dir():
            return candidate
    return None


def describe_write_error(exc: OSError, path: Path) -> str:
    """One line naming ``path``, what went wrong (disk full, not writable, a file in the way) and the fix."""
    path = Path(path)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"cannot write {path}: the disk is full (no space left on device); free some space or {OUTPUT_FIX}"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason = "read-only file system" if exc.errno == errno.EROFS else "permission denied"
        return f"cannot write {path}: not writable ({reason}); fix the folder's permissions or {OUTPUT_FIX}"
    blocker = _blocking_file(path) if exc.errno in (errno.ENOTDIR, errno.EEXIST) else None
    if blocker is not None:
        return f"cannot create {path}: {blocker} is a file, not a folder; move that file away or {OUTPUT_FIX}"
    return f"cannot write {path}: {exc.strerror or exc}; check that folder or {OUTPUT_FIX}"


@contextmanager
def output_errors(path: Path | str) -> Iterator[None]:
    """Turn an OSError raised inside the block into a one-line UserError about ``path``."""
    try:
        yield
    except OSError as exc:
        raise UserError(describe_write_error(exc, Path(path))) from exc


def _new_temp_file(folder: Path, name: str) -> Path:
    """Create an empty, unique, hidden temporary file in ``folder``.

    Unlike ``tempfile.mkstemp`` (always mode 0600), its mode honours the umask like any file
    the user creates (0644 under umask 022), so a shared checkpoint folder stays readable.
    """
    while True:
        tmp = folder / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def atomic_write_with(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temporary file in the same folder, then rename over ``path``.

    ``write(tmp)`` fills the temporary file at the path ``tmp``. Readers never see a partial
    file; an OSError (disk full, folder not writable, a file in the way) becomes a one-line
    UserError naming ``path``, and the temporary file is removed.
    """
    path = Path(path)
    with output_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_temp_file(path.parent, path.name)
        try:
            write(str(tmp))
            os.replace(tmp, path)
        finally:
            with suppress(OSError):
                tmp.unlink(missing_ok=True)


def ensure_writable_folder(folder: Path | str) -> Path:
    """Create ``folder`` if needed and check that files can be written in it (at startup, before
    any training); a one-line UserError names the folder and the fix otherwise."""
    folder = Path(folder)
    with output_errors(folder):
        folder.mkdir(parents=True, exist_ok=True)
        _new_temp_file(folder, "write_test").unlink()
    return folder


def missing_folders(*folders: Path | str) -> List[Path]:
    """The folders (and their ancestors) that do not exist yet, deepest first: what creating
    ``folders`` would add, so a run that fails early can remove them again (:func:`remove_empty`)."""
    missing = set()
    for folder in folders:
        folder = Path(folder).absolute()
        while not folder.exists() and folder != folder.parent:
            missing.add(folder)
            folder = folder.parent
    return sorted(missing, key=lambda p: len(p.parts), reverse=True)


def remove_empty(folders: List[Path]) -> None:
    """Remove each of ``folders`` (deepest first) that is still empty; anything else stays."""
    for folder in folders:
        with suppress(OSError):
            folder.rmdir()


def replace_folder(finished: Path, target: Path) -> None:
    """Move the complete folder ``finished`` to ``target``, replacing what was there as a unit.

    Two renames in the same parent: readers see the old folder, briefly none, then the new one,
    never a mix. ``finished`` and the moved-aside old folder must be hidden siblings (names
    starting with '.') so readers ignore them.
    """
    old = target.with_name(f".{target.name}.old-{secrets.token_hex(4)}")
    with output_errors(target):
        if target.exists():
            os.replace(target, old)
        os.replace(finished, target)
    shutil.rmtree(old, ignore_errors=True)


def _os_error_behind(exc: BaseException) -> Optional[OSError]:
    """The OSError an exception was raised from or while handling (torch's zip writer wraps the
    handle's ``OSError(ENOSPC)`` of a full disk in a ``RuntimeError``), None if there is none."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def atomic_torch_save(obj: Any, path: Path | str) -> None:
    """``torch.save`` through :func:`atomic_write_with`: a write failure (disk full, ...) is one line."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            try:
                torch.save(obj, handle)
            except RuntimeError as exc:  # "PytorchStreamWriter failed writing file ..." around the OSError
                cause = _os_error_behind(exc)
                if cause is None and "writ" not in str(exc):
                    raise  # not a write failure: a bug to see in full
                raise cause or OSError(errno.EIO, " ".join(str(exc).split())[:200]) from exc

    atomic_write_with(Path(path), write)


def atomic_write_text(text: str, path: Path | str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as handle:
            handle.write(text)

    atomic_write_with(Path(path), write)


def atomic_write_json(obj: Any, path: Path | str) -> None:
    """Write ``obj`` as JSON; NaN or infinity raises ValueError (it would not be valid JSON)."""
    try:
        text = json.dumps(obj, indent=2, default=str, allow_nan=False)
    except ValueError as exc:
        raise ValueError(f"refusing to write {path}: it would hold NaN or infinity, which is not valid JSON") from exc
    atomic_write_text(text, path)


def atomic_savez(path: Path | str, **arrays: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)

    atomic_write_with(Path(path), write)


def load_checkpoint(path: Path | str, map_location: Any = "cpu") -> dict:
    """Load a torch checkpoint WEIGHTS-ONLY (tensors and plain Python values; never unpickles
    code, so a crafted file cannot run anything); a truncated, foreign or code-carrying file
    raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:200]
        raise CheckpointError(
            f"checkpoint {path} is corrupt, unreadable or holds more than weights ({type(exc).__name__}: "
            f"{reason}); delete it to retrain, or point to a file of tensors only (a state dict)"
        ) from exc


def check_finite_weights(state_dict: dict, source: str) -> None:
    """CheckpointError naming ``source`` and the first tensors holding NaN or infinity (weights
    that would score every image NaN)."""
    bad = [name for name, value in state_dict.items()
           if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        raise CheckpointError(f"{source} holds NaN or infinite weights ({', '.join(bad[:3])}"
                              f"{', ...' if len(bad) > 3 else ''}): it is damaged; delete it to retrain, or "
                              "point to another file")


def load_state_dict_strict(module: torch.nn.Module, state_dict: dict, source: str) -> None:
    """Strictly load ``state_dict``, turning key/shape mismatches and NaN/inf weights into a readable error."""
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
        state_dict = state_dict["state_dict"]
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    check_finite_weights(state_dict, source)
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        first_lines = " ".join(str(exc).split("\n")[:3])
        raise CheckpointError(
            f"{source} does not match the network ({first_lines[:400]}); check the network name, "
            "its width and the number of classes"
        ) from exc


def key_value_notes(notes: Sequence[str], option: str = "--note") -> Dict[str, str]:
    """``['k=v', ...]`` -> ``{'k': 'v'}``; a UserError naming ``option`` for an item without ``=``."""
    bad = [note for note in notes if "=" not in note]
    if bad:
        raise UserError(f"{option} takes KEY=VALUE, got {bad[0]!r}")
    return dict(note.split("=", 1) for note in notes)


def run_guarded(action: Callable[[], Optional[str]], verbose: bool = False) -> int:
    """Run a command-line action and return its exit status: logging goes to stderr above the
    progress bars; what ``action`` returns is printed; a UserError becomes ``error: <message>``
    on one line and status 2; Ctrl-C status 130 (finished work is kept on disk)."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        with logging_redirect_tqdm():  # log lines above the progress bars, not glued onto them
            output = action()
        if output:
            print(output)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished checkpoints and scores are kept; rerun the same command to resume",
              file=sys.stderr)
        return 130
    return 0
