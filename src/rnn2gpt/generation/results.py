"""What decoding returns: one :class:`Generation` per generated sequence."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..tokenizers.base import Tokenizer
from .stopping import TextTracker, decode_generated

FINISH_REASONS = ("length", "eos", "stop", "context", "repetition")


@dataclass
class Generation:
    """One generated continuation of a prompt.

    Attributes:
        token_ids: the new tokens (the prompt and the end-of-sequence token are not included).
        text: their text when a tokenizer was given (cut before a stop string), else None.
        finish_reason: ``"length"`` (max_new_tokens reached), ``"eos"`` (end-of-sequence token),
            ``"stop"`` (a stop string; text ends just before it), ``"context"`` (the model's
            context is full and ``context_policy == "stop"``) or ``"repetition"`` (the
            repetition guard: the last n tokens repeated an earlier span).
        logprobs: when asked, the log-probability of each token of ``token_ids`` under the
            model's unprocessed distribution (before temperature, penalties and filters).
        top_logprobs: when asked, per token a dict {token_id: logprob} of the most likely
            alternatives under the same distribution (empty dicts when ``logprobs=0``).
        score: beam search only: the hypothesis score, sum of processed log-probs divided by
            ``len ** length_penalty`` (``len`` counts the end-of-sequence token when there is one).
    """

    token_ids: list[int]
    text: str | None = None
    finish_reason: str = "length"
    logprobs: list[float] | None = None
    top_logprobs: list[dict[int, float]] | None = None
    score: float | None = None


def make_generation(
    token_ids: list[int],
    finish_reason: str,
    *,
    tokenizer: Tokenizer | None,
    prompt_ids: Sequence[int],
    stop: Sequence[str] = (),
    repeat_guard: int = 0,
    tracker: TextTracker | None = None,
    logprobs: list[float] | None = None,
    top_logprobs: list[dict[int, float]] | None = None,
    score: float | None = None,
) -> Generation:
    """Assemble a :class:`Generation`, decoding the text (and applying stop strings) when a
    tokenizer is given and no live ``tracker`` already did."""
    text = None
    if tokenizer is not None:
        if tracker is None:
            tracker = decode_generated(
                tokenizer, token_ids, prompt_ids=prompt_ids, stop=stop, repeat_guard=repeat_guard
            )
        else:
            tracker.finish()
        text = tracker.text
        if tracker.stopped:
            finish_reason = "repetition" if tracker.repeated else "stop"
            keep = tracker.kept_tokens
            token_ids = token_ids[:keep]
            logprobs = None if logprobs is None else logprobs[:keep]
            top_logprobs = None if top_logprobs is None else top_logprobs[:keep]
    return Generation(
        token_ids=token_ids,
        text=text,
        finish_reason=finish_reason,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        score=score,
    )


__all__ = ["FINISH_REASONS", "Generation", "make_generation"]
