"""Training across processes with torch.distributed (``torchrun``); one process is the default.

``torchrun --nproc_per_node=N scripts/run_benchmark.py ...`` (multi-node: torchrun's usual
``--nnodes/--node_rank/--rdzv_*`` flags) starts N processes with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set. :func:`start` joins them into one process
group: backend ``nccl`` on CUDA (process ``LOCAL_RANK`` drives ``cuda:LOCAL_RANK``), ``gloo`` on
CPU. Without torchrun nothing here does anything and every function answers for one process.

What a run with N processes does (classifier, MOODCAT generator and Cb; other trainers refuse):

* batch: a section's ``batch_size`` is the GLOBAL batch; each process trains on
  ``batch_size / N`` images per step (N must divide it).
* data: every training stream is sharded (:class:`~moodcat_plugin.data.loaders.ShuffledBatches`
  with ``shard=(rank, N)``): batch k of pass p is the one-process batch k of pass p, split into N
  consecutive slices, one per rank; positions resume exactly as in one process.
* random draws per sample (masks, latent noise, CutMix boxes, mismatched labels) are drawn for the
  global batch by every process, which keeps its own rows (:func:`local_rows`). All processes
  seed alike and draw alike, so their RNG states stay equal: per-step decisions (CutMix or not)
  agree, and N processes draw exactly what one process with the global batch draws.
* BatchNorm: statistics over the global batch, as one process computes them (torch's
  SyncBatchNorm on GPUs, :class:`CpuSyncBatchNorm` on CPU, see :func:`convert_batchnorm`).
* gradients: ``DistributedDataParallel`` averages them over processes, which is the gradient of
  the global batch's mean loss. A loss that is not a mean over samples (the GAN's ``-log`` of the
  batch-mean SSIM) takes its batch statistic over the global batch (:func:`global_mean`). Differences from one process are rounding only (sums in another
  order), see ``tests/test_distributed.py`` for the measured size.
* files: rank 0 alone writes checkpoints, histories, loss logs, sample grids, scores and
  leaderboards; the others read the same checkpoint folder (it must be shared by every node;
  checked at startup by :func:`check_shared_folder`).
* evaluation: once every method is trained, the processes leave the group and rank 0 evaluates
  alone with the one-process evaluator, so the leaderboard is the one-process leaderboard of the
  trained models.
"""
from __future__ import annotations

import datetime
import inspect
import os
import secrets
import warnings
from pathlib import Path
from typing import Dict, Tuple

import torch
import torch.distributed as dist
from torch import nn

from moodcat_plugin.errors import ConfigError, UserError

#: Collectives wait this long (rank 0 may write a large checkpoint while the others wait).
TIMEOUT = datetime.timedelta(minutes=60)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    """This process's rank: the group's, else torchrun's ``RANK`` (still known after :func:`finish`)."""
    return dist.get_rank() if is_initialized() else int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """True in the process that writes files (rank 0, or the only process)."""
    return rank() == 0


def run_processes() -> int:
    """How many processes this run trains with: the group's size, else torchrun's ``WORLD_SIZE``
    (still known after :func:`finish`, so cache keys stay those of the training)."""
    return world_size() if is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def shard() -> Tuple[int, int]:
    """(rank, number of processes) of the live group; (0, 1) without one."""
    return (dist.get_rank(), dist.get_world_size()) if is_initialized() else (0, 1)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def start(device: torch.device) -> torch.device:
    """Join torchrun's process group (once) and return this process's device: ``cuda:LOCAL_RANK``
    for CUDA, else ``device``. Without torchrun: ``device`` unchanged."""
    device = torch.device(device)
    if not launched_by_torchrun():
        return device
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ConfigError(f"torchrun started process LOCAL_RANK={local}, but this node has only "
                              f"{torch.cuda.device_count()} CUDA device(s); use --nproc_per_node <= that")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not is_initialized():
        dist.init_process_group(backend_for(device), timeout=TIMEOUT)
    return device


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def finish() -> None:
    """Leave the process group (after a barrier); a no-op in one process."""
    if is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def average(metrics: Dict[str, float]) -> Dict[str, float]:
    """Numeric metrics averaged over processes (each computed on its shard); others as they are."""
    if world_size() == 1:
        return metrics
    keys = [k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        values = values.cuda()
    dist.all_reduce(values)
    return {**metrics, **dict(zip(keys, (values / world_size()).tolist()))}


def any_process(flag: bool) -> bool:
    """True when ``flag`` is true in any process (decisions taken by clocks must agree)."""
    if world_size() == 1:
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0])
    if dist.get_backend() == "nccl":
        value = value.cuda()
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def check_shared_folder(folder: Path) -> None:
    """Every process must see the files rank 0 writes into ``folder`` (checkpoints are read by all)."""
    if world_size() == 1:
        return
    token = [secrets.token_hex(8) if is_main() else None]
    dist.broadcast_object_list(token, src=0)
    marker = Path(folder) / f".shared-check-{token[0]}"
    if is_main():
        marker.write_text(token[0])
    dist.barrier()
    seen = marker.is_file()
    dist.barrier()
    if is_main():
        marker.unlink(missing_ok=True)
    if not seen:
        raise UserError(f"process {rank()} cannot see {folder}, where rank 0 writes checkpoints: put --output-dir "
                        "(or checkpoint_dir) on a file system shared by every node")


