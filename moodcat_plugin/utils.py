"""Small shared helpers: devices, seeding, atomic file writes, checkpoint loading."""
from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from moodcat_plugin.errors import CheckpointError, ConfigError


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
    """Apply ``num_threads`` (``'auto'`` = torch's default, or an int >= 1); return the count."""
    threads = DEFAULT_THREADS if setting == "auto" else int(setting)
    if threads < 1:
        raise ConfigError(f"num_threads must be 'auto' or an integer >= 1, got {setting!r}")
    torch.set_num_threads(threads)
    return threads


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def atomic_write_with(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_torch_save(obj: Any, path: Path | str) -> None:
    atomic_write_with(Path(path), lambda tmp: torch.save(obj, tmp))


def atomic_write_text(text: str, path: Path | str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as handle:
            handle.write(text)

    atomic_write_with(Path(path), write)


def atomic_write_json(obj: Any, path: Path | str) -> None:
    atomic_write_text(json.dumps(obj, indent=2, default=str), path)


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


def load_state_dict_strict(module: torch.nn.Module, state_dict: dict, source: str) -> None:
    """Strictly load ``state_dict``, turning key/shape mismatches into a readable error."""
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
        state_dict = state_dict["state_dict"]
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        first_lines = " ".join(str(exc).split("\n")[:3])
        raise CheckpointError(
            f"{source} does not match the network ({first_lines[:400]}); check the network name, "
            "its width and the number of classes"
        ) from exc
