"""Training: one trainer for every model and task, the optimizer and schedule, precision, DDP.

- :func:`train` (trainer.py) -> :class:`TrainResult`; the run's set-up is in setup.py, its
  counters in progress.py, its log in log.py
- :func:`build_optimizer`, :func:`lr_at`, :func:`progress_fraction` (optim.py)
- :func:`resolve_precision`, :func:`autocast` (precision.py); the start-of-run plan (plan.py)
- DDP helpers (distributed.py)
- :func:`~rnn2gpt.training.memory.hold_freed_memory` (memory.py): a CPU run keeps the memory
  each step frees for the next (no page faults)

What is trained is a :class:`~rnn2gpt.tasks.Task`; checkpoints come from :mod:`rnn2gpt.checkpoint`.
May import: ``errors``, ``config``, ``hardware``, ``tokenizers``, ``models``, ``data``,
``checkpoint``, ``tasks``, ``evaluation``.
"""

from .optim import build_optimizer, lr_at, param_groups, progress_fraction
from .precision import autocast, resolve_precision
from .trainer import TrainResult, train

__all__ = [
    "TrainResult",
    "autocast",
    "build_optimizer",
    "lr_at",
    "param_groups",
    "progress_fraction",
    "resolve_precision",
    "train",
]
