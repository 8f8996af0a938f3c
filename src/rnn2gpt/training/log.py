"""What a run writes as it goes: ``metrics.jsonl`` (one JSON object per event) and the progress
bar on stderr, with log lines routed around it.

Events: ``train`` (mean loss of the steps since the last one, learning rate, tokens/s), ``eval``
(validation metrics), ``test``, ``interrupt`` and ``end``. Every event carries ``step``,
``tokens`` and ``elapsed``. A resumed run keeps the events that led up to its step.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from ..config import TrainConfig

METRICS_FILE = "metrics.jsonl"
# A run that logs every step wrote and flushed a line per step: about 0.1 ms of a 36 ms step
# (benchmarks/RESULTS.md). Lines are flushed at least this often, and at every other event.
FLUSH_SECONDS = 1.0


class MetricsLog:
    """``metrics.jsonl`` of a run, open for appending (or a no-op on ranks other than 0)."""

    def __init__(self, out_dir: Path, *, resumed_step: int, enabled: bool = True) -> None:
        self.file: TextIO | None = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / METRICS_FILE
        if path.exists():
            kept = []
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                # A new run starts a new log; a resumed one keeps what led up to its step.
                if resumed_step > 0 and isinstance(event, dict):
                    if event.get("step", 0) <= resumed_step and event.get("event") not in (
                        "interrupt",
                        "end",
                        "test",
                    ):
                        kept.append(line)
            path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        self.file = open(path, "a", encoding="utf-8")
        self.flushed = time.monotonic()

    def write(self, kind: str, step: int, tokens: int, elapsed: float, **values: Any) -> None:
        """Append one event. Any other event than ``train`` is flushed at once; a ``train``
        event with the first write :data:`FLUSH_SECONDS` after the last flush, or at close."""
        if self.file is None:
            return
        record = {"event": kind, "step": step, "tokens": tokens, "elapsed": round(elapsed, 4)}
        self.file.write(json.dumps({**record, **values}) + "\n")
        now = time.monotonic()
        if kind != "train" or now - self.flushed >= FLUSH_SECONDS:
            self.file.flush()
            self.flushed = now

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def progress_bar(train: TrainConfig, initial: int, *, enabled: bool) -> Any:
    """A tqdm bar of steps on stderr (with a total when the budget is steps only)."""
    from tqdm.auto import tqdm

    only_steps = train.max_steps > 0 and train.max_time <= 0 and train.max_tokens <= 0
    return tqdm(
        total=train.max_steps if only_steps else None,
        initial=initial,
        unit="step",
        file=sys.stderr,
        disable=not enabled,
        dynamic_ncols=True,
        leave=True,
    )


def logging_redirect(enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """Route log lines through tqdm so they do not tear the progress bar."""
    if not enabled:
        return contextlib.nullcontext()
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm
    except ImportError:  # pragma: no cover - very old tqdm
        return contextlib.nullcontext()
    return logging_redirect_tqdm()


def format_seconds(seconds: float) -> str:
    """``"4:05"`` or ``"1:02:03"``."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


__all__ = ["METRICS_FILE", "MetricsLog", "format_seconds", "logging_redirect", "progress_bar"]
