"""One run configuration per architecture: the presets, the shared budget and data, overrides
for all or one model, and widths searched so the parameter counts match."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from ...config import ModelConfig, RunConfig, load_preset
from ...errors import ConfigError
from .types import (
    CURVE_POINTS,
    HUGE_STEPS,
    PRESET_PATTERN,
    REFERENCE_ARCH,
    CompareSettings,
)

logger = logging.getLogger(__name__)

_PER_MODEL = re.compile(r"^(\w+):(\w+(?:\.\w+)?=.*)$")
_SIZE_KEYS = ("model.n_embd", "model.n_hidden")
_BARE_KEYS = {
    "n_embd": "model.n_embd",
    "n_hidden": "model.n_hidden",
    "eval_interval": "train.eval_interval",
}


def count_model_parameters(config: ModelConfig) -> int:
    """Parameters of the model ``config`` describes (``vocab_size`` set), built on ``meta``."""
    from ...models import build_model

    with torch.device("meta"):
        model = build_model(config)
    return model.num_parameters()


def size_to_target(config: ModelConfig, target: int, *, max_width: int = 8192) -> ModelConfig:
    """``config`` with the width whose parameter count is closest to ``target``.

    The width ``n_embd`` moves in multiples of ``lcm(n_head, 2)`` (keeps a GPT's width divisible
    by its heads and even for sinusoidal positions; no cost to the others); a nonzero
    ``n_hidden`` keeps its ratio to ``n_embd``. The count grows with the width, so a bisection
    finds the first width at or above the target, then the closer of it and the one below wins.
    """
    if config.vocab_size < 1:
        raise ConfigError("model.vocab_size must be set before sizing a model")
    step = math.lcm(max(config.n_head, 1), 2)
    ratio = config.n_hidden / config.n_embd if config.n_hidden else 0.0

    def with_width(k: int) -> ModelConfig:
        width = k * step
        hidden = max(1, round(width * ratio)) if ratio else 0
        return replace(config, n_embd=width, n_hidden=hidden)

    cache: dict[int, int] = {}

    def params(k: int) -> int:
        if k not in cache:
            cache[k] = count_model_parameters(with_width(k))
        return cache[k]

    lo, hi = 1, max(1, max_width // step)
    if params(hi) < target:
        logger.warning(
            "no width up to %d reaches %s parameters; using the widest", max_width, f"{target:,}"
        )
        return with_width(hi)
    while lo < hi:  # first k with params(k) >= target
        mid = (lo + hi) // 2
        if params(mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    best = lo
    if lo > 1 and abs(params(lo - 1) - target) <= abs(params(lo) - target):
        best = lo - 1
    return with_width(best)


def preset_for(arch: str) -> str:
    """The shipped preset an architecture starts from."""
    return PRESET_PATTERN.format(arch=arch)


def split_overrides(
    overrides: Sequence[str], models: Sequence[str]
) -> tuple[list[str], dict[str, list[str]]]:
    """Global overrides and per-model ones (``ARCH:section.key=value``)."""
    shared: list[str] = []
    per_model: dict[str, list[str]] = {m: [] for m in models}
    for item in overrides:
        match = _PER_MODEL.match(item)
        if not match:
            shared.append(item)
            continue
        name, rest = match.groups()
        if name not in per_model:
            raise ConfigError(
                f"override {item!r} names model {name!r}, which is not compared; "
                f"compared models: {', '.join(models)}"
            )
        per_model[name].append(rest)
    return shared, per_model


def build_configs(settings: CompareSettings) -> tuple[dict[str, RunConfig], int | None, int]:
    """One validated config per model, the parameter target used (None: sizes kept) and the
    vocabulary size of the data's tokenizer."""
    settings.validate()
    shared, per_model = split_overrides(settings.overrides, settings.models)
    configs = {
        name: _base_config(name, settings, shared + per_model[name]) for name in settings.models
    }
    vocab_sizes = _vocab_sizes(configs)
    configs = {
        name: c.with_values("model", vocab_size=vocab_sizes[name]) for name, c in configs.items()
    }

    target = None
    if settings.match_params:
        target = settings.target_params
        if target is None:
            reference = configs.get(REFERENCE_ARCH)
            if reference is None:
                reference = _base_config(REFERENCE_ARCH, settings, shared)
                reference = reference.with_values(
                    "model", vocab_size=next(iter(vocab_sizes.values()))
                )
            target = count_model_parameters(reference.model)
        for name, config in configs.items():
            fixed = _sets_size(shared + per_model[name])
            reference_kept = settings.target_params is None and name == REFERENCE_ARCH
            if not fixed and not reference_kept:
                configs[name] = replace(config, model=size_to_target(config.model, target))
    for name, config in configs.items():
        configs[name] = _with_eval_interval(config, settings, shared + per_model[name])
        configs[name].validate()
    return configs, target, next(iter(vocab_sizes.values()))