def global_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over the global batch of per-sample ``values`` (first dim = this rank's samples; equal
    counts on every rank), differentiable; ``values.mean(dim=0)`` in one process. For batch
    statistics that enter a loss non-linearly (the GAN's ``-log`` of the batch-mean SSIM)."""
    if world_size() == 1:
        return values.mean(dim=0)
    return _SumOverProcesses.apply(values.sum(dim=0)) / (values.shape[0] * world_size())


def local_rows(draw: torch.Tensor, shard: Tuple[int, int]) -> torch.Tensor:
    """This rank's rows of ``draw``, a tensor drawn for the global batch (first dim = N x local)."""
    rank_, world = shard
    if world == 1:
        return draw
    local = draw.shape[0] // world
    return draw[rank_ * local:(rank_ + 1) * local]


# -- BatchNorm over the global batch ---------------------------------------------------------------
class SyncBatchNorm(nn.SyncBatchNorm):
    """torch's ``SyncBatchNorm`` (GPUs) whose forward accepts an ignored condition, so it also
    replaces :class:`~moodcat_plugin.networks.moodcat_layers.PlainBatchNorm2d`."""

    def forward(self, x: torch.Tensor, cond=None) -> torch.Tensor:  # noqa: ARG002 - cond kept for the signature
        return super().forward(x)


class _SumOverProcesses(torch.autograd.Function):
    """Sum of a tensor over processes; its gradient is the sum of the incoming gradients (every
    process's output depends on every process's input)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d over the global batch on CPU (gloo), where torch's SyncBatchNorm does not run.

    In training mode with a process group: per-channel sums and squared deviations summed over
    processes (:class:`_SumOverProcesses`, differentiable); the global
    mean and biased variance normalise, and the running statistics get the unbiased variance, as
    ``BatchNorm2d`` over the global batch does. Otherwise (eval mode, one process) plain
    BatchNorm2d. ``forward(x, cond=None)``: ``cond`` is ignored, as in :class:`SyncBatchNorm`.
    """

    def forward(self, x: torch.Tensor, cond=None) -> torch.Tensor:  # noqa: ARG002 - cond kept for the signature
        if self.training and is_initialized():
            return self._global_batch_forward(x)
        return super().forward(x)

    def _global_batch_forward(self, x: torch.Tensor) -> torch.Tensor:
        all_reduce = _SumOverProcesses.apply
        self._check_input_dim(x)
        shape = (1, -1, 1, 1)
        count = x.numel() / x.shape[1] * world_size()
        mean = all_reduce(x.sum((0, 2, 3))) / count
        centred = x - mean.view(shape)
        var = all_reduce(centred.pow(2).sum((0, 2, 3))) / count
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(var.detach() * count / max(count - 1, 1), factor)
        return out


def convert_batchnorm(module: nn.Module, device: torch.device | str) -> nn.Module:
    """Replace every BatchNorm2d inside ``module`` (in place) by a BatchNorm over the global batch
    (:class:`SyncBatchNorm` on GPUs, :class:`CpuSyncBatchNorm` on CPU) sharing its parameters and
    buffers, so state-dict keys are unchanged; returns ``module``. No-op in one process."""
    if world_size() == 1:
        return module
    synced_class = CpuSyncBatchNorm if torch.device(device).type == "cpu" else SyncBatchNorm
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, (SyncBatchNorm, CpuSyncBatchNorm)):
            synced = synced_class(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            if child.affine:
                synced.weight, synced.bias = child.weight, child.bias
            if child.track_running_stats:
                synced.running_mean, synced.running_var = child.running_mean, child.running_var
                synced.num_batches_tracked = child.num_batches_tracked
            synced.train(child.training)
            setattr(module, name, synced)
        else:
            convert_batchnorm(child, device)
    return module


def data_parallel(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` wrapped in DistributedDataParallel under torchrun (itself in one process).

    Buffers are not broadcast at each forward (``broadcast_buffers=False``): BatchNorm statistics
    are synchronised by :class:`SyncBatchNorm` and spectral-norm vectors are computed alike by
    every process from the same weights.
    """
    if world_size() == 1:
        return module
    # channels_last convolutions hand DDP gradients in another stride order than its buckets; it
    # copies them (correct, a little slower) and warns once per process: not for users to act on
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    device = torch.device(device)
    no_buffer_sync = ({"forward_sync_buffers": False}
                      if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters
                      else {"broadcast_buffers": False})  # torch < 2.14
    return nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                               **no_buffer_sync)
