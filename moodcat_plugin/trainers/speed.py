"""Training-speed options of the MOODCAT trainers (``gan`` and ``cb`` sections).

Keys (defaults = the original computation, bit for bit; the ``gpu`` profile of
``configs/postprocessors/moodcat.yml`` turns them on):

* ``amp: off | bf16 | fp16`` -- network forwards under ``torch.autocast`` in that dtype; losses
  are computed in fp32 from fp32 copies of the outputs. ``fp16`` scales the losses with one
  ``torch.amp.GradScaler`` per trainer (its state is part of the checkpoint). YAML reads a bare
  ``off`` as ``false``; both mean no autocast. bf16 needs no scaler and runs on CPU too, but is
  only fast where the processor has bf16 units (GPUs; CPUs with AVX512-BF16/AMX).
* ``fused_optimizer: true`` -- Adam's fused kernel (``torch.optim.Adam(fused=True)``, CPU and CUDA):
  one kernel per step instead of a few per parameter; the same update up to rounding.
* the GAN trainer's ``concat_d_forward`` (see :mod:`moodcat_plugin.trainers.moodcat_gan_trainer`).

Every option changes the last bits of the arithmetic (or more, for autocast), so each is part of
the run's cache key -- but only when it differs from its default: trainers list them in
``neutral_settings`` (:data:`SPEED_NEUTRAL`, see :func:`moodcat_plugin.training.run_identity`), so models trained before these keys existed keep their cache folders.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Annotated, Any, Dict, Iterable, Literal, Mapping, Optional, Union

import torch

from moodcat_plugin.schema import Expect
from moodcat_plugin.training import AnyOf

AMP_MODES = ("off", "bf16", "fp16")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: Config type of ``amp`` (``false`` is YAML's reading of a bare ``off``).
AMP = Annotated[Union[Literal[AMP_MODES], Literal[False]], Expect("off, bf16 or fp16")]
#: Speed options every MOODCAT trainer reads, with their neutral defaults.
SPEED_DEFAULTS: Dict[str, Any] = {"amp": "off", "fused_optimizer": False}
#: The same options as trainers' ``neutral_settings`` (left out of cache keys at these values).
SPEED_NEUTRAL: Dict[str, Any] = {"amp": AnyOf("off", False, None), "fused_optimizer": False}


def amp_mode(value: Any) -> str:
    """``'off'``, ``'bf16'`` or ``'fp16'`` from a config value (``False``/None mean off)."""
    return "off" if value in (False, None, "off") else str(value)


class MixedPrecision:
    """Autocast, loss scaling and optimiser steps for one trainer.

    ``autocast()`` wraps network forwards; ``backward(loss)``, ``step(optimizer)`` and, once per
    training step after every optimiser stepped, ``update()`` replace ``loss.backward()``,
    ``optimizer.step()`` (they scale and unscale for fp16 and are plain calls otherwise).
    """

    def __init__(self, mode: Any, device: torch.device | str):
        self.mode = amp_mode(mode)
        self.device = torch.device(device)
        self.dtype = AMP_DTYPES.get(self.mode)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.mode == "fp16" else None

    def autocast(self):
        return nullcontext() if self.dtype is None else torch.autocast(self.device.type, dtype=self.dtype)

    def full(self, tensor: torch.Tensor) -> torch.Tensor:
        """A network output back in fp32 for the losses (autocast outputs are bf16/fp16); without
        autocast the tensor itself, whatever its dtype."""
        return tensor if self.dtype is None else tensor.float()

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)

    def update(self) -> None:
        if self.scaler is not None:
            self.scaler.update()

    def state_dict(self) -> Optional[dict]:
        return None if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: Optional[dict]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def adam(params: Iterable[torch.nn.Parameter], lr: float, betas, fused: bool = False) -> torch.optim.Adam:
    """``torch.optim.Adam``; ``fused`` picks its single-kernel implementation."""
    return torch.optim.Adam(params, lr=float(lr), betas=tuple(float(b) for b in betas), **({"fused": True} if fused else {}))


class GradScalerCheckpoint:
    """Mixin for trainers with a :class:`MixedPrecision` ``self.precision``: the fp16 loss scaler's
    state joins the trainer checkpoint (nothing is added without a scaler), so resume is exact."""

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.precision.scaler is not None:
            state["grad_scaler"] = self.precision.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.precision.load_state_dict(state.get("grad_scaler"))
