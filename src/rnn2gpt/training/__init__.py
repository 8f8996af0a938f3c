"""Training: one trainer for every model, the optimizer and schedule, checkpoints, DDP.

- :func:`train` (trainer.py) -> :class:`TrainResult`
- :func:`save_checkpoint`, :func:`load_checkpoint` -> :class:`Checkpoint` (checkpoint.py)
- :func:`build_optimizer`, :func:`lr_at`, :func:`progress_fraction` (optim.py)
- :func:`resolve_precision`, :func:`autocast` (precision.py)
"""

from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .optim import build_optimizer, lr_at, param_groups, progress_fraction
from .precision import autocast, resolve_precision
from .trainer import TrainResult, train

__all__ = [
    "Checkpoint",
    "TrainResult",
    "autocast",
    "build_optimizer",
    "load_checkpoint",
    "lr_at",
    "param_groups",
    "progress_fraction",
    "resolve_precision",
    "save_checkpoint",
    "train",
]
