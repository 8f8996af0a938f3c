"""Gradient flow through time: how strongly the loss at one position reaches back to earlier inputs.

For a window of T tokens the loss is the cross-entropy of the prediction made at the *last*
position. Its gradient with respect to the input embedding at each earlier position t,
``g_t = d loss / d e_t`` (E,), measures how much that token can still influence learning. For a
vanilla RNN, ``g_t`` is the product of T - t Jacobians ``diag(1 - h^2) W_hh^T``, so it shrinks
(or grows) geometrically with the distance T - 1 - t: the vanishing gradient problem. LSTM and
GRU gates keep a near-identity path open; a GPT reaches every position in its context directly.

The measurement is the same for every architecture, with no question asked about which one it
is: a forward hook on the token-embedding module (the ``nn.Embedding`` that receives the token
tensor itself) swaps its output for a fresh leaf tensor that requires grad, and
``torch.autograd.grad`` returns ``d loss / d leaf``. (Equivalent to ``retain_grad`` on the
output, but it leaves no ``.grad`` on the model's parameters and works when they are frozen.)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DataError
from ..models.base import eval_mode, model_device

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GradientFlow:
    """Mean input-gradient norm against distance from the loss.

    ``norms[d]`` is the mean over windows of ``||d loss / d e_{T-1-d}||_2``; distance 0 is the
    position whose prediction is scored. ``windows`` is how many windows were averaged.
    """

    distances: list[int]
    norms: list[float]
    windows: int

    def decay_ratios(self) -> list[float]:
        """``norms[d + 1] / norms[d]`` for each d (nan where ``norms[d]`` is 0)."""
        return [b / a if a > 0 else float("nan") for a, b in zip(self.norms[:-1], self.norms[1:])]

    def to_dict(self) -> dict[str, object]:
        return {"distances": self.distances, "norms": self.norms, "windows": self.windows}


def input_gradient_norms(
    model: nn.Module, tokens: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Per-position gradient norms for one batch.

    Args:
        model: any rnn2gpt language model (put in eval mode by the caller for determinism).
        tokens: (B, T) input ids.
        targets: (B,) the token that should follow each row.

    Returns:
        (B, T) float tensor: ``||d loss_b / d e_{b,t}||_2``, where ``loss_b`` is the
        cross-entropy of row b's prediction at position T - 1.
    """
    captured: list[torch.Tensor] = []

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        # Only the embedding that receives the token tensor itself (a GPT's position table is
        # an nn.Embedding too, but never called with the tokens).
        if not inputs or inputs[0] is not tokens:
            return None
        leaf = output.detach().requires_grad_(True)  # (B, T, E)
        captured.append(leaf)
        return leaf

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Embedding)
    ]
    try:
        with torch.enable_grad():
            logits, _ = model(tokens, None)  # (B, T, V)
            if not captured:
                raise ConfigError(
                    "gradient flow needs a model whose token embedding is an nn.Embedding called "
                    "with the input tokens; this model has none"
                )
            # Summed over rows: each row's loss depends only on its own inputs, so one backward
            # pass gives every row's gradient.
            loss = F.cross_entropy(logits[:, -1, :].float(), targets, reduction="sum")
            (grad,) = torch.autograd.grad(loss, captured[0])
    finally:
        for handle in handles:
            handle.remove()
    return grad.float().norm(dim=-1)  # (B, T)


def gradient_flow(
    model: nn.Module,
    ids: Sequence[int] | np.ndarray,
    *,
    seq_len: int = 64,
    batch_size: int = 8,
    batches: int = 4,
    seed: int = 0,
) -> GradientFlow:
    """Average gradient norm against distance from the loss over random windows of ``ids``.

    Args:
        model: any rnn2gpt language model; its train/eval mode is restored afterwards.
        ids: token ids of a text, shape (N,).
        seq_len: tokens per window (capped at the model's context and at N - 1).
        batch_size, batches: ``batches`` batches of ``batch_size`` windows each are averaged.
        seed: where the windows start (numpy generator seed).

    Raises:
        DataError: the text has fewer than 2 tokens.
    """
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 1 or len(ids) < 2:
        raise DataError("gradient flow needs a text of at least 2 tokens; give a longer text")
    max_context = model.max_context
    length = min(seq_len, len(ids) - 1, max_context or seq_len)
    if length < seq_len:
        logger.info("gradient flow: windows of %d tokens (the text or context is shorter)", length)
    rng = np.random.default_rng(seed)
    device = model_device(model)
    total = torch.zeros(length, dtype=torch.float64)
    windows = 0
    with eval_mode(model):  # no dropout: the measurement must be deterministic
        for _ in range(batches):
            starts = rng.integers(0, len(ids) - length, size=batch_size)
            rows = np.stack([ids[s : s + length + 1] for s in starts])  # (B, T + 1)
            batch = torch.from_numpy(rows).to(device)
            norms = input_gradient_norms(model, batch[:, :-1], batch[:, -1])  # (B, T)
            total += norms.double().sum(dim=0).cpu()
            windows += batch_size
    mean = (total / windows).flip(0)  # index 0 = the last position = distance 0
    return GradientFlow(list(range(length)), [float(v) for v in mean], windows)


__all__ = ["GradientFlow", "gradient_flow", "input_gradient_norms"]
