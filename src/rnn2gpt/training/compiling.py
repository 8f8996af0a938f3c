"""``torch.compile`` for a training run: ``train.compile`` = ``auto`` | ``true`` | ``false``.

``true`` compiles the model before the first step and ``false`` never does. ``auto`` (the
default) compiles only where it pays for the run, and finds out by measuring:

- **Only a model without recurrent layers is a candidate** (:func:`is_recurrent`). A recurrent
  model spends its step inside one fused oneDNN kernel per layer that the compiler calls as it
  is, with nothing to fuse around it; its explicit cells would be unrolled over every time step.
- **Only a run long enough to pay back.** Compiling the step of a small GPT takes 15-35 s on two
  cores (the nanoGPT size, measured: 35 s cold, 17 s from Inductor's cache) and gains little on a
  CPU (0.9-1.1x measured for that model, fp32, on AVX-512 and emulated AVX2). So the planned
  training time must be at least :data:`AUTO_MIN_SECONDS`, which keeps a cold compile within
  about 3% of the budget.
- **A C++ compiler must be present**: Inductor's CPU backend writes C++.
- **Then a trial, inside the run.** After :data:`WARMUP_STEPS` eager steps, :data:`TRIAL_STEPS`
  more are timed; the model is compiled (the next step pays the compile) and as many compiled
  steps are timed. The compiled model is kept only when its median step is at least
  :data:`MIN_GAIN` times faster; otherwise the run goes on eagerly. Every trial step is a real
  training step: nothing is thrown away but the compile time. Under DDP every rank keeps the
  compiled model only when every rank measured the gain.

The compile time is reported (the log, and a ``compile`` event in ``metrics.jsonl``) and counts
in the run's time like every step. Inductor caches compiled graphs on disk
(``TORCHINDUCTOR_CACHE_DIR``; by default ``/tmp/torchinductor_<user>/<cpu capability>``, see
:func:`~rnn2gpt.hardware.compile_cache_per_capability`), so the next run of the same model
compiles in about half the time.
"""

from __future__ import annotations

import logging
import os
import shutil
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from ..hardware import compile_cache_per_capability
from .plan import duration

logger = logging.getLogger(__name__)

# Planned training time below which auto does not try to compile (seconds).
AUTO_MIN_SECONDS = 1200.0
# Eager steps before the trial starts timing (first-step allocations, oneDNN kernel creation).
WARMUP_STEPS = 5
# Steps timed on each side of the trial.
TRIAL_STEPS = 20
# Compiled steps run before those timed (recompiles for a second input shape land here).
SETTLE_STEPS = 2
# The compiled model's median step must be this many times faster than the eager one to stay.
MIN_GAIN = 1.05


class CompileChoice(NamedTuple):
    """What ``train.compile`` resolves to before the first step, and why."""

    mode: str  # "eager", "compiled" (from the start) or "trial" (auto: measure, then decide)
    reason: str


