"""Streaming: text pieces as tokens are produced, from the same loop as :func:`generate`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from ..config import GenerationConfig
from ..errors import ConfigError
from ..models.base import eval_mode
from ..tokenizers.base import Tokenizer
from .request import resolve_eos, validate_request
from .search import DecodeRun, generate


def stream(
    model: nn.Module,
    prompt: Sequence[int],
    config: GenerationConfig,
    *,
    tokenizer: Tokenizer,
    eos_id: int | None = None,
    pad_id: int = 0,
) -> Iterator[str]:
    """Yield the text of one continuation of ``prompt`` piece by piece as it is generated.

    The pieces concatenate to the ``text`` that :func:`generate` returns for the same settings
    and seed. A character split across tokens is yielded whole once complete, and text that
    could still become a stop string is held back until it is resolved. Beam search cannot know
    its best hypothesis before the end: with ``num_beams > 1`` the text comes in one piece.
    """
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
        tracker = run.trackers[0]
        for _ in run:
            piece = tracker.take()
            if piece:
                yield piece
        tracker.finish()
        piece = tracker.take()
        if piece:
            yield piece


__all__ = ["stream"]
