"""One training loop for every model and every task.

``train(config, out_dir)`` sets the run up (:func:`~rnn2gpt.training.setup.prepare_run`: task,
data, tokenizers, model, optimizer, resume) and runs :class:`Trainer`'s loop: gradient
accumulation, clipping, warmup + cosine schedule, mixed precision where it pays, periodic
evaluation, ``best`` and ``last`` checkpoints, early stopping, a progress bar and a
``metrics.jsonl`` log. What is trained is a :class:`~rnn2gpt.tasks.Task`: the loop calls its
methods and never asks which task or architecture it holds.

**Exact resume.** Batches depend only on (seed, rank, step), the learning rate only on (step,
elapsed, tokens), and ``last`` stores the model, the optimizer, the RNG states and the state the
task carries between batches (a recurrent model's hidden state); a run stopped at step k and
resumed therefore computes the same losses at every later step as one that never stopped (with a
step budget; a time budget depends on the clock).

**Nothing saved is lost.** Ctrl-C (or ``interrupt``) saves ``last`` after the current step; so
does any error in the middle of a run, before it propagates. A non-finite loss stops the run
without saving the diverged model (``best`` and earlier ``last`` stay intact).

Files written in ``out_dir`` (by rank 0 only under DDP): ``best/`` and ``last/`` checkpoints
and ``metrics.jsonl``; the caller draws the loss curve from that log (:func:`rnn2gpt.api.train`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import BEST, LAST, load_weights, save_checkpoint
from ..config import RunConfig
from ..errors import TrainingError
from ..models.base import fixed_structure
from .compiling import StepCompiler, compile_choice
from .distributed import (
    DistContext,
    any_rank,
    barrier,
    cleanup_distributed,
    mean_over_ranks,
    setup_distributed,
    wrap_model,
)
from .fused_step import fused_step
from .log import METRICS_FILE, MetricsLog, format_seconds, logging_redirect, progress_bar
from .native_adamw import clip_and_step
from .optim import lr_at, progress_fraction, set_lr
from .plan import describe_plan, planned_train_seconds, seconds_left
from .precision import autocast
from .progress import Progress, TrainResult
from .setup import RunParts, prepare_run
from .signals import sigint_flag
from .snapshot import restore, snapshot

logger = logging.getLogger(__name__)


def train(
    config: RunConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    init_from: str | None = None,
    interrupt: threading.Event | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train the model ``config`` describes; checkpoints and logs go to ``out_dir``.

    Args:
        config: the run (validated here).
        out_dir: run directory; ``best/``, ``last/`` and ``metrics.jsonl`` are written into it.
        resume: continue exactly from ``out_dir/last`` (model, optimizer, step, RNG, carried
            state). The model and tokenizer settings come from that checkpoint; the training
            settings from ``config`` (so a budget may be extended).
        init_from: a checkpoint to fine-tune: its tokenizer and weights, with a fresh optimizer
            and schedule.
        interrupt: when set (checked once per step), the run saves ``last`` and returns with
            ``interrupted=True``, as Ctrl-C does.
        overwrite: a new run in an ``out_dir`` that already holds checkpoints replaces them;
            without it that is an error (nothing saved is ever lost by accident).

    Raises:
        TrainingError: the loss became NaN or infinite (checkpoints already saved stay intact).
        CheckpointError, ConfigError, DataError, TokenizerError: unusable inputs.
    """
    ctx = setup_distributed()
    threads = torch.get_num_threads()  # train.threads changes a process-wide setting; undo it
    parts: RunParts | None = None
    try:
        with sigint_flag() as sigint:
            out = Path(out_dir).expanduser()
            parts = prepare_run(
                config, out, ctx, resume=resume, init_from=init_from, overwrite=overwrite
            )
            result = Trainer(parts, out, ctx).loop(sigint, interrupt)
            barrier(ctx)  # on success only: a failed rank must exit, not wait for the others
            return result
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        del parts  # DDP's reducer holds the process group: let it go first (cleanup_distributed)
        cleanup_distributed(ctx)


