"""Checks and small helpers shared by every entry point (generate, stream, beam search)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..config import GenerationConfig
from ..errors import ConfigError
from ..tokenizers.base import Tokenizer


def vocab_size_of(model: nn.Module) -> int:
    """V, the width of the model's logits (from ``model.config``)."""
    return int(model.config.vocab_size)


def validate_request(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig,
    *,
    tokenizer: Tokenizer | None,
    logprobs: int | None = None,
) -> None:
    """Raise :class:`ConfigError` for settings or prompts that cannot be decoded."""
    config.validate()
    if any(s == "" for s in config.stop):
        raise ConfigError("stop contains an empty string, which would match at once; remove it")
    if tokenizer is None and config.stop:
        raise ConfigError("stop strings need a tokenizer to decode text; pass tokenizer=")
    if tokenizer is None and config.bad_words:
        raise ConfigError("bad_words need a tokenizer to turn them into tokens; pass tokenizer=")
    vocab = vocab_size_of(model)
    if logprobs is not None and not 0 <= logprobs <= vocab:
        raise ConfigError(
            f"logprobs must be between 0 and the vocabulary size {vocab} (got {logprobs})"
        )
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ConfigError(
                f"prompt {i} is empty; start it with at least one token (e.g. the tokenizer's "
                "bos or eos token, or a newline)"
            )
        low, high = min(prompt), max(prompt)
        if low < 0 or high >= vocab:
            bad = low if low < 0 else high
            raise ConfigError(
                f"prompt {i} holds token id {bad}, outside the model's vocabulary (0..{vocab - 1}); "
                "encode prompts with the model's own tokenizer"
            )


def resolve_eos(eos_id: int | None, tokenizer: Tokenizer | None) -> int | None:
    """The end-of-sequence id: the one given, else the tokenizer's, else None."""
    if eos_id is not None:
        return eos_id
    return None if tokenizer is None else tokenizer.eos_id


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A private random generator (never the global one): seeded, or fresh entropy if None."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


__all__ = ["make_generator", "resolve_eos", "validate_request", "vocab_size_of"]
