"""A run's loss curve as SVG, written by hand: no plotting library, a few milliseconds.

Every training run draws its curve when it ends (``rnn2gpt train``, :func:`rnn2gpt.api.train`).
Drawn with matplotlib, importing and rendering it took 1.2-1.5 s of a 90 s run on an AMD EPYC
(benchmarks/RESULTS.md, issue 14's ninth part), longer than the run's own start. An SVG is text:
axes, ticks, grid, the two series and a legend, crisp at any size, opened by any browser.
:func:`rnn2gpt.analysis.plot_loss_curve` still draws the same series as a PNG with matplotlib.

Layout (pixels): an 840 x 504 canvas (the PNG's 7 x 4.2 inches at 120 dpi), the plot inside
:data:`MARGINS`. A long training series keeps, for each pixel column, its first, lowest, highest
and last point, so spikes stay visible and the file stays small.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from .plots import read_loss_series

WIDTH, HEIGHT = 840, 504
MARGINS = {"left": 78, "right": 24, "top": 44, "bottom": 56}
TRAIN_COLOR, VAL_COLOR = "#1f77b4", "#ff7f0e"  # blue and orange, as the PNG

Point = tuple[float, float]


def nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """About ``count`` round values (1, 2 or 5 times a power of ten apart) covering
    [low, high]."""
    if not high > low:
        high = low + 1.0
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks, value = [], first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 12))
    return ticks


def _label(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e6 else f"{value:.3g}"


def thin(points: Sequence[Point], columns: int, x_of) -> list[Point]:
    """``points`` (in x order) with at most four per pixel column: its first, lowest, highest
    and last, in x order."""
    if len(points) <= 2 * columns:
        return list(points)
    kept: list[Point] = []
    bucket: list[Point] = []
    column = None
    for point in [*points, (math.inf, 0.0)]:  # the sentinel closes the last column
        here = int(x_of(point[0])) if math.isfinite(point[0]) else None
        if bucket and here != column:
            chosen = {0, len(bucket) - 1}
            chosen.add(min(range(len(bucket)), key=lambda i: bucket[i][1]))
            chosen.add(max(range(len(bucket)), key=lambda i: bucket[i][1]))
            kept.extend(bucket[i] for i in sorted(chosen))
            bucket = []
        column = here
        bucket.append(point)
    return kept


def _tick(
    kind: str,
    value: float,
    line: tuple[float, float, float, float],
    at: Point,
    anchor: str,
) -> list[str]:
    """A grid ``line`` (x1, y1, x2, y2) through a tick and its label at ``at``."""
    x1, y1, x2, y2 = line
    return [
        f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="#ddd"/>',
        f'<text class="{kind}" x="{at[0]:.1f}" y="{at[1]:.1f}" text-anchor="{anchor}">'
        f"{_label(value)}</text>",
    ]


def loss_curve_svg(train: Sequence[Point], val: Sequence[Point], title: str = "loss") -> str:
    """The SVG text of training ``train`` and validation ``val`` (step, loss) points."""
    everything = [*train, *val]
    left, top = MARGINS["left"], MARGINS["top"]
    right, bottom = WIDTH - MARGINS["right"], HEIGHT - MARGINS["bottom"]
    x_ticks = nice_ticks(min(p[0] for p in everything), max(p[0] for p in everything))
    low, high = min(p[1] for p in everything), max(p[1] for p in everything)
    pad = (high - low) * 0.05 or 0.05
    y_ticks = nice_ticks(low - pad, high + pad, 8)
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]

    def x_of(step: float) -> float:
        return left + (step - x0) / (x1 - x0) * (right - left)

    def y_of(loss: float) -> float:
        return bottom - (loss - y0) / (y1 - y0) * (bottom - top)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="13">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text class="title" x="{(left + right) / 2:.1f}" y="{top - 16}" text-anchor="middle" '
        f'font-size="15">{escape(title)}</text>',
    ]
    for tick in x_ticks:
        x = x_of(tick)
        out += _tick("x-tick", tick, (x, top, x, bottom), (x, bottom + 18), "middle")
    for tick in y_ticks:
        y = y_of(tick)
        out += _tick("y-tick", tick, (left, y, right, y), (left - 8, y + 4), "end")
    out.append(
        f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" '
        'fill="none" stroke="#333"/>'
    )
    out.append(
        f'<text x="{(left + right) / 2:.1f}" y="{HEIGHT - 14}" text-anchor="middle">step</text>'
    )
    out.append(
        f'<text x="18" y="{(top + bottom) / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 18 {(top + bottom) / 2:.1f})">cross-entropy (nats per token)</text>'
    )
    legend = []
    if train:
        points = " ".join(
            f"{x_of(s):.1f},{y_of(v):.1f}" for s, v in thin(train, right - left, x_of)
        )
        out.append(
            f'<polyline class="train" points="{points}" fill="none" stroke="{TRAIN_COLOR}" '
            'stroke-width="1.2" stroke-opacity="0.85"/>'
        )
        legend.append(("train", TRAIN_COLOR))
    if val:
        points = " ".join(f"{x_of(s):.1f},{y_of(v):.1f}" for s, v in val)
        out.append(
            f'<polyline class="validation" points="{points}" fill="none" stroke="{VAL_COLOR}" '
            'stroke-width="1.5"/>'
        )
        out.extend(
            f'<circle class="validation" cx="{x_of(s):.1f}" cy="{y_of(v):.1f}" r="3" '
            f'fill="{VAL_COLOR}"/>'
            for s, v in val
        )
        legend.append(("validation", VAL_COLOR))
    for row, (name, color) in enumerate(legend):
        y = top + 18 + 20 * row
        out.append(
            f'<line x1="{right - 120}" y1="{y - 4}" x2="{right - 96}" y2="{y - 4}" '
            f'stroke="{color}" stroke-width="2"/>'
        )
        out.append(f'<text class="legend" x="{right - 90}" y="{y}">{name}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_loss_curve_svg(
    metrics: str | os.PathLike[str] | Iterable[Mapping[str, Any]],
    out_path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> Path | None:
    """Draw training and validation loss against step into ``out_path`` (SVG), atomically.

    ``metrics`` is a ``metrics.jsonl`` path or its parsed events. Returns the written path, or
    None when there is nothing to draw.
    """
    train, val = read_loss_series(metrics)
    if not train and not val:
        return None
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_text(loss_curve_svg(train, val, title or "loss"), encoding="utf-8")
    os.replace(partial, out)
    return out


__all__ = ["loss_curve_svg", "nice_ticks", "thin", "write_loss_curve_svg"]