def _base_config(arch: str, settings: CompareSettings, overrides: Sequence[str]) -> RunConfig:
    """Preset < data/tokenizer/budget/seed of the comparison < the user's overrides."""
    config = load_preset(preset_for(arch))
    if settings.data is not None:
        # A new corpus replaces the preset's whole data section (its validation/test files).
        config = config.with_values("data", path=settings.data, val_path="", test_path="")
    if settings.tokenizer is not None:
        config = config.with_values("tokenizer", kind=settings.tokenizer)
    if settings.budget_tokens is not None:
        budget = {"max_tokens": int(settings.budget_tokens), "max_time": 0.0}
    else:
        budget = {"max_time": float(settings.seconds), "max_tokens": 0}
    config = config.with_values("train", max_steps=HUGE_STEPS, **budget)
    if settings.seed is not None:
        config = config.with_values("train", seed=int(settings.seed))
    return config.with_overrides(list(overrides))


def _override_keys(overrides: Sequence[str]) -> set[str]:
    """The keys set, as ``section.key`` (a bare ``key=value`` is owned by one section)."""
    keys = set()
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        keys.add(key if "." in key else _BARE_KEYS.get(key, key))
    return keys


def _sets_size(overrides: Sequence[str]) -> bool:
    return bool(_override_keys(overrides) & set(_SIZE_KEYS))


def _with_eval_interval(
    config: RunConfig, settings: CompareSettings, overrides: Sequence[str]
) -> RunConfig:
    """About :data:`CURVE_POINTS` evaluations per run (the curves need points), unless the user
    set ``train.eval_interval`` or ``train.eval_interval_seconds``: with a token budget every
    budget/10 tokens, with a time budget every budget/10 seconds of training."""
    keys = _override_keys(overrides)
    if keys & {"train.eval_interval", "train.eval_interval_seconds"}:
        return config
    if settings.budget_tokens is None:
        return config.with_values(
            "train",
            eval_interval=HUGE_STEPS,
            eval_interval_seconds=settings.seconds / CURVE_POINTS,
        )
    tc = config.train
    steps = max(1, settings.budget_tokens // (tc.batch_size * tc.seq_len * tc.grad_accum))
    interval = max(1, steps // CURVE_POINTS)
    return config.with_values(
        "train", eval_interval=interval, log_interval=min(tc.log_interval, interval)
    )


def _vocab_sizes(configs: dict[str, RunConfig]) -> dict[str, int]:
    """Each config's vocabulary size, training each distinct tokenizer once (as the trainer
    will: the same text and settings give the same tokenizer)."""
    from ...data import load_corpus
    from ...tokenizers import train_tokenizer

    cache: dict[tuple[Any, Any], int] = {}
    sizes = {}
    for name, config in configs.items():
        key = (config.data, config.tokenizer)
        if key not in cache:
            corpus = load_corpus(config.data)
            cache[key] = train_tokenizer(corpus.train_text, config.tokenizer).vocab_size
        sizes[name] = cache[key]
    return sizes


__all__ = [
    "build_configs",
    "count_model_parameters",
    "preset_for",
    "size_to_target",
    "split_overrides",
]
