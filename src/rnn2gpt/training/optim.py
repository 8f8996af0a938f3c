"""The optimizer and the learning-rate schedule.

Weight decay goes to every parameter with two or more dimensions (the weight matrices, and the
token embedding, which the output layer usually shares), never to biases or norm gains: decaying
a bias or a LayerNorm scale toward zero only fights the normalisation. This is nanoGPT's rule.

The schedule is a linear warmup over ``train.warmup_steps`` optimizer steps, then a cosine from
``lr`` down to ``lr * min_lr_ratio`` (or a constant ``lr`` with ``train.schedule=constant``). The
cosine is driven by a *progress fraction* in [0, 1], the furthest along of the budgets that are
set: steps after warmup / (max_steps - warmup), elapsed / max_time and tokens / max_tokens. The
learning rate is therefore a pure function of (step, elapsed, tokens), which is what makes an
exact resume need nothing but those three numbers.
"""

from __future__ import annotations

import inspect
import logging
import math

import torch
from torch import nn

from ..config import TrainConfig
from ..errors import ConfigError
from .native_adamw import NativeAdamW

logger = logging.getLogger(__name__)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: parameters with ndim >= 2 (decayed) and the rest (not decayed).

    Tied parameters appear once (``named_parameters`` skips duplicates).
    """
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.dim() >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _supports_fused(device: torch.device) -> bool:
    """Whether ``AdamW(fused=True)`` exists in this PyTorch and runs on ``device``."""
    if "fused" not in inspect.signature(torch.optim.AdamW).parameters:
        return False  # pragma: no cover - very old PyTorch
    try:
        probe = nn.Parameter(torch.zeros(1, device=device))
        NativeAdamW([probe], fused=True)  # PyTorch's checks, without importing torch._dynamo
    except (RuntimeError, ValueError, TypeError):
        return False
    return True


def build_optimizer(
    model: nn.Module, config: TrainConfig, device: torch.device | str = "cpu"
) -> torch.optim.Optimizer:
    """AdamW (:class:`NativeAdamW`; PyTorch's fused kernel where its C step does not run) or plain
    SGD over :func:`param_groups`.

    ``config.lr`` is the starting value only; :func:`set_lr` drives it each step.

    Raises:
        ConfigError: SGD with ``lr * weight_decay >= 1`` (coupled weight decay would flip the
            sign of every weight at each step).
    """
    device = torch.device(device)
    groups = param_groups(model, config.weight_decay)
    if config.optimizer == "sgd":
        # SGD's weight decay is coupled (scaled by lr): with the large learning rates SGD uses
        # (word_language_model's 20) a decay meant for AdamW would wipe the weights out.
        if config.lr * config.weight_decay >= 1.0:
            raise ConfigError(
                f"train.optimizer=sgd with lr={config.lr:g} and weight_decay={config.weight_decay:g} "
                "would shrink every weight past zero at each step; set train.weight_decay=0 "
                "(or much smaller) for SGD"
            )
        return torch.optim.SGD(groups, lr=config.lr)
    if config.optimizer != "adamw":
        raise ConfigError(f"train.optimizer must be adamw or sgd (got {config.optimizer!r})")
    extra = {"fused": True} if _supports_fused(device) else {}
    logger.debug("AdamW on %s%s", device, " (fused)" if extra else "")
    # NativeAdamW is torch.optim.AdamW, with its step (clipping included) in C where it can.
    return NativeAdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), **extra)


def progress_fraction(
    step: int, elapsed: float, tokens: int, config: TrainConfig, warmup_steps: int | None = None
) -> float:
    """How far through its budget the run is, in [0, 1]: the maximum over the budgets set.

    The step budget counts from the end of warmup (``config.warmup_steps`` unless
    ``warmup_steps`` is given), so a step-only run reaches the cosine's start exactly when warmup
    ends and its floor exactly at ``max_steps``.
    """
    warmup = config.warmup_steps if warmup_steps is None else warmup_steps
    fractions = [0.0]
    if config.max_steps > 0:
        span = config.max_steps - warmup
        fractions.append((step - warmup) / span if span > 0 else 1.0)
    if config.max_time > 0:
        fractions.append(elapsed / config.max_time)
    if config.max_tokens > 0:
        fractions.append(tokens / config.max_tokens)
    return min(max(fractions), 1.0)


def lr_at(step: int, progress: float, config: TrainConfig) -> float:
    """The learning rate for optimizer step ``step`` (0-based) at budget ``progress``.

    Warmup: ``lr * (step + 1) / warmup_steps`` for the first ``warmup_steps`` steps. Then
    ``constant``: ``lr``; ``cosine``: ``min_lr + (lr - min_lr) * (1 + cos(pi * progress)) / 2``.
    """
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return config.lr
    min_lr = config.lr * config.min_lr_ratio
    progress = min(max(progress, 0.0), 1.0)
    return min_lr + (config.lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = lr


__all__ = ["build_optimizer", "lr_at", "param_groups", "progress_fraction", "set_lr"]
