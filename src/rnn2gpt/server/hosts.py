"""The models a server holds: loaded once at start-up, named, and ready for their endpoints.

A language model gets a :class:`~rnn2gpt.generation.scheduler.Scheduler` (continuous batching,
``/v1/completions``); an encoder-decoder a runner and a lock (``/v1/translate`` or
``/v1/summarize``: beam search in a batch of its own, one request at a time per model). Which
host a checkpoint gets is decided by its task, through the :data:`HOSTS` table.

A model is named after its run folder: ``runs/x`` and ``runs/x/best`` are both ``x``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checkpoint import read_config, resolve_checkpoint_dir
from ..config import RunConfig
from ..errors import ConfigError
from ..generation.scheduler import Scheduler, choose_tile
from .metrics import ServerMetrics
from .schemas import ModelCard

_CHECKPOINT_FOLDERS = ("best", "last", "merged")


def model_name(directory: str | os.PathLike[str]) -> str:
    """The name of the run a checkpoint belongs to: ``runs/x/best`` -> ``x``."""
    path = Path(directory).expanduser().resolve()
    if path.name in _CHECKPOINT_FOLDERS and path.parent.name:
        return path.parent.name
    return path.name


@dataclass(frozen=True)
class ServerSettings:
    """The limits and sizes a server runs with (``rnn2gpt serve`` options)."""

    max_batch: int = 32
    max_queue: int = 128
    # Rows computed together per decode step; None: measured per model at start-up
    # (generation.scheduler.choose_tile; benchmarks/RESULTS.md has the trade-off).
    tile: int | None = None
    max_tokens: int = 2048  # the most tokens one request may ask for
    max_prompt_tokens: int = 8192  # the longest prompt of a model without a context limit
    dtype: str = "fp32"
    quantize: str | None = None  # "int8": int8 weights for the language models


@dataclass
class Host:
    """One loaded model and what it can do (``capabilities``: endpoint names)."""

    name: str
    directory: Path
    config: RunConfig
    tokenizer: Any
    capabilities: frozenset[str]
    context: int | None
    engine: Any  # a Scheduler, or a Seq2SeqRunner
    lock: threading.Lock
    created: int

    def card(self) -> ModelCard:
        return ModelCard(
            id=self.name,
            created=self.created,
            task=self.config.train.task,
            architecture=self.config.model.arch,
            tokenizer=f"{self.tokenizer.kind} ({self.tokenizer.vocab_size} tokens)",
            context=self.context,
        )

    def close(self) -> None:
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()


def _language_model(
    name: str, directory: Path, config: RunConfig, settings: ServerSettings, metrics: ServerMetrics
) -> Host:
    from ..api import load

    generator = load(directory, dtype=settings.dtype, quantize=settings.quantize)
    scheduler = Scheduler(
        generator.model,
        generator.tokenizer,
        max_batch=settings.max_batch,
        max_queue=settings.max_queue,
        tile=settings.tile or choose_tile(generator.model, settings.max_batch),
        observer=metrics.observer(name),
    )
    metrics.watch(name, scheduler)
    return Host(
        name,
        directory,
        config,
        generator.tokenizer,
        frozenset({"completions", "tokenize"}),
        generator.model.max_context,
        scheduler,
        threading.Lock(),
        int(time.time()),
    )


def _encoder_decoder(endpoint: str) -> Callable[..., Host]:
    def load_host(
        name: str,
        directory: Path,
        config: RunConfig,
        settings: ServerSettings,
        metrics: ServerMetrics,
    ) -> Host:
        from ..tasks import load_seq2seq

        runner = load_seq2seq(directory)
        return Host(
            name,
            directory,
            config,
            runner.tokenizer,
            frozenset({endpoint, "tokenize"}),
            runner.model.max_context,
            runner,
            threading.Lock(),
            int(time.time()),
        )

    return load_host


# A checkpoint's task -> how it is served.
HOSTS: dict[str, Callable[..., Host]] = {
    "lm": _language_model,
    "translation": _encoder_decoder("translate"),
    "summarization": _encoder_decoder("summarize"),
}


def load_hosts(
    directories: Sequence[str],
    names: Sequence[str] | None,
    settings: ServerSettings,
    metrics: ServerMetrics,
) -> dict[str, Host]:
    """Load every checkpoint (or run folder) under its name; ConfigError for names that clash or
    do not match the directories one to one."""
    if not directories:
        raise ConfigError("give at least one checkpoint or run folder to serve")
    names = list(names or [])
    if names and len(names) != len(directories):
        raise ConfigError(
            f"give one --name per checkpoint, in order ({len(directories)} checkpoints, "
            f"{len(names)} names)"
        )
    chosen = names or [model_name(d) for d in directories]
    clashes = sorted({n for n in chosen if chosen.count(n) > 1})
    if clashes:
        raise ConfigError(
            f"two models would be called {', '.join(clashes)}; give each a name with --name "
            "(one per checkpoint, in order)"
        )
    hosts: dict[str, Host] = {}
    try:
        for name, directory in zip(chosen, directories):
            path = resolve_checkpoint_dir(directory)
            config = read_config(path)
            hosts[name] = HOSTS[config.train.task](name, path, config, settings, metrics)
    except BaseException:
        for host in hosts.values():
            host.close()
        raise
    return hosts


__all__ = ["HOSTS", "Host", "ServerSettings", "load_hosts", "model_name"]
