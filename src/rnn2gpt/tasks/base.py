"""The Task protocol: everything the trainer knows about what it trains, and the registry of tasks.

The trainer (:mod:`rnn2gpt.training`) runs one loop for every model and every task: steps,
accumulation, clipping, schedule, precision, evaluation cadence, checkpoints, resume, early
stopping. What is trained comes from a :class:`Task`:

- ``batch(index)``: the index-th training micro-batch, a function of (seed, rank, index) only,
  so a resumed run replays the batches an uninterrupted one would have seen;
- ``loss(model, batch, state)``: the mean loss to backpropagate, the target tokens it covers, and
  the state to carry into the next batch (a recurrent language model's hidden state under
  truncated backpropagation through time; None when nothing is carried);
- ``evaluate(model, split, max_batches)``: the mean loss and the tokens scored on ``"val"`` or
  ``"test"`` (per rank; the trainer averages over ranks), and ``score(loss, tokens, split)``: the
  metric dict of a mean loss (loss, perplexity, bits per token and per character);
- ``decode_metrics(model)``: metrics of decoded validation outputs (BLEU, ROUGE), when early
  stopping follows one;
- ``has_split(split)``: whether there is data to evaluate (``"test"`` may have none);
- ``check()``: everything the task needs, checked before the first step (extras installed, files
  readable, settings that fit), so a run never dies at its first evaluation.

Tasks are built by name (``train.task``) from the registry below; a builder receives the run's
config, its corpus, tokenizers and model (the model contract only: ``max_context``,
``carries_state``), and a :class:`TaskContext`.

May import: ``errors``, ``config``, ``hardware``, ``tokenizers``, ``models``, ``data``,
``checkpoint``, ``generation``, ``evaluation``. Never ``training``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from ..config import DataConfig, RunConfig
from ..errors import ConfigError


@runtime_checkable
class Task(Protocol):
    """What the trainer trains (see the module docstring)."""

    description: str  # for the run's start line, e.g. "1,003,854 tokens of training text"
    tokens_per_step: int  # target tokens of one micro-batch, about (for the start-of-run plan)

    def check(self) -> None: ...

    def has_split(self, split: str) -> bool: ...

    def batch(self, index: int) -> Any: ...

    def loss(self, model: nn.Module, batch: Any, state: Any) -> tuple[torch.Tensor, int, Any]: ...

    def evaluate(self, model: nn.Module, split: str, max_batches: int = 0) -> tuple[float, int]: ...

    def score(self, loss: float, tokens: int, split: str) -> dict[str, Any]: ...

    def decode_metrics(self, model: nn.Module) -> dict[str, float]: ...


@dataclass(frozen=True)
class TaskContext:
    """Where a task runs: its rank among ``world_size`` processes, a ``barrier`` to wait for
    every rank (rank 0 fills caches first), and whether the run fine-tunes a checkpoint (whose
    tokenizer may not know the new text)."""

    rank: int = 0
    world_size: int = 1
    barrier: Callable[[], None] = field(default=lambda: None)
    finetuning: bool = False


# (config, corpus, tokenizer, source_tokenizer, model, context) -> Task; a task class itself.
TaskBuilder = Callable[[RunConfig, Any, Any, Any, nn.Module, TaskContext], Task]


@dataclass(frozen=True)
class TaskKind:
    """How to read a task's data and build it: ``load_corpus(data_config)`` gives an object with
    ``train_text`` (and for separate tokenizers ``source_text`` and ``target_text``) and
    ``description``; ``build(config, corpus, tokenizer, source_tokenizer, model, context)``."""

    name: str
    load_corpus: Callable[[DataConfig], Any]
    build: TaskBuilder


_REGISTRY: dict[str, TaskKind] = {}


def register_task(*names: str, load_corpus: Callable[[DataConfig], Any]):
    """Decorator of a task class (or builder function): make it available under ``names``
    (values of ``train.task``)."""

    def decorate(build: TaskBuilder) -> TaskBuilder:
        for name in names:
            _REGISTRY[name] = TaskKind(name, load_corpus, build)
        return build

    return decorate


def task_kind(name: str) -> TaskKind:
    """The registered task called ``name``."""
    from . import language_modeling, seq2seq  # noqa: F401  (registering imports)

    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown train.task {name!r}; available: {', '.join(sorted(_REGISTRY))}"
        ) from None


__all__ = ["Task", "TaskBuilder", "TaskContext", "TaskKind", "register_task", "task_kind"]
