"""Trainer contract (OpenOOD's BaseTrainer) and the classifier trainer registered as ``base``.

Contract: ``__init__(net, train_loader, config)`` (trainers with outlier data take
``(net, train_loader, train_unlabeled_loader, config)``), ``train_epoch(epoch_idx) ->
(net, metrics)`` with metrics holding at least ``epoch_idx`` and ``loss``. Our addition:
``state_dict()`` / ``load_state_dict()`` covering everything needed to resume exactly (weights,
optimiser, schedule, and the position of every resumable data stream, see
:class:`~moodcat_plugin.data.loaders.ShuffledBatches`), used by
:func:`moodcat_plugin.training.fit` for atomic checkpoints. Loaders without a position (a plain
``DataLoader``, as OpenOOD passes in) still train, but resume at the start of a fresh pass.
Each trainer declares the keys of its ``trainer:`` section in ``config_schema`` (checked at load,
see :mod:`moodcat_plugin.schema`). Trainers that train across processes under ``torchrun`` set
``supports_distributed`` (see :mod:`moodcat_plugin.distributed`); the others refuse to run there.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from tqdm import tqdm
import torch.nn.functional as F
from pydantic import ValidationInfo, field_validator

from moodcat_plugin import distributed
from moodcat_plugin.distributed import convert_batchnorm, data_parallel
from moodcat_plugin.errors import ConfigError
from moodcat_plugin.registry import register_trainer
from moodcat_plugin.schema import FLAG, TrainerConfig, integer, list_of, number, optional


class StepTrainerConfig(TrainerConfig):
    """A step trainer's section: one "epoch" is ``steps_per_epoch`` steps (null: one pass of the loader)."""

    steps_per_epoch: optional(integer(ge=1)) = None


#: Config type of Adam's (beta1, beta2).
ADAM_BETAS = list_of(number(ge=0, lt=1), length=2, expect="[beta1, beta2], each a number in [0, 1)")


class SGDConfig(TrainerConfig):
    """OpenOOD's classifier recipe (``configs/trainers/base.yml``): SGD, cosine decay per step."""

    lr: number(gt=0)
    momentum: number(ge=0, lt=1)
    nesterov: FLAG
    weight_decay: number(ge=0)

    @field_validator("nesterov")
    @classmethod
    def _nesterov_needs_momentum(cls, nesterov: bool, info: ValidationInfo) -> bool:
        if nesterov and info.data.get("momentum") == 0:
            raise ValueError("can only be true with momentum > 0 (torch's SGD)")
        return nesterov


class BaseTrainer:
    """Shared plumbing: device, number of epochs, per-step cosine learning-rate schedule."""

    uses_outlier_data = False
    config_schema = TrainerConfig
    #: Trains correctly across processes (sharded streams, global-batch draws, DDP, SyncBatchNorm).
    supports_distributed = False
    #: The section's learning-rate keys, named by the hint when training diverges.
    learning_rate_keys = ("lr",)

    def __init__(self, net: nn.Module, train_loader, config):
        self.net = net
        self.train_loader = train_loader
        self.config = config
        self.device = torch.device(config.device)
        self.num_epochs = int(config.trainer.num_epochs)
        check_sharded(train_loader)

    def modules_to_save(self) -> dict:
        """Named modules whose weights form the trained result (default: the network)."""
        return {"net": self.net}

    def optimizers(self) -> dict:
        return {}

    def data_streams(self) -> dict:
        """Named batch sources whose position is part of the checkpoint (those that have one)."""
        return {"train": self.train_loader}

    def state_dict(self) -> dict:
        state = {name: module.state_dict() for name, module in self.modules_to_save().items()}
        state.update({name: opt.state_dict() for name, opt in self.optimizers().items()})
        state["data"] = {name: stream.state_dict() for name, stream in self.data_streams().items()
                         if hasattr(stream, "state_dict")}
        return state

    def load_state_dict(self, state: dict) -> None:
        for name, obj in {**self.modules_to_save(), **self.optimizers()}.items():
            obj.load_state_dict(state[name])
        for name, stream in self.data_streams().items():
            if name in state.get("data", {}):
                stream.load_state_dict(state["data"][name])

    def progress(self, iterable, desc: str, total: int | None = None):
        """Per-step progress bar (hidden when ``config.progress`` is false)."""
        return tqdm(iterable, desc=desc, total=total, leave=False, disable=not self.config.get("progress", True))

    def steps_per_epoch(self) -> int:
        return max(1, len(self.train_loader))

    def train_epoch(self, epoch_idx: int):
        raise NotImplementedError


