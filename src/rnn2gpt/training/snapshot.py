"""What a run saves besides weights and optimizer, so that it can resume exactly, and how it is
read back: the counters, the losses not yet logged, the RNG states, the state the task carries
between batches, and for LoRA runs which layers carry adapters.

``trainer_state.json`` holds the JSON part; ``trainer_state.safetensors`` the tensors (RNG
states, the carried state under ``carried.*``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ..checkpoint import (
    Checkpoint,
    capture_rng_state,
    restore_rng_state,
    state_from_tensors,
    state_to_tensors,
)
from ..config import TrainConfig
from ..models.base import count_parameters
from .distributed import DistContext
from .progress import Progress

logger = logging.getLogger(__name__)


def snapshot(
    progress: Progress,
    pending_losses: list[float],
    carried: Any,
    train: TrainConfig,
    world_size: int,
    model: nn.Module,
    lora_layers: list[str],
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(``trainer_state.json`` content, tensors) of a run at ``progress``."""
    rng_json, tensors = capture_rng_state()
    if carried is not None:
        tensors.update(state_to_tensors(carried, prefix="carried"))
    state: dict[str, Any] = {
        "progress": progress.__dict__,
        "pending_losses": pending_losses,
        "rng": rng_json,
        "has_carried_state": carried is not None,
        "world_size": world_size,
        "seed": train.seed,
        "step": progress.step,
        "tokens": progress.tokens,
        "best_val_loss": progress.best_val_loss,
        "trainable_parameters": count_parameters(model, trainable_only=True),
    }
    if lora_layers:
        # model.safetensors holds the base weights; the adapters are in adapter.safetensors.
        state["lora"] = {
            "adapter": True,
            "rank": train.lora_rank,
            "alpha": train.lora_alpha,
            "layers": lora_layers,
        }
    return state, tensors


def restore(
    ckpt: Checkpoint,
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    batch_size: int,
    ctx: DistContext,
) -> tuple[Progress, list[torch.Tensor], Any]:
    """Load the optimizer and RNG states of ``ckpt``; -> (counters, pending losses, carried
    state or None)."""
    ckpt.load_optimizer_state(optimizer)
    state = ckpt.trainer_state or {}
    progress = Progress.from_dict(state.get("progress", {}))
    saved_world = state.get("world_size", 1)
    if saved_world != ctx.world_size:
        logger.warning(
            "resuming a %d-process run with %d processes: batches will differ from the "
            "original run",
            saved_world,
            ctx.world_size,
        )
    restore_rng_state(state.get("rng", {}), ckpt.tensors)
    pending = [
        torch.tensor(v, dtype=torch.float32, device=ctx.device)
        for v in state.get("pending_losses", [])
    ]
    carried = None
    # Only rank 0's state is saved; other ranks of a DDP run restart their lanes' state.
    if state.get("has_carried_state") and ctx.is_main:
        template = model.new_state(batch_size)
        carried = state_from_tensors(template, ckpt.tensors, prefix="carried")
    logger.info("resumed from %s at step %d", ckpt.directory, progress.step)
    return progress, pending, carried


__all__ = ["restore", "snapshot"]
