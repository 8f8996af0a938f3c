"""A run's counters (saved in ``trainer_state.json`` and restored on resume) and its result."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Progress:
    """The counters of a run; ``trainer_state.json``'s ``"progress"`` holds them as they are."""

    step: int = 0
    tokens: int = 0
    elapsed: float = 0.0
    train_seconds: float = 0.0
    best_val_loss: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    last_eval_step: int = -1
    last_eval_train_seconds: float = 0.0  # train_seconds at the last evaluation
    last_metrics: dict[str, Any] = field(default_factory=dict)
    best_metric: float | None = None  # train.early_stop_metric's best value (BLEU/ROUGE runs)

    def record_evaluation(self, metric: str, value: float, val_loss: float) -> bool:
        """Note an evaluation at the current step: ``value`` of the early-stopping ``metric``
        (``train.early_stop_metric``) and the validation loss. True when ``value`` improved on
        the best so far (the run then saves ``best``)."""
        best = self.best_val_loss if metric == "val_loss" else self.best_metric
        improved = better(metric, value, best)
        if improved and metric != "val_loss":
            self.best_metric = value
        if self.best_val_loss is None or val_loss < self.best_val_loss:
            self.best_val_loss = val_loss
        if improved:
            self.best_step = self.step
            self.evals_without_improvement = 0
        else:
            self.evals_without_improvement += 1
        self.last_eval_step = self.step
        self.last_eval_train_seconds = self.train_seconds
        return improved

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Progress:
        """Counters saved by this or an older version (unknown keys are ignored)."""
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class TrainResult:
    """What a finished (or interrupted) run reports."""

    steps: int
    tokens: int
    elapsed: float  # seconds, including evaluation and checkpointing
    best_val_loss: float | None
    final_metrics: dict[str, Any]
    out_dir: Path
    interrupted: bool = False
    tokens_per_sec: float = 0.0  # training tokens per second of training (evaluation excluded)
    stop_reason: str = ""
    merged_dir: Path | None = None  # set by api.finetune(merge=True): the merged checkpoint
    task: str = "lm"  # the run's train.task

    @property
    def metrics(self) -> dict[str, Any]:
        return self.final_metrics


def better(metric: str, value: float, best: float | None) -> bool:
    """True when ``value`` improves on ``best`` (loss: lower; BLEU/ROUGE: higher)."""
    if best is None or (isinstance(best, float) and math.isnan(best)):
        return True
    return value < best if metric == "val_loss" else value > best


__all__ = ["Progress", "TrainResult", "better"]