def check_sharded(loader) -> None:
    """Across N processes a training stream must be this process's shard (ShuffledBatches made
    with ``shard=distributed.shard()``); anything else would train every process on the same data."""
    world = distributed.world_size()
    if world > 1 and getattr(loader, "world", 1) != world:
        raise ConfigError(f"training across {world} processes needs each process's shard of every training stream "
                          f"(make_loader(..., shard=distributed.shard())), got {type(loader).__name__}")


def endless(loader):
    """An endless batch source over ``loader``: our resumable ShuffledBatches as it is, any other
    iterable (e.g. OpenOOD's DataLoader) cycled by :class:`CyclingBatches`."""
    return loader if hasattr(loader, "start_pass") else CyclingBatches(loader)


class CyclingBatches:
    """Endless batches from any loader: a new (reshuffled) pass starts whenever one runs out.
    Has no resumable position (see :class:`~moodcat_plugin.data.loaders.ShuffledBatches`)."""

    def __init__(self, loader):
        self.loader = loader
        self._iterator = None

    def start_pass(self, pass_index: int = 0) -> None:
        """Start a fresh pass (the index is meaningless for a plain loader)."""
        self._iterator = iter(self.loader)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._iterator is None:
            self.start_pass()
        try:
            return next(self._iterator)
        except StopIteration:
            self.start_pass()
            return next(self._iterator)

    next = __next__


class StepTrainer(BaseTrainer):
    """A trainer whose "epoch" is ``config.trainer.steps_per_epoch`` steps over an endlessly
    cycled loader (GAN and Cb training); the global step is part of the checkpoint."""

    config_schema = StepTrainerConfig

    def __init__(self, net, train_loader, config):
        super().__init__(net, train_loader, config)
        self.step = 0
        self.batches = endless(train_loader)

    def data_streams(self) -> dict:
        return {"train": self.batches}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.step = int(state["step"])

    def steps_per_epoch(self) -> int:
        steps = self.config.trainer.get("steps_per_epoch")
        return int(steps) if steps else max(1, len(self.train_loader))


def sgd_with_cosine(params, trainer_cfg, total_steps: int):
    """OpenOOD's classifier optimiser: SGD (nesterov) + cosine decay stepped every iteration."""
    optimizer = torch.optim.SGD(
        params, lr=trainer_cfg.lr, momentum=trainer_cfg.momentum,
        nesterov=trainer_cfg.nesterov, weight_decay=trainer_cfg.weight_decay,
    )
    min_ratio = 1e-6 / trainer_cfg.lr

    def cosine(step: int) -> float:
        progress = min(step, total_steps) / max(1, total_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)


def batch_to(batch: dict, device: torch.device):
    return batch["data"].to(device, non_blocking=True), batch["label"].to(device, non_blocking=True)


@register_trainer("base")
class ClassifierTrainer(BaseTrainer):
    """Plain cross-entropy classifier training (OpenOOD's default recipe). Across processes: the
    network's BatchNorms synchronised over the global batch, gradients averaged by DDP."""

    config_schema = SGDConfig
    supports_distributed = True

    def __init__(self, net, train_loader, config):
        super().__init__(net, train_loader, config)
        total = self.num_epochs * self.steps_per_epoch()
        self.optimizer, self.scheduler = sgd_with_cosine(net.parameters(), config.trainer, total)
        self.model = data_parallel(convert_batchnorm(net, self.device), self.device)  # net itself in one process

    def optimizers(self) -> dict:
        return {"optimizer": self.optimizer, "scheduler": self.scheduler}

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, batch: dict) -> torch.Tensor:
        return F.cross_entropy(logits, labels)

    def train_epoch(self, epoch_idx: int):
        self.net.train()
        total_loss, total_seen = 0.0, 0
        for batch in self.progress(self.train_loader, f"epoch {epoch_idx}"):
            data, labels = batch_to(batch, self.device)
            loss = self.loss(self.model(data), labels, batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            total_loss += loss.item() * len(labels)
            total_seen += len(labels)
        return self.net, {"epoch_idx": epoch_idx, "loss": total_loss / max(1, total_seen)}
