"""Running trainers: atomic per-epoch checkpoints, exact resume, and a cache keyed by config hash.

Layout of one run folder (``<checkpoint_dir>/<name>-<hash>/``, by default
``<output_dir>/checkpoints``)::

    last.ckpt      everything to resume (epoch, trainer state incl. data-stream positions, RNG
                   states), rewritten atomically after each epoch
    final.ckpt     trained weights of every saved module, written once training ends
    history.json   per-epoch metrics (with the epoch's wall time, ``seconds``)
    config.json    the config sections the hash was computed from

A later run with the same config finds ``final.ckpt`` and trains nothing. Checkpoints hold only
tensors and plain Python values and are read with ``torch.load(weights_only=True)``: a file can
never run code.

Reproducibility: the hash includes the compute setup (:func:`compute_fingerprint`): on CPU the
number of threads changes the order of floating-point sums inside convolutions, and training
amplifies the last-bit differences into different models, so a model trained with 2 threads is
not silently reused by a 1-thread run (or a GPU run). Within one setup a run is deterministic
on CPU, and an interrupted run resumed from ``last.ckpt`` ends with bit-identical weights.

Across processes (``torchrun``, :mod:`moodcat_plugin.distributed`) every process trains; rank 0
alone writes the files above (and is the only one given ``trainer.run_dir`` for logs and
pictures), epoch metrics are averaged over processes, and all processes resume from the same
``last.ckpt``. The number of processes is part of the compute setup (sums are split differently).
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator

import torch
from tqdm import tqdm

from moodcat_plugin import distributed
from moodcat_plugin.config import config_hash, plain_data
from moodcat_plugin.errors import CheckpointError, UserError
from moodcat_plugin.utils import atomic_torch_save, atomic_write_json, check_finite_weights, load_checkpoint

log = logging.getLogger(__name__)
FINAL = "final.ckpt"
LAST = "last.ckpt"


class TrainingDivergedError(UserError):
    """A loss became NaN or infinite; nothing of the run is cached."""


class NonFiniteError(ArithmeticError):
    """Raised inside a training step that met NaN/inf (e.g. a generator output, before a library
    asserts on it); :func:`fit` turns it into a one-line :class:`TrainingDivergedError`."""


def divergence_hint(trainer, settings: str) -> str:
    """'lower the learning rate (<settings>.lr_g or ...)': the keys the trainer declares in
    ``learning_rate_keys`` (a trainer from outside, e.g. OpenOOD's, has ``lr``) under the dotted
    path ``settings`` of its config section."""
    keys = " or ".join(f"{settings}.{key}" for key in getattr(trainer, "learning_rate_keys", ("lr",)))
    return f"nothing was cached: lower the learning rate ({keys}, --set KEY=VALUE) and run again"


def compute_fingerprint(device: str | torch.device) -> Dict[str, Any]:
    """What besides the config decides a trained model: device type, CPU threads on CPU, and the
    number of processes when there are several (absent for one, as before it was recorded)."""
    device = torch.device(device)
    fingerprint = {"device": "cpu", "threads": torch.get_num_threads()} if device.type == "cpu" else {"device": device.type}
    if distributed.run_processes() > 1:
        fingerprint["processes"] = distributed.run_processes()
    return fingerprint


class AnyOf:
    """A neutral value with several spellings (e.g. ``amp``: ``off``, YAML's ``false``, None)."""

    def __init__(self, *values: Any):
        self.values = [plain_data(v) for v in values]


def _is_neutral(value: Any, neutral: Any) -> bool:
    if isinstance(neutral, AnyOf):
        return plain_data(value) in neutral.values
    return plain_data(value) == plain_data(neutral)


def run_identity(section: Any, neutral: Dict[str, Any]) -> dict:
    """``section`` without the settings that sit at their neutral value, for cache keys.

    ``neutral`` maps a setting added after runs were cached to the value that reproduces the
    behaviour from before it existed (a switch that is off; :class:`AnyOf` for several
    spellings): such a setting does not change which run a config names, so adding it does not
    orphan trained models."""
    return {k: v for k, v in dict(section).items() if not (k in neutral and _is_neutral(v, neutral[k]))}


def checkpoint_root(config) -> Path:
    """Where trained models go: ``checkpoint_dir``, by default ``<output_dir>/checkpoints``."""
    return Path(config.get("checkpoint_dir") or Path(config.output_dir) / "checkpoints")


def run_folder(config, name: str, *key_sections: Any) -> Path:
    """Folder for a training run identified by the hash of ``key_sections`` and the compute
    setup, under :func:`checkpoint_root`."""
    compute = compute_fingerprint(config.get("device", "cpu"))
    return checkpoint_root(config) / f"{name}-{config_hash(*key_sections, compute)}"


def rng_state(device: str | torch.device = "cpu") -> Dict[str, Any]:
    """Torch's global RNG states: CPU, and the training CUDA device's (``cuda_device``; under
    torchrun each process drives its own device, whose state rank 0 saves for all)."""
    state = {"cpu": torch.get_rng_state()}
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_initialized():
        state["cuda_device"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Dict[str, Any], device: str | torch.device = "cpu") -> None:
    torch.set_rng_state(state["cpu"])
    device = torch.device(device)
    if "cuda_device" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_device"], device)
    elif "cuda" in state and torch.cuda.is_available():  # checkpoints written before cuda_device
        torch.cuda.set_rng_state_all(state["cuda"])


def _check_finite(metrics: Dict[str, Any], run_dir: Path, epoch: int, hint: Callable[[], str]) -> None:
    bad = {k: v for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        raise TrainingDivergedError(
            f"training in {run_dir} diverged in epoch {epoch} ({', '.join(f'{k}={v}' for k, v in bad.items())}); "
            + hint())


@contextmanager
def stale_checkpoint_errors(path: Path) -> Iterator[None]:
    """A run-folder checkpoint of another layout or shape (an older version's, a plain state dict
    copied in, another network's) becomes one CheckpointError naming the file and the fix."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"{path} does not hold this run's training state ({type(exc).__name__}: {reason}); "
                              "it is stale or was copied in: delete it to retrain") from exc


def fit(trainer, run_dir: Path, progress: bool = True, key: Any = None, stop_after_epochs: int | None = None,
        description: str | None = None, stop_after_seconds: float | None = None,
        settings: str = "trainer") -> Dict:
    """Train ``trainer`` for ``trainer.num_epochs`` epochs in ``run_dir``, resuming if possible.

    Returns ``{'history': [...], 'resumed_from': epoch or 0, 'cached': bool}``. When
    ``final.ckpt`` exists the weights are loaded and nothing is trained. A non-finite metric
    stops training with :class:`TrainingDivergedError` before that epoch is saved.
    ``stop_after_epochs`` ends the call early (as an interruption would), for tests;
    ``stop_after_seconds`` at the first epoch end past that many seconds (time-boxed runs, which
    resume with the next call). An early end returns ``'interrupted': True``.
    ``description`` names the run on the progress bar (default: the folder name); ``settings`` is
    the dotted config path of the trainer's section, named by the divergence error's hint.
    """
    run_dir = Path(run_dir)
    modules = trainer.modules_to_save()
    if (run_dir / FINAL).is_file():
        with stale_checkpoint_errors(run_dir / FINAL):
            final = load_checkpoint(run_dir / FINAL)
            for name, module in modules.items():
                check_finite_weights(final["modules"][name], f"checkpoint {run_dir / FINAL} ('{name}')")
                module.load_state_dict(final["modules"][name])
        log.info("reusing trained weights from %s", run_dir / FINAL)
        return {"history": final.get("history", []), "resumed_from": final.get("epochs", 0), "cached": True}

    main = distributed.is_main()  # only rank 0 writes (every process when there is one)
    device = getattr(trainer, "device", "cpu")
    start_epoch, history = 0, []
    trainer.run_dir = run_dir if main else None  # trainers may write logs and sample grids here
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / LAST).is_file():
        with stale_checkpoint_errors(run_dir / LAST):
            last = load_checkpoint(run_dir / LAST)
            trainer.load_state_dict(last["trainer"])
            set_rng_state(last["rng"], device)
            start_epoch, history = int(last["epoch"]), list(last["history"])
        log.info("resuming %s from epoch %d", description or run_dir.name, start_epoch)
    if key is not None and main:
        atomic_write_json(key, run_dir / "config.json")

    epochs = tqdm(range(start_epoch, trainer.num_epochs), desc=f"training {description or run_dir.name}",
                  disable=not (progress and main), initial=start_epoch, total=trainer.num_epochs, unit="epoch")
    call_started = time.perf_counter()
    for epoch in epochs:
        started = time.perf_counter()
        hint = lambda: divergence_hint(trainer, settings)  # noqa: E731
        try:
            _, metrics = trainer.train_epoch(epoch + 1)
        except NonFiniteError as exc:
            raise TrainingDivergedError(f"training in {run_dir} diverged in epoch {epoch + 1} ({exc}); "
                                        + hint()) from None
        metrics = {k: float(v) if isinstance(v, (int, float)) else v for k, v in metrics.items()}
        metrics = distributed.average(metrics)
        metrics["seconds"] = round(time.perf_counter() - started, 2)
        _check_finite(metrics, run_dir, epoch + 1, hint)
        history.append(metrics)
        epochs.set_postfix(loss=f"{metrics['loss']:.4f}")
        if main:
            atomic_torch_save({"epoch": epoch + 1, "trainer": trainer.state_dict(), "rng": rng_state(device),
                               "history": history}, run_dir / LAST)
            atomic_write_json(history, run_dir / "history.json")
        out_of_epochs = stop_after_epochs is not None and epoch + 1 - start_epoch >= stop_after_epochs
        out_of_time = stop_after_seconds is not None and distributed.any_process(
            time.perf_counter() - call_started >= stop_after_seconds)
        if (out_of_epochs or out_of_time) and epoch + 1 < trainer.num_epochs:
            distributed.barrier()
            return {"history": history, "resumed_from": start_epoch, "cached": False, "interrupted": True}

    if main:
        atomic_torch_save({"modules": {name: m.state_dict() for name, m in modules.items()},
                           "history": history, "epochs": trainer.num_epochs}, run_dir / FINAL)
        (run_dir / LAST).unlink(missing_ok=True)
    distributed.barrier()  # the others return once final.ckpt is there
    return {"history": history, "resumed_from": start_epoch, "cached": False}