class Trainer:
    """The loop over a prepared run (:class:`~rnn2gpt.training.setup.RunParts`)."""

    def __init__(self, parts: RunParts, out_dir: Path, ctx: DistContext) -> None:
        self.parts = parts
        self.config = parts.config
        self.task = parts.task
        self.model = parts.model
        self.optimizer = parts.optimizer
        self.dtype = parts.precision.dtype
        self.out_dir = out_dir
        self.ctx = ctx
        self.progress = Progress()
        self.carried: Any = None  # what the task carries from batch to batch (RNN state)
        self.pending: list[torch.Tensor] = []  # per-step losses not yet read back (no sync)
        self.lr = self.config.train.lr
        self.step_tokens = 0
        if parts.resumed is not None:
            self._restore()
        tc = self.config.train
        # Tokens of one optimizer step over every rank.
        self.tokens_per_step = self.task.tokens_per_step * tc.grad_accum * ctx.world_size
        planned = planned_train_seconds(
            self.model.num_parameters(trainable_only=True), self.tokens_per_step, tc, self.dtype
        )
        # The module the step runs: the model (DDP-wrapped when distributed), maybe compiled.
        self.compiler = StepCompiler(
            wrap_model(self.model, ctx),
            compile_choice(tc.compile, self.model, planned),
            agree=lambda flag: not any_rank([not flag], ctx)[0],
            event=self._event,
            device=ctx.device,
        )
        self._log_plan()

    # ------------------------------------------------------------------ the loop

    def loop(self, sigint: threading.Event, interrupt: threading.Event | None) -> TrainResult:
        tc, p = self.config.train, self.progress
        self.log = MetricsLog(self.out_dir, resumed_step=p.step, enabled=self.ctx.is_main)
        shown = tc.progress and self.ctx.is_main
        bar = progress_bar(tc, p.step, enabled=shown)
        # (time, tokens, training seconds) at the start of the current log interval.
        interval = (time.perf_counter(), p.tokens, p.train_seconds)
        self.start = time.perf_counter() - p.elapsed
        self.eval_seconds = p.elapsed - p.train_seconds
        interrupted, stop_reason = False, ""
        try:
            with logging_redirect(shown), fixed_structure(self.model):
                self.fused = fused_step(self.parts, self.compiler.module, self.ctx.enabled)
                while True:
                    self._tick()
                    interrupted, stop_reason, eval_due = self._should_stop(sigint, interrupt)
                    if interrupted or stop_reason:
                        break
                    self.lr = lr_at(p.step, progress_fraction(p.step, p.elapsed, p.tokens, tc), tc)
                    set_lr(self.optimizer, self.lr)
                    started = time.perf_counter()
                    self.pending.append(self._step())
                    self.compiler.synchronize()
                    self.compiler.after_step(time.perf_counter() - started)
                    p.step += 1
                    p.tokens += self.step_tokens
                    bar.update(1)
                    if p.step % tc.log_interval == 0:
                        self._tick()
                        self._log_train(interval, bar)
                        interval = (time.perf_counter(), p.tokens, p.train_seconds)
                    due = p.step % tc.eval_interval == 0 or eval_due
                    if due and self._timed(self._evaluate_and_save):
                        stop_reason = "early_stopping"
                        break
                self._tick()
                if interrupted:
                    self._stop_interrupted()
                else:
                    self._finish(interval, bar, stop_reason)
        except (TrainingError, KeyboardInterrupt):
            raise  # a diverged model is not saved; a second Ctrl-C aborts at once
        except Exception:
            self._save_after_error()
            raise
        finally:
            bar.close()
            self.log.close()
        train_seconds = max(p.train_seconds, 1e-9)
        return TrainResult(
            steps=p.step,
            tokens=p.tokens,
            elapsed=p.elapsed,
            best_val_loss=p.best_val_loss,
            final_metrics=dict(p.last_metrics),
            out_dir=self.out_dir,
            interrupted=interrupted,
            tokens_per_sec=p.tokens / train_seconds if p.tokens else 0.0,
            stop_reason="interrupted" if interrupted else stop_reason,
            task=self.config.train.task,
        )

    def _tick(self, now: float | None = None) -> None:
        """Bring the elapsed and training-time counters up to now (a clock reading)."""
        p = self.progress
        p.elapsed = (time.perf_counter() if now is None else now) - self.start
        p.train_seconds = p.elapsed - self.eval_seconds

    def _should_stop(
        self, sigint: threading.Event, interrupt: threading.Event | None
    ) -> tuple[bool, str, bool]:
        """(interrupted, budget reason, evaluation due by the clock), agreed by every rank."""
        tc, p = self.config.train, self.progress
        # The interrupt Event is consulted exactly once per step.
        asked = sigint.is_set() or (interrupt is not None and interrupt.is_set())
        reason = self._budget_reason()
        eval_due = (
            tc.eval_interval_seconds > 0
            and p.train_seconds - p.last_eval_train_seconds >= tc.eval_interval_seconds
        )
        if self.ctx.enabled:
            # Clocks and signals differ between ranks: agree, or one rank would wait forever in
            # the next all-reduce.
            asked, time_up, eval_due = any_rank([asked, reason == "max_time", eval_due], self.ctx)
            if time_up and not reason:
                reason = "max_time"
        return asked, reason, eval_due

    def _budget_reason(self) -> str:
        tc, p = self.config.train, self.progress
        if tc.max_steps > 0 and p.step >= tc.max_steps:
            return "max_steps"
        if tc.max_tokens > 0 and p.tokens >= tc.max_tokens:
            return "max_tokens"
        if tc.max_time > 0 and p.elapsed >= tc.max_time:
            return "max_time"
        return ""

    def _step(self) -> torch.Tensor:
        """One optimizer step over ``grad_accum`` micro-batches; the mean loss (0-d tensor)."""
        accum = self.config.train.grad_accum
        total: torch.Tensor | None = None
        tokens = 0
        first = self.progress.step * accum
        if self.fused and (loss := self.fused(self.task.batch(first), self.compiler)) is not None:
            self.step_tokens = self.fused.tokens  # the whole step in C, where it applies
            return loss
        for micro in range(accum):
            batch = self.task.batch(first + micro)
            sync = micro == accum - 1 or not self.ctx.enabled
            module = self.compiler.module
            with nullcontext() if sync else module.no_sync():
                with autocast(self.ctx.device, self.dtype):
                    loss, count, self.carried = self.task.loss(module, batch, self.carried)
                (loss / accum if accum > 1 else loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
            tokens += count
        clip_and_step(self.optimizer, self.model.parameters(), max(self.config.train.grad_clip, 0))
        self.optimizer.zero_grad(set_to_none=True)
        self.step_tokens = tokens * self.ctx.world_size
        assert total is not None
        return total / accum if accum > 1 else total

    def _stop_interrupted(self) -> None:
        p = self.progress
        self._check_losses()
        self._save(LAST)
        self._event("interrupt")
        logger.warning(
            "stopped at step %d; saved %s. Resume with `rnn2gpt train --resume %s` "
            "(or train(..., resume=True))",
            p.step,
            self.out_dir / LAST,
            self.out_dir,
        )

    def _finish(self, interval: tuple[float, int, float], bar: Any, stop_reason: str) -> None:
        p = self.progress
        self._log_train(interval, bar)
        if p.last_eval_step != p.step and p.step > 0:
            self._timed(self._evaluate_and_save)
        self._test()
        logger.info("finished at step %d (%s)", p.step, stop_reason)
        self._event("end", reason=stop_reason)

    def _save_after_error(self) -> None:
        """An error in the middle of a run: keep what it learned in ``last`` (as Ctrl-C does)."""
        if self.progress.step == 0 or not self.ctx.is_main:
            return
        try:
            self._save(LAST)  # refuses (TrainingError) if the losses or weights are not finite
            logger.error(
                "the run failed at step %d; saved %s first (resume with `rnn2gpt train --resume "
                "%s` once the cause is fixed)",
                self.progress.step,
                self.out_dir / LAST,
                self.out_dir,
            )
        except Exception as exc:  # the original error matters more than this one
            logger.error("the run failed, and saving %s failed too: %s", self.out_dir / LAST, exc)

    # ------------------------------------------------------------------ evaluation and test

    def _timed(self, work: Callable[[], Any]) -> Any:
        """``work()`` (an evaluation), its time kept out of the training time (clocks updated)."""
        started = time.perf_counter()
        self._tick()
        try:
            return work()
        finally:
            now = time.perf_counter()
            self.eval_seconds += now - started
            self._tick(now)

    def _evaluate(self, split: str, max_batches: int) -> dict[str, Any]:
        """The task's metrics on ``split``, the loss averaged over ranks."""
        with autocast(self.ctx.device, self.dtype):
            loss, tokens = self.task.evaluate(self.model, split, max_batches)
        loss = mean_over_ranks(loss, self.ctx)
        if not math.isfinite(loss):
            self._raise_non_finite(self.progress.step, loss)
        return self.task.score(loss, tokens, split)

    def _evaluate_and_save(self) -> bool:
        """Validation metrics, ``best``/``last`` checkpoints; True when patience runs out."""
        tc, p = self.config.train, self.progress
        self._check_losses()  # never evaluate, let alone save, a model that already diverged
        metrics = self._evaluate("val", tc.eval_batches)
        val_loss = metrics["loss"]
        decoded: dict[str, Any] = {}
        value = val_loss
        if tc.early_stop_metric != "val_loss":
            # BLEU/ROUGE of decoded validation outputs (rank 0 decodes; others wait).
            decoded = self.task.decode_metrics(self.model) if self.ctx.is_main else {}
            value = mean_over_ranks(float(decoded.get(tc.early_stop_metric, 0.0)), self.ctx)
        improved = p.record_evaluation(tc.early_stop_metric, value, val_loss)
        shown = {k: v for k, v in metrics.items() if k != "tokens"}
        p.last_metrics.update({f"val_{k}": v for k, v in {**shown, **decoded}.items()})
        if improved:
            self._save(BEST)
        self._save(LAST)
        self._event(
            "eval",
            val_loss=val_loss,
            val_perplexity=metrics["perplexity"],
            val_bits_per_token=metrics["bits_per_token"],
            val_bits_per_char=metrics["bits_per_char"],
            best=improved,
            **{f"val_{k}": v for k, v in decoded.items()},
        )
        extras = []
        if metrics["bits_per_char"] is not None:  # text corpora only
            extras.append(f"{metrics['bits_per_char']:.3f} bits/char")
        extras.extend(f"{name} {number:.2f}" for name, number in decoded.items())
        logger.info(
            "step %d: val loss %.4f, perplexity %.2f%s%s",
            p.step,
            val_loss,
            metrics["perplexity"],
            "".join(f", {extra}" for extra in extras),
            " (best)" if improved else "",
        )
        if tc.patience > 0 and p.evals_without_improvement >= tc.patience:
            logger.info(
                "early stopping: no improvement in %d evaluations (best %.4f at step %s)",
                p.evals_without_improvement,
                p.best_val_loss,
                p.best_step,
            )
            return True
        return False

    def _test(self) -> None:
        """Score the best checkpoint on the task's test data, when it has some."""
        if not self.task.has_split("test"):
            return
        best = self.out_dir / BEST
        p = self.progress
        if (best / "model.safetensors").is_file() and p.best_step != p.step:
            load_weights(self.model, best, self.ctx.device)  # base weights, then any adapters
        metrics = self._timed(lambda: self._evaluate("test", 0))  # the event's time is after it
        p.last_metrics.update({f"test_{k}": v for k, v in metrics.items() if k != "tokens"})
        self._event("test", **{f"test_{k}": v for k, v in metrics.items()})
        logger.info("test loss %.4f, perplexity %.2f", metrics["loss"], metrics["perplexity"])

    # ------------------------------------------------------------------ checkpoints

    def _save(self, name: str) -> None:
        """Write checkpoint ``out_dir/name`` (rank 0); never a model with non-finite weights."""
        if not self.ctx.is_main:
            return
        if not all(bool(torch.isfinite(w).all()) for w in self.model.parameters()):
            self._raise_non_finite(self.progress.step, float("nan"))
        state, tensors = snapshot(
            self.progress,
            self._check_losses(),  # the losses since the last log: a resumed run logs the same means
            self.carried,
            self.config.train,
            self.ctx.world_size,
            self.model,
            self.parts.lora_layers,
        )
        save_checkpoint(
            self.out_dir / name,
            model=self.model,
            tokenizer=self.parts.tokenizer,
            source_tokenizer=self.parts.source_tokenizer,
            config=self.config,
            optimizer=self.optimizer,
            trainer_state=state,
            tensors=tensors,
        )

    def _restore(self) -> None:
        """Optimizer, counters, RNG and carried state from the ``last`` checkpoint."""
        assert self.parts.resumed is not None
        self.progress, self.pending, self.carried = restore(
            self.parts.resumed, self.optimizer, self.model, self.config.train.batch_size, self.ctx
        )

    # ------------------------------------------------------------------ logging and checks

    def _log_plan(self) -> None:
        """Say what this run will do and about how long it will take, before the first step."""
        if not self.ctx.is_main:
            return
        precision = self.parts.precision
        (logger.warning if precision.slow else logger.info)("precision: %s", precision.reason)
        logger.info("compile: %s", self.compiler.choice.reason)
        logger.info(
            describe_plan(
                arch=self.config.model.arch,
                parameters=self.model.num_parameters(trainable_only=True),
                tokens_per_step=self.tokens_per_step,
                train=self.config.train,
                dtype=self.dtype,
                precision_reason=precision.reason,
            )
        )

    def _check_losses(self) -> list[float]:
        """Read back the pending per-step losses; TrainingError at the first non-finite one."""
        pending = self.pending
        if not pending:
            return []
        # One pending loss (a log every step) is read alone: stacking it cost 80 us a step.
        stacked = pending[0] if len(pending) == 1 else torch.stack(pending).double()
        values = stacked.reshape(-1).tolist()
        first_step = self.progress.step - len(pending) + 1
        for i, value in enumerate(values):
            if not math.isfinite(value):
                self._raise_non_finite(first_step + i, value)
        return values

    def _raise_non_finite(self, step: int, value: float) -> None:
        tc = self.config.train
        kept = [name for name in (BEST, LAST) if (self.out_dir / name).is_dir()]
        note = f"; the saved {' and '.join(kept)} checkpoint(s) are kept" if kept else ""
        raise TrainingError(
            f"the loss became {value} at step {step}: training diverged. Lower the learning rate "
            f"(train.lr={tc.lr:g}, try {tc.lr / 3:.2g}), keep train.grad_clip on, or lengthen "
            f"train.warmup_steps{note}"
        )

    def _log_train(self, interval: tuple[float, int, float], bar: Any) -> None:
        """Log the mean loss of the steps since the last log (no-op when there are none)."""
        values = self._check_losses()
        self.pending = []
        if not values:
            return
        p, lr = self.progress, self.lr
        loss = mean_over_ranks(sum(values) / len(values), self.ctx)
        tokens_per_sec = (p.tokens - interval[1]) / max(p.train_seconds - interval[2], 1e-9)
        p.last_metrics["train_loss"] = loss
        self._event("train", lr=lr, loss=loss, tokens_per_sec=tokens_per_sec)
        line = ("step %d: loss %.4f, lr %.3g, %.0f tokens/s", p.step, loss, lr, tokens_per_sec)
        if bar.disable:  # no bar: the log line says it (and the bar's text is not built)
            return logger.info(*line)
        postfix = {"loss": f"{loss:.4f}", "tok/s": f"{tokens_per_sec:,.0f}"}
        eta = seconds_left(p.step, p.elapsed, p.tokens, self.config.train)
        if eta is not None:
            postfix["left"] = format_seconds(eta)
        bar.set_postfix(postfix, refresh=False)
        logger.debug(*line)  # the bar already shows it

    def _event(self, kind: str, **values: Any) -> None:
        p = self.progress
        self.log.write(kind, p.step, p.tokens, p.elapsed, **values)


__all__ = ["METRICS_FILE", "Trainer", "TrainResult", "train"]
