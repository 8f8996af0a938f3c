"""Streaming: text pieces as tokens are produced, from the same loop as :func:`generate`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn

from ..config import GenerationConfig
from ..errors import ConfigError
from ..models.base import eval_mode
from ..tokenizers.base import Tokenizer
from .request import resolve_eos, validate_request
from .search import DecodeRun, generate
from .speculative import Drafter, SpeculativeRun, check_speculation, drafter_module, make_drafter
from .stopping import TextTracker


def stream(
    model: nn.Module,
    prompt: Sequence[int],
    config: GenerationConfig,
    *,
    tokenizer: Tokenizer,
    eos_id: int | None = None,
    pad_id: int = 0,
    draft: nn.Module | None = None,
) -> Iterator[str]:
    """Yield the text of one continuation of ``prompt`` piece by piece as it is generated.

    The pieces concatenate to the ``text`` that :func:`generate` returns for the same settings
    and seed. A character split across tokens is yielded whole once complete, and text that
    could still become a stop string is held back until it is resolved. Beam search cannot know
    its best hypothesis before the end: with ``num_beams > 1`` the text comes in one piece.
    With a ``draft`` model or ``config.prompt_lookup`` the tokens come from speculative
    decoding, a round (1..K+1 tokens) at a time.
    """
    drafter = make_drafter(config, draft)
    if drafter is not None:
        yield from _stream_speculative(model, prompt, config, drafter, tokenizer, eos_id)
        return
    validate_request(model, [prompt], config, tokenizer=tokenizer)
    if config.num_return_sequences != 1:
        raise ConfigError(
            "stream() produces one sequence; set num_return_sequences=1 (or use generate())"
        )
    if config.num_beams > 1:
        [[best]] = generate(
            model, [prompt], config, tokenizer=tokenizer, eos_id=eos_id, pad_id=pad_id
        )
        if best.text:
            yield best.text
        return

    with eval_mode(model):
        with torch.inference_mode():
            run = DecodeRun(
                model,
                [prompt],
                config,
                tokenizer=tokenizer,
                eos_id=resolve_eos(eos_id, tokenizer),
                pad_id=pad_id,
                track_text=True,
            )
        assert run.trackers is not None
        yield from _pieces(run, run.trackers[0])


def _stream_speculative(
    model: nn.Module,
    prompt: Sequence[int],
    config: GenerationConfig,
    drafter: Drafter,
    tokenizer: Tokenizer,
    eos_id: int | None,
) -> Iterator[str]:
    check_speculation(model, [prompt], config, drafter, tokenizer=tokenizer)
    if config.num_return_sequences != 1:
        raise ConfigError(
            "stream() produces one sequence; set num_return_sequences=1 (or use generate())"
        )
    with eval_mode(model), eval_mode(drafter_module(drafter)):
        with torch.inference_mode():
            run = SpeculativeRun(
                model,
                drafter,
                [prompt],
                config,
                draft_tokens=config.draft_tokens,
                tokenizer=tokenizer,
                eos_id=resolve_eos(eos_id, tokenizer),
            )
        assert run.trackers is not None
        yield from _pieces(run, run.trackers[0])


def _pieces(run: Iterable[int], tracker: TextTracker) -> Iterator[str]:
    """The tracker's new text after every step of ``run``, then what it held back."""
    for _ in run:
        piece = tracker.take()
        if piece:
            yield piece
    tracker.finish()
    piece = tracker.take()
    if piece:
        yield piece


__all__ = ["stream"]
