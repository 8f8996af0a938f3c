"""Small helpers shared by the analysis tools: prompts, token pieces, recorded internals."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from ..models.base import eval_mode, model_device
from ..tokenizers.base import Tokenizer

logger = logging.getLogger(__name__)


def token_pieces(tokenizer: Tokenizer, ids: Sequence[int]) -> list[str]:
    """The text each token adds, in order; the pieces concatenate to the decoded text.

    A byte-level token holding part of a character adds "" and the token that completes the
    character adds all of it; a word tokenizer's pieces include the space before the word.
    """
    from ..generation import TextTracker

    tracker = TextTracker(tokenizer)
    pieces = []
    for token in ids:
        before = len(tracker.text)
        tracker.add(int(token))
        pieces.append(tracker.text[before:])
    return pieces


@torch.no_grad()
def record_internals(model: nn.Module, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run ``tokens`` (B, T) through ``model`` in eval mode; everything its recorder reports.

    Names and shapes follow the model contract: ``layer{k}.hidden`` (B, T, H) for every model,
    gates (B, T, H) for LSTM/GRU, ``layer{i}.attention`` (B, n_head, T, S) for GPTs. A name
    reported twice keeps its last tensor. Tokens beyond ``model.max_context`` are dropped.
    """
    context = model.max_context
    if context is not None and tokens.shape[1] > context:
        logger.info("recording the first %d tokens (the model's context)", context)
        tokens = tokens[:, :context]
    recorded: dict[str, torch.Tensor] = {}

    def recorder(name: str, tensor: torch.Tensor) -> None:
        recorded[name] = tensor.detach().float().cpu()

    with eval_mode(model):
        model(tokens.to(model_device(model)), None, recorder=recorder)
    return recorded


__all__ = ["model_device", "record_internals", "token_pieces"]
