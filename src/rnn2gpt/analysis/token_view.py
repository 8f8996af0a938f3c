"""Per-token probability and entropy of a text under a model: a coloured HTML view and a table.

Token t is scored by the model's distribution after tokens < t: its probability
``p_t = softmax(logits_{t-1})[x_t]``, its surprisal ``-log2 p_t`` (bits) and the entropy of that
whole distribution ``H_t = -sum_v p(v) log2 p(v)`` (bits; how unsure the model was before seeing
the token). A tokenizer with a start token (bos) gets it prepended, so the first token is scored
too; otherwise the first token has no context and stays unscored.

Texts longer than a GPT's context are scored with overlapping windows (each new window keeps half
a context of earlier tokens), the usual sliding-window evaluation; recurrent models read the whole
text in one pass.
"""

from __future__ import annotations

import csv
import html
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..models.base import eval_mode, model_device
from ..tokenizers.base import Tokenizer
from .common import token_pieces
from .report import Report

LOG2 = math.log(2.0)


@dataclass(frozen=True)
class TokenScore:
    """One token of the text and how the model saw it coming.

    ``prob`` and ``entropy`` (nats) are None for an unscored first token. ``top`` holds the
    model's most likely tokens at this position: (id, text piece, probability).
    """

    position: int
    token_id: int
    piece: str
    prob: float | None
    entropy: float | None
    top: tuple[tuple[int, str, float], ...] = ()

    @property
    def surprisal_bits(self) -> float | None:
        if self.prob is None:
            return None
        return -math.log2(self.prob) if self.prob > 0 else math.inf

    @property
    def entropy_bits(self) -> float | None:
        return None if self.entropy is None else self.entropy / LOG2


