"""What a run will do, said before it starts: the model, the budget, the precision, and an
estimate of its time on this machine.

The estimate is arithmetic, not a promise: training a model of N parameters costs about 6 N
floating-point operations per token (forward and backward through every weight once), and a
training step of these models runs at about half the rate of one mid-sized matmul, measured
here in about 0.05 s (:func:`rnn2gpt.hardware.matmul_gflops`). Measured on an AVX512-BF16 Xeon
in fp32: the default 6-layer GPT (2.7M parameters) trains at 7.1k tokens/s = 116 GFLOP/s, 58%
of that matmul's 200 GFLOP/s. The progress bar's own estimate takes over once steps are timed.
"""

from __future__ import annotations

import torch

from ..config import TrainConfig
from ..hardware import matmul_gflops
from .optim import progress_fraction

# Share of the measured matmul's FLOP rate that a training step of these models reaches.
TRAINING_EFFICIENCY = 0.5
# An evaluation batch costs a forward pass: about a third of a training step's FLOPs.
_EVAL_BATCH_SHARE = 1 / 3


def expected_tokens_per_second(parameters: int, dtype: torch.dtype | None) -> float:
    """Training tokens per second to expect for a model of ``parameters`` in ``dtype``
    (None = fp32)."""
    rate = matmul_gflops(dtype or torch.float32) * 1e9 * TRAINING_EFFICIENCY
    return rate / max(6 * parameters, 1)


def planned_steps(step_seconds: float, tokens_per_step: int, train: TrainConfig) -> float:
    """The optimizer steps the first budget to run out allows, at ``step_seconds`` per step."""
    steps = float("inf")
    if train.max_steps > 0:
        steps = train.max_steps
    if train.max_tokens > 0:
        steps = min(steps, train.max_tokens / tokens_per_step)
    if train.max_time > 0:
        steps = min(steps, train.max_time / step_seconds)
    return steps


def planned_train_seconds(
    parameters: int, tokens_per_step: int, train: TrainConfig, dtype: torch.dtype | None
) -> float:
    """About how many seconds of training steps the run's budget means on this machine."""
    step_seconds = tokens_per_step / expected_tokens_per_second(parameters, dtype)
    return planned_steps(step_seconds, tokens_per_step, train) * step_seconds


def describe_plan(
    *,
    arch: str,
    parameters: int,
    tokens_per_step: int,
    train: TrainConfig,
    dtype: torch.dtype | None,
    precision_reason: str,
) -> str:
    """One paragraph for the run's start: model, budget, precision and the expected time."""
    rate = expected_tokens_per_second(parameters, dtype)
    step_seconds = tokens_per_step / rate
    steps = planned_steps(step_seconds, tokens_per_step, train)
    budgets = []
    if train.max_steps > 0:
        budgets.append(f"{train.max_steps:,} steps")
    if train.max_tokens > 0:
        budgets.append(f"{train.max_tokens:,} tokens")
    if train.max_time > 0:
        budgets.append(f"{duration(train.max_time)} of training")
    train_seconds = steps * step_seconds
    evaluations = steps / train.eval_interval + 1
    if train.eval_interval_seconds > 0:
        evaluations = max(evaluations, train_seconds / train.eval_interval_seconds + 1)
    eval_batches = train.eval_batches or 50  # 0 = the whole validation text: guess 50
    eval_seconds = evaluations * eval_batches * step_seconds * _EVAL_BATCH_SHARE
    return (
        f"plan: {arch} of {parameters:,} parameters; budget {' or '.join(budgets)} (whichever "
        f"comes first); precision {precision_reason}; expect about {rate:,.0f} tokens/s here, "
        f"about {steps:,.0f} steps, {duration(train_seconds + eval_seconds)} in all with "
        "evaluation (an estimate from a quick matmul measurement)"
    )


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 120:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def seconds_left(step: int, elapsed: float, tokens: int, train: TrainConfig) -> float | None:
    """Seconds of training left, from how far the run is through its budget (steps, tokens or
    time, whichever is furthest); None before anything is done."""
    # warmup_steps=0 rather than a copy of the config: dataclasses.replace validated the whole
    # config again on every log line (70 us).
    done = progress_fraction(step, elapsed, tokens, train, warmup_steps=0)
    if done <= 0 or elapsed <= 0:
        return None
    return elapsed * (1.0 - done) / done


__all__ = [
    "TRAINING_EFFICIENCY",
    "describe_plan",
    "duration",
    "expected_tokens_per_second",
    "planned_steps",
    "planned_train_seconds",
    "seconds_left",
]
