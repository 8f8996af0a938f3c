"""Feeding a batch of rows to any model, carrying its state, within the model's context window.

The decoding loops never ask which architecture they hold: they hand :class:`ModelRunner` whole
windows of tokens to prefill (left-padded, with the padding mask in the state) and then one token
per row per step. The runner asks the model for a cache no larger than needed
(``capacity = min(max_context, prefill width + feeds still to come)``) and reports when it is
full; the loop then rebuilds the state with a fresh prefill of each row's window
(:meth:`ContextPolicy.window`).

Context policy (``GenerationConfig.context_policy``), for models with a ``max_context``:

- ``"stop"``: a row ends with finish_reason ``"context"`` once prompt + generated tokens reach
  ``max_context`` (the model never sees more than it was trained on); a longer prompt is an error.
- ``"slide"``: a row whose window is full continues from its last ``max_context // 2`` tokens
  (:func:`slide_keep`), rebuilt with one prefill; a longer prompt keeps its last ``max_context``
  tokens. Sliding by half a window (rather than by one token each step) keeps at least half a
  context of history while paying a prefill only every ``max_context // 2`` tokens.

Rows of a batch share one cache, whose slots fill at the same pace for every row, so the cache is
full when the *longest* window is. On a rebuild only rows whose own window is full slide; shorter
rows are re-prefilled whole, so a row decodes the same in a batch as alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import ContextLengthError
from ..models.base import State


def slide_keep(max_context: int) -> int:
    """Tokens a full window keeps when it slides: half the context (at least one)."""
    return max(1, max_context // 2)


@dataclass(frozen=True)
class ContextPolicy:
    """What to do when a sequence meets the model's context window."""

    max_context: int | None
    policy: str = "slide"  # slide | stop

    def fit_prompt(self, prompt: Sequence[int]) -> list[int]:
        """The prompt as the model will see it: cut to its last tokens (slide) or checked (stop)."""
        prompt = list(prompt)
        limit = self.max_context
        if limit is None or len(prompt) <= limit:
            return prompt
        if self.policy == "stop":
            raise ContextLengthError(
                f"the prompt has {len(prompt)} tokens but the model's context holds {limit}; "
                "shorten the prompt or set context_policy='slide' to keep its last tokens"
            )
        return prompt[-limit:]

    def token_limit(self, prompt_len: int, max_new_tokens: int) -> tuple[int, str]:
        """How many tokens a row may generate, and the finish reason when it gets there."""
        if self.max_context is None or self.policy == "slide":
            return max_new_tokens, "length"
        room = max(0, self.max_context - prompt_len)
        if room < max_new_tokens:
            return room, "context"
        return max_new_tokens, "length"

    def window(self, history: list[int], start: int) -> tuple[list[int], int]:
        """The window to prefill for a row whose tokens are ``history[start:]``.

        Returns (window tokens, new start): unchanged while it fits, else the last
        :func:`slide_keep` tokens (slide policy).
        """
        tokens = history[start:]
        if self.max_context is None or len(tokens) <= self.max_context:
            return tokens, start
        if self.policy == "stop":  # the loops end such rows first; a bug if reached
            raise AssertionError("a row outgrew the context under context_policy='stop'")
        keep = slide_keep(self.max_context)
        return tokens[-keep:], len(history) - keep

    def windows(
        self,
        histories: list[list[int]],
        starts: list[int],
        finished: Sequence[bool],
        pad_id: int,
    ) -> list[list[int]]:
        """Windows to rebuild a full cache: each unfinished row's :meth:`window` (``starts`` is
        updated in place), and a single pad token for finished rows, whose outputs are ignored."""
        out = []
        for row, history in enumerate(histories):
            if finished[row]:
                out.append([pad_id])
                continue
            window, starts[row] = self.window(history, starts[row])
            out.append(window)
        return out


class ModelRunner:
    """Carries a model's state across decoding steps for a batch of rows.

    ``prefill`` starts (or restarts) the state from left-padded windows; ``step`` feeds one
    token per row. Both return the next-token logits (B, V) in float32.
    """

    def __init__(self, model: nn.Module, *, pad_id: int, device: torch.device) -> None:
        self.model = model
        self.pad_id = pad_id
        self.device = device
        self.max_context: int | None = model.max_context
        self.state: State | None = None
        self.length = 0  # cache slots filled (every row alike)
        self.capacity: int | None = None

    @property
    def full(self) -> bool:
        """True when one more token would not fit in the cache."""
        return self.capacity is not None and self.length >= self.capacity

    def prefill(self, windows: Sequence[Sequence[int]], feeds_left: int) -> Tensor:
        """Start from ``windows`` (one token list per row, each non-empty), left-padded.

        ``feeds_left``: how many single tokens will be fed afterwards at most; the cache is
        sized for them (never beyond ``max_context``).
        """
        width = max(len(w) for w in windows)
        rows = [[self.pad_id] * (width - len(w)) + list(w) for w in windows]
        tokens = torch.tensor(rows, dtype=torch.long).to(self.device)
        pad_mask = None
        if any(len(w) < width for w in windows):
            lengths = torch.tensor([len(w) for w in windows])
            pad_mask = (torch.arange(width)[None, :] >= (width - lengths)[:, None]).to(self.device)
        capacity = None
        if self.max_context is not None:
            capacity = min(self.max_context, width + max(feeds_left, 0))
        state = self.model.new_state(len(rows), pad_mask=pad_mask, capacity=capacity)
        logits, self.state = self.model(tokens, state)
        self.length, self.capacity = width, capacity
        return logits[:, -1].float()

    def step(self, tokens: Tensor) -> Tensor:
        """Feed one token per row: tokens (B,) -> next-token logits (B, V)."""
        logits, self.state = self.model(tokens.view(-1, 1), self.state)
        self.length += 1
        return logits[:, -1].float()

    def select(self, index: Tensor) -> None:
        """Keep rows ``index`` (LongTensor (B',)) of the state, in that order."""
        assert self.state is not None
        self.state = self.state.select(index)


__all__ = ["ContextPolicy", "ModelRunner", "slide_keep"]