@torch.inference_mode()
def next_token_log_probs(model: nn.Module, ids: Sequence[int]) -> torch.Tensor:
    """Log-probabilities (N - 1, V) of the model's prediction after each of ``ids[:-1]``.

    Row t is the distribution over the token at position t + 1. Longer than ``max_context``:
    sliding windows, each new one starting with half a context of earlier tokens.
    """
    seq = torch.tensor(list(ids), dtype=torch.long, device=model_device(model))
    n = len(seq)
    if n < 2:
        return torch.zeros(0, 0)
    window = model.max_context or n
    stride = max(1, window // 2)
    parts = []
    with eval_mode(model):
        done, start = 1, 0  # done = the next target position still to score
        while done < n:
            end = min(start + window, n)
            logits, _ = model(seq[None, start:end], None)  # (1, L, V)
            parts.append(F.log_softmax(logits[0, done - 1 - start : end - 1 - start].float(), -1))
            done = end
            start = end - window + stride
    return torch.cat(parts).cpu()


def score_text(
    model: nn.Module,
    tokenizer: Tokenizer,
    text: str,
    *,
    top_k: int = 3,
    max_tokens: int = 0,
) -> list[TokenScore]:
    """Score every token of ``text`` (the first ``max_tokens`` of them when > 0)."""
    ids = tokenizer.encode(text)
    if max_tokens > 0:
        ids = ids[:max_tokens]
    if not ids:
        return []
    bos = tokenizer.bos_id
    context = [bos] if bos is not None else []
    log_probs = next_token_log_probs(model, context + ids)  # (len(context) + N - 1, V)
    offset = len(context) - 1  # log_probs row scoring ids[t] is t + offset
    pieces = token_pieces(tokenizer, ids)
    scores = []
    for t, token in enumerate(ids):
        row = t + offset
        if row < 0:
            scores.append(TokenScore(t, token, pieces[t], None, None))
            continue
        lp = log_probs[row]
        probs = lp.exp()
        entropy = float(-(probs * lp).sum())
        k = min(top_k, probs.numel())
        top_p, top_i = probs.topk(k)
        top = tuple((int(i), _piece(tokenizer, int(i)), float(p)) for p, i in zip(top_p, top_i))
        scores.append(TokenScore(t, token, pieces[t], float(probs[token]), entropy, top))
    return scores


def summary(scores: Sequence[TokenScore]) -> dict[str, float | int | None]:
    """Mean surprisal and entropy (bits per token), bits per character, and counts."""
    scored = [s for s in scores if s.prob is not None]
    if not scored:
        return {
            "tokens": len(scores),
            "scored": 0,
            "mean_surprisal_bits": None,
            "mean_entropy_bits": None,
            "bits_per_char": None,
        }
    total_bits = sum(s.surprisal_bits for s in scored)
    chars = sum(len(s.piece) for s in scored)
    return {
        "tokens": len(scores),
        "scored": len(scored),
        "mean_surprisal_bits": total_bits / len(scored),
        "mean_entropy_bits": sum(s.entropy_bits for s in scored) / len(scored),
        "bits_per_char": total_bits / chars if chars else None,
    }


# --------------------------------------------------------------------------- views


def colour(prob: float | None) -> str:
    """Background colour of a token: red (improbable) through yellow to green (expected)."""
    if prob is None:
        return "#e8e8e8"
    return f"hsl({120.0 * max(0.0, min(prob, 1.0)):.0f}, 75%, 78%)"


def token_html(scores: Sequence[TokenScore]) -> str:
    """The text as coloured spans (background = probability; hover: the numbers)."""
    spans = []
    for s in scores:
        if s.prob is None:
            tip = "first token: no context to predict it from"
        else:
            alternatives = ", ".join(f"{p!r} {q:.3f}" for _, p, q in s.top)
            tip = (
                f"p = {s.prob:.4f}, surprisal {s.surprisal_bits:.2f} bits, entropy "
                f"{s.entropy_bits:.2f} bits; most likely: {alternatives}"
            )
        shown = html.escape(s.piece).replace("\n", "↵\n")
        spans.append(
            f'<span class="tok" style="background:{colour(s.prob)}" '
            f'title="{html.escape(tip, quote=True)}">{shown}</span>'
        )
    legend = "".join(
        f'<span class="tok" style="background:{colour(p)}">p = {p:g}</span> '
        for p in (0.0, 0.25, 0.5, 0.75, 1.0)
    )
    return (
        "<style>.tokens{white-space:pre-wrap;font-family:ui-monospace,monospace;"
        "line-height:1.9;border:1px solid #ddd;padding:0.8rem}"
        ".tok{border-radius:2px;padding:1px 0}</style>\n"
        f"<p>colour = probability the model gave the token: {legend}</p>\n"
        f'<div class="tokens">{"".join(spans)}</div>'
    )


def table_rows(scores: Sequence[TokenScore]) -> list[list[str]]:
    """Rows of the per-token table (see :data:`TABLE_HEADERS`)."""
    rows = []
    for s in scores:
        scored = s.prob is not None
        rows.append(
            [
                str(s.position),
                repr(s.piece),
                str(s.token_id),
                f"{s.prob:.4f}" if scored else "n/a",
                f"{s.surprisal_bits:.2f}" if scored else "n/a",
                f"{s.entropy_bits:.2f}" if scored else "n/a",
                ", ".join(f"{p!r} {q:.3f}" for _, p, q in s.top),
            ]
        )
    return rows


TABLE_HEADERS = (
    "position",
    "token",
    "id",
    "probability",
    "surprisal (bits)",
    "entropy (bits)",
    "most likely tokens (probability)",
)


def token_report(scores: Sequence[TokenScore], title: str = "Per-token probability") -> Report:
    """A report with the summary, the coloured text and the per-token table."""
    stats = summary(scores)
    report = Report(title)
    if stats["scored"]:
        bpc = stats["bits_per_char"]
        report.paragraph(
            f"{stats['scored']} of {stats['tokens']} tokens scored; mean surprisal "
            f"{stats['mean_surprisal_bits']:.3f} bits per token, mean entropy "
            f"{stats['mean_entropy_bits']:.3f} bits per token"
            + (f", {bpc:.3f} bits per character." if bpc is not None else ".")
        )
    report.html(token_html(scores), markdown="(the coloured view is in the HTML file)")
    report.heading("Tokens")
    report.table(TABLE_HEADERS, table_rows(scores))
    return report


def write_token_view(
    scores: Sequence[TokenScore], out_dir: str | os.PathLike[str], *, stem: str = "tokens"
) -> tuple[Path, Path, Path]:
    """Write ``STEM.html`` (coloured view + table), ``STEM.md`` and ``STEM.csv``."""
    md_path, html_path = token_report(scores).write(out_dir, stem)
    csv_path = Path(out_dir) / f"{stem}.csv"
    with open(csv_path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["position", "token", "id", "probability", "surprisal_bits", "entropy_bits"]
        )
        for s in scores:
            writer.writerow(
                [s.position, s.piece, s.token_id, s.prob, s.surprisal_bits, s.entropy_bits]
            )
    return html_path, md_path, csv_path


def _piece(tokenizer: Tokenizer, token: int) -> str:
    try:
        return tokenizer.decode([token])
    except Exception:  # noqa: BLE001 - a display label is never worth failing the view
        return f"<{token}>"


__all__ = [
    "TABLE_HEADERS",
    "TokenScore",
    "colour",
    "next_token_log_probs",
    "score_text",
    "summary",
    "token_html",
    "token_report",
    "write_token_view",
]
