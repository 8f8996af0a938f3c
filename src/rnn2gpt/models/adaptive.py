"""An adaptive softmax output: a large vocabulary's next-token loss without scoring every word.

The vocabulary's ids are split at ``cutoffs`` (c_0 < c_1 < ... < V) into a *head* (ids below c_0)
and tail clusters (ids c_0..c_1-1, c_1..c_2-1, ...). The model scores the head words and one entry
per tail cluster together, then the words inside a cluster:

    p(w | h) = p_head(w | h)                               for w in the head
    p(w | h) = p_head(cluster k | h) * p_k(w | h)          for w in tail cluster k

Both factors are softmaxes, so the result is a proper distribution over all V words: perplexity,
sampling and beam search read it exactly as they read a plain softmax. What it saves is training
and scoring time: the loss of a head word needs only the head's c_0 + K scores, and a tail word's
only its own cluster's, so the (B, T, V) scores are never built. Word frequencies follow Zipf's
law: on Penn Treebank a head of 2,000 ids (``<unk>`` and ``<eos>`` among them) covers 87% of the
training tokens.

It needs ids ranked by frequency, most frequent first (the word tokenizer ranks them so); with any
other order it is still exact, only less useful. The scores for the whole vocabulary use the
model's ordinary output layer plus a small ``clusters`` layer (hidden -> K), so tied weights,
packed or int8 layers and LoRA work on it unchanged.

After Grave et al., "Efficient softmax approximation for GPUs" (2017), without their smaller
projections for the tail clusters: every word keeps the full hidden width, so the output weight
can stay tied to the input embedding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .base import per_token


def check_cutoffs(cutoffs: Sequence[int], vocab_size: int) -> tuple[int, ...]:
    """``cutoffs`` as a tuple of increasing ids inside (0, vocab_size); ConfigError otherwise."""
    cuts = tuple(int(c) for c in cutoffs)
    if not cuts:
        return cuts
    if any(b <= a for a, b in zip(cuts, cuts[1:])) or cuts[0] < 1 or cuts[-1] >= vocab_size:
        raise ConfigError(
            f"model.adaptive_cutoffs must increase strictly and lie between 1 and the vocabulary "
            f"size minus one ({vocab_size - 1}); got {list(cuts)}. Example: "
            "model.adaptive_cutoffs=2000 puts the 2,000 most frequent tokens in the head"
        )
    return cuts


def cluster_layer(hidden: int, cutoffs: Sequence[int]) -> nn.Linear:
    """The layer that scores the tail clusters as head entries: hidden -> len(cutoffs)."""
    layer = nn.Linear(hidden, len(cutoffs))
    nn.init.zeros_(layer.weight)  # every cluster starts at the same score
    nn.init.zeros_(layer.bias)
    return layer


def adaptive_log_probs(scores: Tensor, cluster_scores: Tensor, cutoffs: Sequence[int]) -> Tensor:
    """Log-probabilities of every word: scores (..., V), cluster_scores (..., K) -> (..., V) fp32.

    ``scores`` are the output layer's raw scores of all V words; only the ones of the cluster a
    word belongs to (or the head's) enter its probability.
    """
    scores, cluster_scores = scores.float(), cluster_scores.float()
    head_size = cutoffs[0]
    head = torch.cat([scores[..., :head_size], cluster_scores], dim=-1).log_softmax(dim=-1)
    pieces = [head[..., :head_size]]
    bounds = (*cutoffs, scores.shape[-1])
    for k, (start, stop) in enumerate(zip(bounds, bounds[1:])):
        within = scores[..., start:stop].log_softmax(dim=-1)
        pieces.append(head[..., head_size + k : head_size + k + 1] + within)
    return torch.cat(pieces, dim=-1)


def adaptive_nll(
    hidden: Tensor,
    targets: Tensor,
    output: nn.Linear,
    clusters: nn.Linear,
    cutoffs: Sequence[int],
) -> Tensor:
    """Negative log-likelihood of each target: hidden (N, H), targets (N,) -> (N,) fp32.

    Scores the head (c_0 words + K clusters) for every row, and each tail cluster's words only
    for the rows whose target lies in it. Equal to ``-adaptive_log_probs(...)`` at the targets.
    An output layer that is not a plain ``nn.Linear`` (a LoRA adapter on it) is scored whole, so
    its extra weights count.
    """
    if type(output) is not nn.Linear:
        log_probs = adaptive_log_probs(output(hidden), clusters(hidden), cutoffs)
        return -log_probs.gather(1, targets[:, None]).squeeze(1)
    return _AdaptiveNLL.apply(
        hidden, targets, output.weight, output.bias, clusters.weight, clusters.bias, tuple(cutoffs)
    )


class _AdaptiveNLL(torch.autograd.Function):
    """:func:`adaptive_nll` for a plain output layer, with a backward written by hand.

    Autograd would give each slice of the (V, H) output weight (the head's rows, each cluster's)
    a zero-filled (V, H) gradient of its own, then add them, and autocast would cast each slice to
    bf16 separately: on the PTB word LSTM (batch 14 x 35, bf16) that was 10 fills and 16 adds of
    8 MB per step, 9 ms of a 49 ms step. Here the weight is cast once and its gradient is written
    once, slice by slice. Under autocast the products run in autocast's dtype, as ``F.linear``
    would; log-softmax and the loss in fp32.
    """

    @staticmethod
    def forward(ctx, hidden, targets, weight, bias, cluster_weight, cluster_bias, cutoffs):
        device = hidden.device.type
        autocast = torch.is_autocast_enabled(device)
        dtype = torch.get_autocast_dtype(device) if autocast else hidden.dtype
        head_size, vocab = cutoffs[0], weight.shape[0]
        with torch.autocast(device, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)  # (N, H), (V, H)
            head_weight = torch.cat([w[:head_size], cluster_weight.to(dtype)])  # (c_0 + K, H)
            head_bias = torch.cat(
                [
                    cluster_bias.new_zeros(head_size) if bias is None else bias[:head_size],
                    cluster_bias,
                ]
            ).to(dtype)
            head = torch.addmm(head_bias, h, head_weight.t()).float().log_softmax(dim=-1)
            # A tail word's head entry is its cluster's: head_size + k - 1 for cluster k >= 1.
            cluster = torch.bucketize(
                targets, torch.tensor(cutoffs, device=targets.device), right=True
            )
            head_index = torch.where(cluster == 0, targets, head_size + cluster - 1)
            nll = -head.gather(1, head_index[:, None]).squeeze(1)  # (N,) fp32
            tails = []  # per cluster: (its rows, their ids within it, their log-probs) or None
            bounds = (*cutoffs, vocab)
            for k, (start, stop) in enumerate(zip(bounds, bounds[1:]), start=1):
                rows = (cluster == k).nonzero().squeeze(1)
                if rows.numel() == 0:
                    tails.append(None)
                    continue
                part_bias = None if bias is None else bias[start:stop].to(dtype)
                scores = F.linear(h.index_select(0, rows), w[start:stop], part_bias)
                log_probs = scores.float().log_softmax(dim=-1)  # (rows, stop - start)
                local = targets.index_select(0, rows) - start
                nll.index_add_(0, rows, -log_probs.gather(1, local[:, None]).squeeze(1))
                tails.append((rows, local, log_probs))
        ctx.save_for_backward(h, w, head_weight, head, head_index)
        ctx.tails, ctx.cutoffs = tails, cutoffs
        ctx.dtypes = (hidden.dtype, weight.dtype, cluster_weight.dtype)
        ctx.has_bias = bias is not None
        return nll

    @staticmethod
    def backward(ctx, grad_nll):
        h, w, head_weight, head, head_index = ctx.saved_tensors
        hidden_dtype, weight_dtype, cluster_dtype = ctx.dtypes
        head_size, vocab = ctx.cutoffs[0], w.shape[0]
        g = grad_nll.float()[:, None]  # (N, 1)
        with torch.autocast(h.device.type, enabled=False):
            # d nll / d scores = softmax - one-hot, row by row.
            d_head = head.exp()
            d_head[torch.arange(len(head_index)), head_index] -= 1.0
            d_head *= g  # (N, c_0 + K) fp32
            d_low = d_head.to(h.dtype)
            grad_hidden = (d_low @ head_weight).float()  # (N, H)
            grad_weight = torch.empty(vocab, w.shape[1], dtype=weight_dtype, device=w.device)
            grad_weight[:head_size] = d_low[:, :head_size].t() @ h
            grad_bias = torch.empty(vocab, dtype=weight_dtype, device=w.device)
            grad_bias[:head_size] = d_head[:, :head_size].sum(dim=0)
            bounds = (*ctx.cutoffs, vocab)
            for (start, stop), tail in zip(zip(bounds, bounds[1:]), ctx.tails):
                if tail is None:
                    grad_weight[start:stop] = 0
                    grad_bias[start:stop] = 0
                    continue
                rows, local, log_probs = tail
                d_tail = log_probs.exp()
                d_tail[torch.arange(len(local)), local] -= 1.0
                d_tail *= g.index_select(0, rows)
                d_tail_low = d_tail.to(h.dtype)
                grad_weight[start:stop] = d_tail_low.t() @ h.index_select(0, rows)
                grad_bias[start:stop] = d_tail.sum(dim=0)
                grad_hidden.index_add_(0, rows, (d_tail_low @ w[start:stop]).float())
            grad_cluster_weight = (d_low[:, head_size:].t() @ h).to(cluster_dtype)
            grad_cluster_bias = d_head[:, head_size:].sum(dim=0).to(cluster_dtype)
        return (
            grad_hidden.to(hidden_dtype),
            None,
            grad_weight,
            grad_bias if ctx.has_bias else None,
            grad_cluster_weight,
            grad_cluster_bias,
            None,
        )


def lm_output(
    hidden: Tensor,
    output: nn.Module,
    clusters: nn.Module | None,
    cutoffs: Sequence[int],
    targets: Tensor | None = None,
) -> Tensor:
    """A language model's last step: hidden (B, T, H) -> logits (B, T, V), or with ``targets``
    (B, T) the negative log-likelihood of each (B, T) fp32 (an adaptive output scores only what
    each target needs; a plain one, the whole vocabulary).

    With ``cutoffs`` the "logits" are the adaptive softmax's log-probabilities (fp32): softmax,
    temperature, top-k and the rest read them as they read logits.
    """
    if targets is not None:
        if clusters is None or not cutoffs:
            logits = per_token(output, hidden).float()
            flat = logits.reshape(-1, logits.shape[-1])
            return F.cross_entropy(flat, targets.reshape(-1), reduction="none").view(targets.shape)
        flat = hidden.reshape(-1, hidden.shape[-1])
        return adaptive_nll(flat, targets.reshape(-1), output, clusters, cutoffs).view(
            targets.shape
        )
    scores = per_token(output, hidden)
    if clusters is None or not cutoffs:
        return scores
    return adaptive_log_probs(scores, per_token(clusters, hidden), cutoffs)


__all__ = ["adaptive_log_probs", "adaptive_nll", "check_cutoffs", "cluster_layer", "lm_output"]
