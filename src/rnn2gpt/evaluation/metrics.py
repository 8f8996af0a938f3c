"""Language-model metrics: mean cross-entropy, perplexity, bits per token and bits per character.

All four come from one number, the mean next-token cross-entropy ``L`` (nats per token) over the
scored tokens: ``perplexity = exp(L)``, ``bits_per_token = L / ln 2`` and, given the average
number of characters per token ``c``, ``bits_per_char = L / (c * ln 2)`` (the total bits spread
over the characters those tokens cover). Bits per character compare across tokenizers; loss and
perplexity only compare models that share a tokenizer.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import eval_batches
from ..errors import DataError
from ..models.base import eval_mode, next_token_loss

logger = logging.getLogger(__name__)

LN2 = math.log(2.0)


def lm_metrics(loss: float, tokens: int, chars_per_token: float | None = None) -> dict[str, Any]:
    """The metric dict for a mean loss (nats per token) over ``tokens`` scored tokens."""
    try:
        perplexity = math.exp(loss)
    except OverflowError:
        perplexity = math.inf
    bits_per_char = None
    if chars_per_token:
        bits_per_char = loss / (chars_per_token * LN2)
    return {
        "loss": loss,
        "perplexity": perplexity,
        "bits_per_token": loss / LN2,
        "bits_per_char": bits_per_char,
        "tokens": tokens,
    }


def evaluate_lm(
    model: nn.Module,
    ids: np.ndarray,
    *,
    batch_size: int,
    seq_len: int,
    stream: bool,
    max_batches: int = 0,
    chars_per_token: float | None = None,
    autocast: torch.dtype | None = None,
) -> dict[str, Any]:
    """Score ``ids`` (1-D token ids) with ``model``: mean token-level cross-entropy and friends.

    Batches come from :func:`rnn2gpt.data.eval_batches` in text order. With ``stream=True`` the
    model state is carried from batch to batch (truncated-BPTT layout, as RNNs train) and reset
    where the batcher says; otherwise every window starts from an empty state.

    Args:
        model: any rnn2gpt language model; its train/eval mode is restored afterwards.
        ids: the token ids to score, shape (N,).
        batch_size, seq_len: batch shape (B, T); ``seq_len`` is capped at ``model.max_context``.
        stream: carry the state across batches.
        max_batches: score at most this many batches (0 = all of ``ids``).
        chars_per_token: characters per token of this text, for ``bits_per_char``.
        autocast: run the forward pass under autocast in this dtype (None = as the weights).

    Returns:
        ``{"loss", "perplexity", "bits_per_token", "bits_per_char" (None without
        chars_per_token), "tokens"}``; the loss is in nats per token.
    """
    max_context = model.max_context
    if max_context is not None and seq_len > max_context:
        logger.warning(
            "evaluation seq_len %d exceeds the model's context; using %d", seq_len, max_context
        )
        seq_len = max_context
    device = next(model.parameters()).device
    # The sum stays on the device (float64) so there is no host sync per batch.
    total = torch.zeros((), dtype=torch.float64, device=device)
    tokens = 0
    state = None
    context = (
        torch.autocast(device_type=device.type, dtype=autocast)
        if autocast is not None
        else contextlib.nullcontext()
    )
    with eval_mode(model), torch.inference_mode():
        for x, y, reset in eval_batches(ids, batch_size, seq_len, max_batches, stream):
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            if not stream or reset:
                state = None
            with context:
                loss, new_state = next_token_loss(model, x, y, state, reduction="sum")
            total += loss.double()
            tokens += y.numel()
            state = new_state if stream else None
    if tokens == 0:
        raise DataError("no tokens to evaluate; give a longer text or a smaller seq_len")
    return lm_metrics(total.item() / tokens, tokens, chars_per_token)


__all__ = ["LN2", "evaluate_lm", "lm_metrics"]