def cpp_compiler() -> str | None:
    """The C++ compiler Inductor would call, or None when there is none."""
    for name in ("g++", "c++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    return None


def is_recurrent(model: nn.Module) -> bool:
    """Whether ``model`` runs recurrent layers (PyTorch's fused RNN/LSTM/GRU, or the explicit
    cells of a model that carries its state), read from the model, never from its arch name."""
    if getattr(model, "carries_state", False):
        return True
    return any(isinstance(module, nn.RNNBase) for module in model.modules())


def compile_choice(setting: str, model: nn.Module, planned_seconds: float) -> CompileChoice:
    """What ``train.compile`` (auto | true | false) means for this run, without measuring yet.

    Args:
        setting: ``train.compile``.
        model: the model to train (a recurrent one is never compiled by auto).
        planned_seconds: the training time the run's budget means here
            (:func:`~rnn2gpt.training.plan.planned_train_seconds`).
    """
    if setting == "true":
        return CompileChoice("compiled", "on (as asked)")
    if setting == "false":
        return CompileChoice("eager", "off (as asked)")
    if is_recurrent(model):
        return CompileChoice(
            "eager",
            "off (auto: a recurrent model spends its step in recurrent kernels that compiling "
            "cannot speed up)",
        )
    if planned_seconds < AUTO_MIN_SECONDS:
        return CompileChoice(
            "eager",
            f"off (auto: about {duration(planned_seconds)} of training planned; compiling takes "
            f"15-35 s and is tried only in runs of {duration(AUTO_MIN_SECONDS)} or more)",
        )
    if cpp_compiler() is None:
        return CompileChoice(
            "eager", "off (auto: no C++ compiler (g++, c++ or clang++) for torch.compile)"
        )
    return CompileChoice(
        "trial",
        f"auto: will time {TRIAL_STEPS} eager and {TRIAL_STEPS} compiled steps after "
        f"{WARMUP_STEPS} steps, and keep the faster",
    )


def inductor_cache_dir() -> Path:
    """Where Inductor caches compiled graphs (``TORCHINDUCTOR_CACHE_DIR``, by default
    ``/tmp/torchinductor_<user>``)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        return Path(cache_dir())
    except ImportError:  # pragma: no cover - a PyTorch that moved it
        return Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR", "the default cache"))


class StepCompiler:
    """Holds the module the training step runs (eager or compiled) and carries out the choice.

    The trainer runs its step through :attr:`module` and reports each step's wall time to
    :meth:`after_step`, which moves the trial along (auto) or measures the compile (true).
    """

    def __init__(
        self,
        eager: nn.Module,
        choice: CompileChoice,
        *,
        agree: Callable[[bool], bool] = lambda flag: flag,
        event: Callable[..., None] = lambda kind, **values: None,
        device: torch.device | str = "cpu",
    ) -> None:
        """
        Args:
            eager: the model as the step calls it (DDP-wrapped where distributed).
            choice: from :func:`compile_choice`.
            agree: under DDP, True only if the flag is True on every rank.
            event: writes a ``metrics.jsonl`` event (kind, **values).
            device: the run's device (steps on a GPU are synchronised before they are timed).
        """
        self.eager = eager
        self.choice = choice
        self.agree = agree
        self.event = event
        self.device = torch.device(device)
        self.phase = choice.mode  # eager | compiled | trial
        self.steps_seen = 0
        self.eager_times: list[float] = []
        self.compiled_times: list[float] = []
        self.compile_seconds: float | None = None
        self.compiled: nn.Module | None = None
        if choice.mode == "compiled":
            self.compiled = self._compile()
        self.module: nn.Module = self.compiled if self.compiled is not None else eager

    @property
    def trial_steps_left(self) -> int:
        """Steps until the trial decides (0 when there is no trial, or it is over)."""
        if self.phase != "trial":
            return 0
        return WARMUP_STEPS + 2 * TRIAL_STEPS + 1 + SETTLE_STEPS - self.steps_seen

    def synchronize(self) -> None:
        """Wait for queued GPU work while steps are being timed (the trial, or the compiling
        first step), so a step's wall time is its real time; never a host sync after that."""
        timing = self.phase == "trial" or (self.phase == "compiled" and self.steps_seen == 0)
        if timing and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def after_step(self, seconds: float) -> None:
        """Account for one finished optimizer step of ``seconds`` wall time."""
        index = self.steps_seen
        self.steps_seen += 1
        if self.phase == "compiled" and index == 0:
            self._report_compile(seconds, kept=True, speedup=None)
            return
        if self.phase != "trial":
            return
        eager_end = WARMUP_STEPS + TRIAL_STEPS
        if WARMUP_STEPS <= index < eager_end:
            self.eager_times.append(seconds)
            if index == eager_end - 1:
                logger.info("compile trial: compiling the model (eager steps timed)")
                self.compiled = self._compile()
                self.module = self.compiled
        elif index == eager_end:
            # This step paid for the compile; an eager step's time is what it would have cost.
            self.compile_seconds = max(seconds - statistics.median(self.eager_times), 0.0)
        elif index > eager_end + SETTLE_STEPS:
            self.compiled_times.append(seconds)
            if len(self.compiled_times) == TRIAL_STEPS:
                self._decide()

    # ------------------------------------------------------------------ internals

    def _compile(self) -> nn.Module:
        compile_cache_per_capability()
        return torch.compile(self.eager)

    def _decide(self) -> None:
        eager = statistics.median(self.eager_times)
        compiled = statistics.median(self.compiled_times)
        speedup = eager / max(compiled, 1e-12)
        keep = self.agree(speedup >= MIN_GAIN)
        self.phase = "compiled" if keep else "eager"
        if not keep:
            self.module = self.eager
            self.compiled = None
        self._report_compile(self.compile_seconds or 0.0, kept=keep, speedup=speedup)
        logger.info(
            "compile: %s (auto: compiled steps measured %.2fx the eager ones, %.1f vs %.1f ms; "
            "%.2fx needed)",
            "on" if keep else "off",
            speedup,
            compiled * 1e3,
            eager * 1e3,
            MIN_GAIN,
        )

    def _report_compile(self, seconds: float, *, kept: bool, speedup: float | None) -> None:
        self.compile_seconds = seconds
        logger.info(
            "compiled the model in %.1f s (Inductor cache: %s)", seconds, inductor_cache_dir()
        )
        values: dict[str, Any] = {"seconds": seconds, "kept": kept}
        if speedup is not None:
            values["speedup"] = speedup
        self.event("compile", **values)


__all__ = [
    "AUTO_MIN_SECONDS",
    "MIN_GAIN",
    "TRIAL_STEPS",
    "WARMUP_STEPS",
    "CompileChoice",
    "StepCompiler",
    "compile_choice",
    "is_recurrent",
    "cpp_compiler",
    "inductor_cache_dir",
]
