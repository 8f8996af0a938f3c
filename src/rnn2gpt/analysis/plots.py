"""Plots of a training run. matplotlib is an optional extra, imported only when a plot is drawn.

:func:`plot_loss_curve` reads a run's ``metrics.jsonl`` (one JSON object per line; ``"event":
"train"`` lines carry ``step`` and ``loss``, ``"event": "eval"`` lines ``step`` and ``val_loss``)
and draws training and validation loss against the optimizer step.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


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
    events = read_metrics(metrics) if isinstance(metrics, str | os.PathLike) else list(metrics)
    train, val = loss_series(events)
    if not train and not val:
        logger.info("no losses to plot yet; skipping the loss curve")
        return None
    try:
        # The object-oriented API needs no pyplot and no global backend switch.
        from matplotlib.figure import Figure
    except ImportError:
        logger.info("matplotlib is not installed; skipping the loss curve (pip install matplotlib)")
        return None

    fig = Figure(figsize=(7, 4.2), dpi=120)
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
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and value == value and abs(value) != float("inf")


__all__ = ["loss_series", "plot_loss_curve", "read_metrics"]
