"""Attention maps: what each head of each layer looks at, for one text.

The weights come from the model's recorder (``layer{i}.attention``, (B, n_head, T, S)): row t is
the distribution of query position t over the key positions it may attend to (causal, so the
upper triangle is zero). A model that records no attention (the RNN family) yields no maps.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..tasks.decoding import cross_attention, encode_sources, source_limit
from ..tasks.runner import Seq2SeqRunner, load_seq2seq
from .common import record_internals
from .plots import new_figure, save_figure

logger = logging.getLogger(__name__)

_ATTENTION = re.compile(r"^layer(\d+)\.attention$")
MAX_TICK_LABELS = 48  # beyond this, token labels overlap: positions are shown instead


def attention_maps(model: nn.Module, tokens: torch.Tensor) -> dict[int, torch.Tensor]:
    """Layer index -> attention weights (n_head, T, S) of the first row of ``tokens`` (B, T).

    Empty when the model records no attention.
    """
    recorded = record_internals(model, tokens[:1])
    maps = {}
    for name, tensor in recorded.items():
        match = _ATTENTION.match(name)
        if match:
            maps[int(match.group(1))] = tensor[0]  # (n_head, T, S)
    return dict(sorted(maps.items()))


def plot_attention(
    maps: Mapping[int, torch.Tensor],
    labels: Sequence[str],
    out_dir: str | os.PathLike[str],
    *,
    prefix: str = "attention",
) -> list[Path]:
    """One PNG per layer (``PREFIX_layer{i}.png``), one heatmap per head.

    ``labels`` are the token pieces (shown as tick labels for short texts). Returns the written
    files (none without matplotlib).
    """
    files = []
    for layer, weights in maps.items():
        n_head, steps, keys = weights.shape
        cols = min(n_head, 4)
        rows = -(-n_head // cols)
        fig = new_figure(figsize=(3.6 * cols + 1.0, 3.6 * rows + 0.6), layout="constrained")
        if fig is None:
            return files
        axes = fig.subplots(rows, cols, squeeze=False)
        image = None
        for head in range(rows * cols):
            ax = axes[head // cols][head % cols]
            if head >= n_head:
                ax.set_visible(False)
                continue
            image = ax.imshow(
                weights[head].numpy(),
                cmap="viridis",
                vmin=0.0,
                vmax=1.0,
                aspect="auto",
                interpolation="nearest",
            )
            ax.set_title(f"head {head}")
            ax.set_xlabel("key position (attended to)")
            ax.set_ylabel("query position")
            _token_ticks(ax, labels, steps, keys)
        fig.suptitle(f"attention weights, layer {layer} ({steps} tokens)")
        if image is not None:
            fig.colorbar(image, ax=axes.ravel().tolist(), label="attention weight", shrink=0.8)
        out = Path(out_dir) / f"{prefix}_layer{layer}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, format="png")
        files.append(out)
    return files


def _token_ticks(ax: object, labels: Sequence[str], steps: int, keys: int) -> None:
    # The maps cover the first tokens of the text (the start of ``labels``).
    if len(labels) >= max(steps, keys) and max(steps, keys) <= MAX_TICK_LABELS:
        shown = [_printable(p) for p in labels]
        ax.set_xticks(range(keys), shown[:keys], rotation=90, fontsize=6)
        ax.set_yticks(range(steps), shown[:steps], fontsize=6)


def _printable(piece: str) -> str:
    """A token piece made visible: whitespace shown as symbols, empty pieces as a dot."""
    return piece.replace("\n", "↵").replace(" ", "·").replace("\t", "→") or "∅"


def plot_cross_attention(
    checkpoint: str | os.PathLike[str] | Seq2SeqRunner,
    source: str,
    out_png: str | os.PathLike[str],
    *,
    output: str | None = None,
    num_beams: int = 1,
) -> Path | None:
    """Heatmap of the decoder's last-layer cross-attention (heads averaged) for ``source``.

    ``output``: the text to force-decode (default: the model's own output). Returns the PNG's
    path, or None when matplotlib is missing.
    """

    runner = load_seq2seq(checkpoint)
    tokenizer, src_tokenizer = runner.tokenizer, runner.source_tokenizer
    if output is None:
        output = runner.run([source], num_beams=num_beams)[0]
    out_ids = tokenizer.encode(output) if output else []
    weights = cross_attention(
        runner.model, tokenizer, source, out_ids, source_tokenizer=src_tokenizer
    )  # (T, S)
    src_ids = encode_sources(src_tokenizer, [source], source_limit(runner.model))[0]
    fig = new_figure(figsize=(max(4.0, 0.4 * len(src_ids) + 2), max(3.0, 0.35 * len(out_ids) + 2)))
    if fig is None:
        logger.warning("matplotlib is not installed: no attention plot")
        return None
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(weights.cpu().numpy(), aspect="auto", cmap="viridis", vmin=0.0)
    ax.set_xticks(range(len(src_ids)))
    ax.set_xticklabels([_piece(src_tokenizer, i) for i in src_ids], rotation=90, fontsize=8)
    rows = [*out_ids, None]
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(["<eos>" if i is None else _piece(tokenizer, i) for i in rows], fontsize=8)
    ax.set_xlabel("source")
    ax.set_ylabel("output")
    fig.colorbar(image, ax=ax)
    return save_figure(fig, out_png)


def _piece(tokenizer: Any, token: int) -> str:
    try:
        return tokenizer.decode([token]).strip() or repr(tokenizer.decode([token]))
    except Exception:  # noqa: BLE001 - a label is never worth failing a plot
        return str(token)


__all__ = ["attention_maps", "plot_attention", "plot_cross_attention"]
