"""Attention of a decoder over encoder outputs (RNN encoder-decoders).

Both scorers split into a per-source part computed once per encoding (:meth:`project`, kept in
the decoder state so a decoding step never recomputes it) and a per-query part:

- :class:`AdditiveAttention` (Bahdanau et al., 2015): ``score(q, m) = v^T tanh(W_q q + W_m m)``.
- :class:`GeneralAttention` (Luong et al., 2015, "general"): ``score(q, m) = q^T W m``.

Padding of the source never receives weight: ``mask`` (B, S) is True at real source tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """scores (B, T, S), mask (B, S) True at real keys -> weights (B, T, S) summing to 1 over S."""
    scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
    return torch.softmax(scores.float(), dim=-1).to(scores.dtype)


class AdditiveAttention(nn.Module):
    """Bahdanau attention. query (B, T, Q) over memory (B, S, M) -> context (B, T, M)."""

    def __init__(self, query_dim: int, memory_dim: int, hidden: int) -> None:
        super().__init__()
        self.query_proj = nn.Linear(query_dim, hidden, bias=False)
        self.memory_proj = nn.Linear(memory_dim, hidden)
        self.score = nn.Linear(hidden, 1, bias=False)

    def project(self, memory: Tensor) -> Tensor:
        """memory (B, S, M) -> keys (B, S, A), computed once per source."""
        return self.memory_proj(memory)

    def forward(
        self, query: Tensor, keys: Tensor, memory: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """query (B, T, Q), keys (B, S, A), memory (B, S, M), mask (B, S) ->
        (context (B, T, M), weights (B, T, S))."""
        hidden = torch.tanh(self.query_proj(query)[:, :, None, :] + keys[:, None, :, :])
        weights = masked_softmax(self.score(hidden).squeeze(-1), mask)  # (B, T, S)
        return weights @ memory, weights


class GeneralAttention(nn.Module):
    """Luong "general" attention. query (B, T, Q) over memory (B, S, M) -> context (B, T, M)."""

    def __init__(self, query_dim: int, memory_dim: int) -> None:
        super().__init__()
        # q^T W m computed as q . (W m): W m is the per-source part.
        self.memory_proj = nn.Linear(memory_dim, query_dim, bias=False)

    def project(self, memory: Tensor) -> Tensor:
        """memory (B, S, M) -> keys (B, S, Q), computed once per source."""
        return self.memory_proj(memory)

    def forward(
        self, query: Tensor, keys: Tensor, memory: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """As :meth:`AdditiveAttention.forward`."""
        weights = masked_softmax(query @ keys.transpose(1, 2), mask)  # (B, T, S)
        return weights @ memory, weights


__all__ = ["AdditiveAttention", "GeneralAttention", "masked_softmax"]
