"""Plots of a training run. matplotlib is an optional extra, imported only when a plot is drawn.

:func:`plot_loss_curve` reads a run's ``metrics.jsonl`` (one JSON object per line; ``"event":
"train"`` lines carry ``step`` and ``loss``, ``"event": "eval"`` lines ``step`` and ``val_loss``)
and draws training and validation loss against the optimizer step.

The other plots here serve the architecture comparison and the model analysis:
:func:`plot_validation_curves` (several runs' validation loss against training tokens and against
time) and :func:`plot_gradient_flow` (gradient norm against distance from the loss).
:func:`new_figure` / :func:`save_figure` are the shared way to draw: they return None, with a
logged hint, when matplotlib is missing, so no caller has to import it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MATPLOTLIB_HINT = (
    "matplotlib is not installed, so no plots were drawn; install it with "
    "pip install 'rnn2gpt[plots]' (or pip install matplotlib)"
)


def matplotlib_available() -> bool:
    """Whether plots can be drawn (matplotlib importable)."""
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        return False
    return True


def new_figure(
    figsize: tuple[float, float] = (7, 4.2), dpi: int = 120, layout: str | None = None
) -> Any | None:
    """A matplotlib ``Figure`` (no pyplot, no global backend), or None without matplotlib.

    ``layout="constrained"`` suits grids of heatmaps sharing a colour bar (then write the figure
    with ``fig.savefig``, not :func:`save_figure`, whose ``tight_layout`` would undo it).
    """
    try:
        # The object-oriented API needs no pyplot and no global backend switch.
        from matplotlib.figure import Figure
    except ImportError:
        logger.info(MATPLOTLIB_HINT)
        return None
    return Figure(figsize=figsize, dpi=dpi, layout=layout)


def save_figure(fig: Any, out_path: str | os.PathLike[str]) -> Path:
    """Lay out and write ``fig`` as PNG to ``out_path`` (parent folders created)."""
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The events of a ``metrics.jsonl`` file; unreadable lines (a torn last write) are skipped."""
    events = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict):
                events.append(event)
    return events


def loss_series(
    events: Iterable[Mapping[str, Any]],
) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(step, training loss) and (step, validation loss) points, in step order."""
    train, val = [], []
    for event in events:
        kind = event.get("event")
        if kind == "train" and _finite(event.get("loss")):
            train.append((int(event["step"]), float(event["loss"])))
        elif kind == "eval" and _finite(event.get("val_loss")):
            val.append((int(event["step"]), float(event["val_loss"])))
    return sorted(train), sorted(val)


def read_loss_series(
    metrics: str | os.PathLike[str] | Iterable[Mapping[str, Any]],
) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """:func:`loss_series` of a ``metrics.jsonl`` path or of its parsed events."""
    events = read_metrics(metrics) if isinstance(metrics, str | os.PathLike) else list(metrics)
    return loss_series(events)


def plot_loss_curve(
    metrics: str | os.PathLike[str] | Iterable[Mapping[str, Any]],
    out_path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> Path | None:
    """Draw training/validation loss against step into ``out_path`` (PNG).

    ``metrics`` is a ``metrics.jsonl`` path or its parsed events. Returns the written path, or
    None when matplotlib is not installed or there is nothing to draw (both logged).
    """
    train, val = read_loss_series(metrics)
    if not train and not val:
        logger.info("no losses to plot yet; skipping the loss curve")
        return None
    fig = new_figure()
    if fig is None:
        return None
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train), label="train", color="tab:blue", linewidth=1.2, alpha=0.85)
    if val:
        ax.plot(*zip(*val), label="validation", color="tab:orange", marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.set_title(title or "loss")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return save_figure(fig, out_path)


def validation_series(events: Iterable[Mapping[str, Any]]) -> list[tuple[int, float, float]]:
    """(training tokens, elapsed seconds, validation loss) of each evaluation, in step order."""
    points = []
    for event in events:
        if event.get("event") == "eval" and _finite(event.get("val_loss")):
            points.append(
                (
                    int(event.get("step", 0)),
                    int(event.get("tokens", 0)),
                    float(event.get("elapsed", 0.0)),
                    float(event["val_loss"]),
                )
            )
    return [p[1:] for p in sorted(points)]


def plot_validation_curves(
    runs: Mapping[str, str | os.PathLike[str] | Iterable[Mapping[str, Any]]],
    out_path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> Path | None:
    """Validation loss of several runs, against training tokens (left) and time (right).

    ``runs`` maps a label (shown in the legend) to a ``metrics.jsonl`` path or its events.
    Returns the written PNG, or None without matplotlib or without any evaluation to draw.
    """
    series = {}
    for label, metrics in runs.items():
        events = read_metrics(metrics) if isinstance(metrics, str | os.PathLike) else metrics
        points = validation_series(events)
        if points:
            series[label] = points
    if not series:
        logger.info("no validation losses to plot")
        return None
    fig = new_figure(figsize=(11, 4.2))
    if fig is None:
        return None
    by_tokens, by_time = fig.subplots(1, 2, sharey=True)
    for label, points in series.items():
        tokens, seconds, losses = zip(*points)
        by_tokens.plot(tokens, losses, marker="o", markersize=3, label=label)
        by_time.plot(seconds, losses, marker="o", markersize=3, label=label)
    by_tokens.set_xlabel("training tokens")
    by_tokens.set_ylabel("validation loss (nats per token)")
    by_tokens.set_title("validation loss vs training tokens")
    by_time.set_xlabel("wall-clock time (s, evaluation included)")
    by_time.set_title("validation loss vs time")
    for ax in (by_tokens, by_time):
        ax.grid(True, alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return save_figure(fig, out_path)


def plot_gradient_flow(
    flows: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    out_path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> Path | None:
    """Mean gradient norm against distance from the loss, one line per label, log y axis.

    ``flows`` maps a label to ``(distances, norms)``; distance 0 is the position whose
    prediction the loss scores. Returns the PNG, or None without matplotlib.
    """
    fig = new_figure()
    if fig is None:
        return None
    ax = fig.add_subplot()
    for label, (distances, norms) in flows.items():
        # Zeros (no path from the loss, e.g. past the context) cannot sit on a log axis.
        points = [(d, n) for d, n in zip(distances, norms) if n > 0]
        if points:
            ax.plot(*zip(*points), marker=".", label=label)
    ax.set_yscale("log")
    ax.set_xlabel("distance from the loss (tokens back)")
    ax.set_ylabel("mean ‖∂loss / ∂input embedding‖ (log scale)")
    ax.set_title(title or "gradient flow through time")
    ax.grid(True, which="both", alpha=0.3)
    if flows:
        ax.legend()
    return save_figure(fig, out_path)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and value == value and abs(value) != float("inf")


__all__ = [
    "MATPLOTLIB_HINT",
    "loss_series",
    "matplotlib_available",
    "new_figure",
    "plot_gradient_flow",
    "plot_loss_curve",
    "plot_validation_curves",
    "read_loss_series",
    "read_metrics",
    "save_figure",
    "validation_series",
]
