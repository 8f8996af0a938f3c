"""Multi-process training with PyTorch's own engine: ``torchrun`` + DistributedDataParallel.

Under ``torchrun --nproc_per_node N -m rnn2gpt train ...`` the environment carries ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK``; :func:`setup_distributed` then joins the process group (NCCL on
GPUs, gloo on CPUs) and every helper here becomes a collective. In a single process they all
reduce to no-ops, so the trainer calls them unconditionally.

The trainer's rules under DDP: every rank draws its own batches (rank and world size go to the
batchers), training metrics are averaged over ranks, decisions that steer the loop (stop now?
was this the best evaluation?) are agreed collectively so no rank waits forever in an
all-reduce, and only rank 0 writes checkpoints, logs and plots.
"""

from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: its rank among ``world_size`` processes and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # True when setup_distributed created the process group

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def default_device(local_rank: int = 0) -> torch.device:
    """The GPU of this local rank when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return torch.device("cpu")


def setup_distributed() -> DistContext:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world_size <= 1:
        return DistContext(device=default_device())
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    device = default_device(local_rank)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
        owns = True
    logger.info(
        "distributed: rank %d of %d on %s (%s)", rank, world_size, device, dist.get_backend()
    )
    return DistContext(rank, world_size, local_rank, device, owns)


def cleanup_distributed(ctx: DistContext) -> None:
    """Leave the process group if :func:`setup_distributed` joined it.

    Objects that still hold the group in reference cycles (a DDP model's reducer) are collected
    first, so that the group's last reference goes, and gloo joins its worker threads, here: not
    during interpreter shutdown, where a gloo thread still joinable aborts the process
    ("terminate called without an active exception"; pytorch/pytorch#179291). The caller drops
    its own references (the run's parts) before calling this.
    """
    if ctx.owns_group and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def wrap_model(model: nn.Module, ctx: DistContext) -> nn.Module:
    """DDP around ``model`` when distributed; ``model`` itself otherwise."""
    if not ctx.enabled:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def mean_over_ranks(value: float, ctx: DistContext) -> float:
    """The mean of ``value`` over all ranks (``value`` itself in one process)."""
    if not ctx.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.item() / ctx.world_size


def any_rank(flags: list[bool], ctx: DistContext) -> list[bool]:
    """For each flag: True when it is True on at least one rank (one collective for all)."""
    if not ctx.enabled:
        return list(flags)
    tensor = torch.tensor([1 if f else 0 for f in flags], dtype=torch.int32, device=ctx.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(v) for v in tensor.tolist()]


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op in one process)."""
    if ctx.enabled:
        dist.barrier()


__all__ = [
    "DistContext",
    "any_rank",
    "barrier",
    "cleanup_distributed",
    "default_device",
    "mean_over_ranks",
    "setup_distributed",
    "wrap_model",
]
