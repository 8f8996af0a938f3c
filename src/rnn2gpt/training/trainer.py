"""One training loop for every language model (RNN, LSTM, GRU, GPT).

``train(config, out_dir)`` reads the corpus, builds (or reloads) the tokenizer, caches the token
ids, builds the model, and runs the loop: gradient accumulation, clipping, warmup + cosine
schedule, bf16 autocast where the hardware is fast at it, periodic evaluation, ``best`` and
``last`` checkpoints, early stopping, a progress bar and a ``metrics.jsonl`` log.

The loop never asks which architecture it trains. A model whose ``carries_state`` is True
(the RNN family) is fed contiguous streams and its state is carried from batch to batch
(truncated backpropagation through time); any other model gets independent random windows.

**Exact resume.** Batches depend only on (seed, rank, step), the learning rate only on (step,
elapsed, tokens), and ``last`` stores the model, the optimizer, the RNG states and the carried
state; a run stopped at step k and resumed therefore computes the same losses at every later step
as one that never stopped (with a step budget; a time budget depends on the clock).

Files written in ``out_dir`` (by rank 0 only under DDP): ``best/`` and ``last/`` checkpoints,
``metrics.jsonl`` (one JSON object per event: ``"event"`` is ``train``, ``eval``, ``test``,
``interrupt`` or ``end``) and ``loss_curve.png``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import (
    Checkpoint,
    adapter_file,
    capture_rng_state,
    load_checkpoint,
    load_weights,
    restore_rng_state,
    save_checkpoint,
    state_from_tensors,
    state_to_tensors,
)
from ..config import RunConfig
from ..errors import CheckpointError, ConfigError, TokenizerError, TrainingError
from ..models.base import count_parameters
from ..models.lora import apply_lora, has_lora, load_lora_adapter, merge_lora
from .distributed import (
    DistContext,
    any_rank,
    barrier,
    cleanup_distributed,
    mean_over_ranks,
    setup_distributed,
    wrap_model,
)
from .optim import build_optimizer, lr_at, progress_fraction, set_lr
from .plan import describe_plan
from .precision import autocast, precision_choice
from .tasks import Seq2SeqTask, better, is_seq2seq_task

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
LOSS_CURVE_FILE = "loss_curve.png"
BEST, LAST = "best", "last"


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

    @property
    def metrics(self) -> dict[str, Any]:
        return self.final_metrics


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
        out_dir: run directory; ``best/``, ``last/``, ``metrics.jsonl`` and ``loss_curve.png``
            are written into it.
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
    try:
        with _sigint_flag() as sigint:
            run = _Run(config, Path(out_dir).expanduser(), ctx, resume, init_from, overwrite)
            return run.loop(sigint, interrupt)
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        cleanup_distributed(ctx)


# --------------------------------------------------------------------------- signal handling


@contextlib.contextmanager
def _sigint_flag() -> Iterator[threading.Event]:
    """An Event set by the first Ctrl-C (main thread only); a second Ctrl-C aborts at once."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()
        logger.warning(
            "interrupted: saving the last checkpoint after this step (Ctrl-C again to abort)"
        )

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


# --------------------------------------------------------------------------- the run


@dataclass
class _Progress:
    """The counters saved in ``trainer_state.json`` and restored on resume."""

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


class _Run:
    """Everything set up for one run; :meth:`loop` trains."""

    def __init__(
        self,
        config: RunConfig,
        out_dir: Path,
        ctx: DistContext,
        resume: bool,
        init_from: str | None,
        overwrite: bool = False,
    ) -> None:
        from ..data import StreamBatches, WindowBatches, eval_batches, load_corpus
        from ..data.parallel import load_parallel
        from ..models import build_model

        config.validate()
        if config.train.lora_rank > 0 and not resume and not init_from:
            raise ConfigError(
                f"train.lora_rank={config.train.lora_rank} needs a model to adapt: fine-tune a "
                "checkpoint (rnn2gpt finetune DIR --lora-rank R, or init_from=DIR), or set "
                "train.lora_rank=0 to train from scratch"
            )
        self.ctx = ctx
        self.out_dir = out_dir
        self.device = ctx.device
        tc = config.train
        if tc.threads > 0:
            torch.set_num_threads(tc.threads)
        _seed_everything(tc.seed)

        resumed: Checkpoint | None = None
        source: Checkpoint | None = None
        if not resume and any((out_dir / n).is_dir() for n in (BEST, LAST)):
            if not overwrite:
                raise ConfigError(
                    f"{out_dir} already holds a training run; continue it with --resume "
                    f"{out_dir}, choose another --out folder, or pass --overwrite to replace it"
                )
            if ctx.is_main:
                logger.warning("%s already holds checkpoints; this new run replaces them", out_dir)
        if resume:
            resumed = _load_resume_checkpoint(out_dir, self.device)
            if init_from:
                logger.info("resuming %s; init_from=%s is ignored", out_dir / LAST, init_from)
            config = _resume_config(config, resumed.config)
            source = resumed
        elif init_from:
            source = load_checkpoint(init_from, map_location=self.device)
            config = _finetune_config(config, source.config)
            logger.info("fine-tuning from %s", init_from)

        self.task: Seq2SeqTask | None = None
        if is_seq2seq_task(config):
            corpus: Any = load_parallel(config.data)
        else:
            corpus = load_corpus(config.data)
        logger.info("data: %s", corpus.description)
        # self.tokenizer: the joint tokenizer, or the targets' one with tokenizer.separate;
        # self.source_tokenizer encodes sources (the same object unless separate).
        if source is not None:
            self.tokenizer, self.source_tokenizer = source.tokenizer, source.source_tokenizer
        else:
            self.tokenizer, self.source_tokenizer = self._train_tokenizers(corpus, config)
        separate = self.source_tokenizer is not self.tokenizer
        model_config = replace(
            config.model,
            vocab_size=self.tokenizer.vocab_size,
            src_vocab_size=self.source_tokenizer.vocab_size if separate else 0,
        )
        config = replace(config, model=model_config).validate()
        self.config = config
        if is_seq2seq_task(config):
            # Pairs, loss and metrics come from the task; the loop below is the same.
            self.task = Seq2SeqTask(
                config,
                self.tokenizer,
                corpus,
                rank=ctx.rank,
                world_size=ctx.world_size,
                source_tokenizer=self.source_tokenizer,
            )
            self.train_ids = self.val_ids = np.zeros(0, dtype=np.int64)
            self.chars_per_token = None
            self.test_text = None
        else:
            self._setup_lm_text(corpus, config, source, resumed)

        torch.manual_seed(tc.seed)
        model = build_model(model_config)
        self.stateful = bool(getattr(model, "carries_state", False))
        if self.task is None:
            # Fail now, not at the first evaluation, when the validation text cannot fill a batch.
            name = "the validation text"
            next(eval_batches(self.val_ids, tc.batch_size, tc.seq_len, 1, self.stateful, name=name))
        self.lora_layers = self._load_source(model, source, resumed)
        if ctx.enabled:
            torch.manual_seed(tc.seed + ctx.rank)  # same initial weights, different dropout masks
        self.model = model.to(self.device)
        self.model.train()
        self.precision = precision_choice(tc.precision, self.device)
        self.dtype = self.precision.dtype

        self.optimizer = build_optimizer(model, tc, self.device)
        self.progress = _Progress()
        self.carried: Any = None  # the state carried between batches (stateful models)
        self.pending: list[torch.Tensor] = []  # per-step losses not yet read back (no sync)
        self.lr = tc.lr
        self._step_tokens = 0
        if resumed is not None:
            self._restore(resumed)

        forward_model: nn.Module = wrap_model(self.model, ctx)
        if tc.compile:
            forward_model = torch.compile(forward_model)
        self.forward_model = forward_model

        common = {"rank": ctx.rank, "world_size": ctx.world_size}
        if self.task is not None:
            self.batches: Any = self.task.batches
            logger.info(
                "model: %s, %s parameters on %s; %s training pairs (%s target tokens), "
                "%d pairs per step",
                model_config.arch,
                f"{model.num_parameters():,}",
                self.device,
                f"{len(self.task.train_sources):,}",
                f"{self.task.train_tokens:,}",
                self.batches.batch_size * tc.grad_accum * ctx.world_size,
            )
            mean_target = self.task.train_tokens / max(len(self.task.train_sources), 1)
            self._log_plan(int(self.batches.batch_size * mean_target) * tc.grad_accum)
            return
        if self.stateful:
            self.batches = StreamBatches(self.train_ids, tc.batch_size, tc.seq_len, **common)
        else:
            self.batches = WindowBatches(
                self.train_ids, tc.batch_size, tc.seq_len, tc.seed, **common
            )
        logger.info(
            "model: %s, %s parameters on %s; %s tokens of training text, %d tokens per step%s",
            model_config.arch,
            f"{model.num_parameters():,}",
            self.device,
            f"{len(self.train_ids):,}",
            tc.batch_size * tc.seq_len * tc.grad_accum * ctx.world_size,
            f", {len(self.batches)} batches per pass" if self.stateful else "",
        )
        self._log_plan(tc.batch_size * tc.seq_len * tc.grad_accum)

    def _log_plan(self, tokens_per_step: int) -> None:
        """Say what this run will do and about how long it will take, before the first step."""
        if not self.ctx.is_main:
            return
        (logger.warning if self.precision.slow else logger.info)(
            "precision: %s", self.precision.reason
        )
        logger.info(
            describe_plan(
                arch=self.config.model.arch,
                parameters=self.model.num_parameters(trainable_only=True),
                tokens_per_step=tokens_per_step,
                train=self.config.train,
                dtype=self.dtype,
                precision_reason=self.precision.reason,
            )
        )

    def _setup_lm_text(
        self, corpus: Any, config: RunConfig, source: Checkpoint | None, resumed: Checkpoint | None
    ) -> None:
        """Language modelling: token ids of the training, validation and test text."""
        ctx = self.ctx
        # Token ids: rank 0 fills the cache first, so ranks never race to write it. A fine-tune
        # encodes the new text with the source's tokenizer, which may not know all of it.
        finetuning = source is not None and resumed is None
        train_text = (
            corpus.train_text,
            f"the training text ({config.data.path or 'the bundled corpus'})",
        )
        if ctx.is_main:
            self.train_ids = self._encode(*train_text, finetuning)
        barrier(ctx)
        if not ctx.is_main:
            self.train_ids = self._encode(*train_text, finetuning)
        self.val_ids = self._encode(corpus.val_text, "the validation text", finetuning)
        self.chars_per_token = len(corpus.val_text) / max(len(self.val_ids), 1)
        self.test_text = _test_text(corpus, config)
        if self.test_text is not None:  # encoded now so that a bad test text fails early
            self._encode(self.test_text, "the test text", finetuning)

    # ------------------------------------------------------------------ setup helpers

    def _encode(self, text: str, what: str, finetuning: bool) -> np.ndarray:
        """Token ids of ``text`` (cached); a clear error when a fine-tune's base tokenizer
        cannot encode the new text."""
        from ..data import encode_cached

        try:
            return encode_cached(text, self.tokenizer, self.config.data.cache_dir)
        except TokenizerError as exc:
            if not finetuning:
                raise
            raise _base_tokenizer_error(text, self.tokenizer, what, exc) from None

    def _load_source(
        self, model: nn.Module, source: Checkpoint | None, resumed: Checkpoint | None
    ) -> list[str]:
        """Copy the source checkpoint's weights into ``model`` (fresh from ``build_model``) and
        add LoRA adapters when the run asks for them; returns the adapted layers' names."""
        if source is None:
            return []
        if resumed is not None:
            # Same adapters as the interrupted run (rank, alpha, targets from its adapter file).
            adapter = adapter_file(resumed.directory)
            layers = load_lora_adapter(model, adapter) if adapter is not None else []
            model.load_state_dict(resumed.model.state_dict())
            return layers
        if has_lora(source.model):
            # Fine-tuning a LoRA checkpoint starts from its adapted weights.
            merge_lora(source.model)
        model.load_state_dict(source.model.state_dict())
        tc = self.config.train
        if tc.lora_rank <= 0:
            return []
        try:
            layers = apply_lora(
                model, tc.lora_rank, tc.lora_alpha, tc.lora_targets or None, tc.lora_dropout
            )
        except ConfigError as exc:
            raise ConfigError(f"cannot add LoRA adapters to the source model: {exc}") from None
        logger.info(
            "LoRA rank %d on %d layers: %s of %s parameters train",
            tc.lora_rank,
            len(layers),
            f"{model.num_parameters(trainable_only=True):,}",
            f"{model.num_parameters():,}",
        )
        return layers

    def _train_tokenizers(self, corpus: Any, config: RunConfig) -> tuple[Any, Any]:
        """(tokenizer, source tokenizer) of a new run: one joint tokenizer (returned twice), or
        with ``tokenizer.separate`` one trained on the targets and one on the sources."""
        if not config.tokenizer.separate:
            joint = self._train_tokenizer(corpus.train_text, config, ".tokenizer")
            return joint, joint
        target = self._train_tokenizer(corpus.target_text, config, ".tokenizer")
        source = self._train_tokenizer(corpus.source_text, config, ".tokenizer-source")
        logger.info(
            "separate tokenizers: %d source tokens, %d target tokens",
            source.vocab_size,
            target.vocab_size,
        )
        return target, source

    def _train_tokenizer(self, text: str, config: RunConfig, folder: str) -> Any:
        from ..tokenizers import load_tokenizer, train_tokenizer

        if not self.ctx.enabled:
            return train_tokenizer(text, config.tokenizer)
        # Rank 0 trains; the others read its files, so every rank has the very same vocabulary.
        shared = self.out_dir / folder
        if self.ctx.is_main:
            shared.mkdir(parents=True, exist_ok=True)
            train_tokenizer(text, config.tokenizer).save(shared)
        barrier(self.ctx)
        tokenizer = load_tokenizer(shared)
        barrier(self.ctx)  # everyone has read it: the shared copy can go
        if self.ctx.is_main:
            shutil.rmtree(shared, ignore_errors=True)
        return tokenizer

    def _restore(self, ckpt: Checkpoint) -> None:
        """Optimizer, counters, RNG and carried state from the ``last`` checkpoint."""
        ckpt.load_optimizer_state(self.optimizer)
        state = ckpt.trainer_state or {}
        progress = state.get("progress", {})
        known = set(_Progress.__dataclass_fields__)
        self.progress = _Progress(**{k: v for k, v in progress.items() if k in known})
        saved_world = state.get("world_size", 1)
        if saved_world != self.ctx.world_size:
            logger.warning(
                "resuming a %d-process run with %d processes: batches will differ from the "
                "original run",
                saved_world,
                self.ctx.world_size,
            )
        restore_rng_state(state.get("rng", {}), ckpt.tensors)
        self.pending = [
            torch.tensor(v, dtype=torch.float32, device=self.device)
            for v in state.get("pending_losses", [])
        ]
        # Only rank 0's state is saved; other ranks of a DDP run restart their lanes' state.
        if self.stateful and state.get("has_carried_state") and self.ctx.is_main:
            template = self.model.new_state(self.config.train.batch_size)
            self.carried = state_from_tensors(template, ckpt.tensors, prefix="carried")
        logger.info("resumed from %s at step %d", ckpt.directory, self.progress.step)

    # ------------------------------------------------------------------ the loop

    def loop(self, sigint: threading.Event, interrupt: threading.Event | None) -> TrainResult:
        tc = self.config.train
        ctx, p = self.ctx, self.progress
        metrics_file = self._open_metrics()
        bar = _progress_bar(tc, p.step, enabled=tc.progress and ctx.is_main)
        redirect = _logging_redirect() if tc.progress and ctx.is_main else contextlib.nullcontext()
        # (time, tokens, training seconds) at the start of the current log interval.
        interval_start = (time.perf_counter(), p.tokens, p.train_seconds)
        start = time.perf_counter() - p.elapsed
        eval_seconds = p.elapsed - p.train_seconds
        interrupted = False
        stop_reason = ""
        try:
            with redirect:
                while True:
                    p.elapsed = time.perf_counter() - start
                    p.train_seconds = p.elapsed - eval_seconds
                    # The interrupt Event is consulted exactly once per step.
                    asked = sigint.is_set() or (interrupt is not None and interrupt.is_set())
                    stop_reason = self._budget_reason()
                    eval_due = (
                        tc.eval_interval_seconds > 0
                        and p.train_seconds - p.last_eval_train_seconds >= tc.eval_interval_seconds
                    )
                    if ctx.enabled:
                        # Clocks and signals differ between ranks: agree, or one rank would
                        # wait forever in the next all-reduce.
                        asked, time_up, eval_due = any_rank(
                            [asked, stop_reason == "max_time", eval_due], ctx
                        )
                        if time_up and not stop_reason:
                            stop_reason = "max_time"
                    if asked:
                        interrupted = True
                        break
                    if stop_reason:
                        break

                    progress = progress_fraction(p.step, p.elapsed, p.tokens, tc)
                    self.lr = lr_at(p.step, progress, tc)
                    set_lr(self.optimizer, self.lr)
                    self.pending.append(self._step())
                    p.step += 1
                    p.tokens += self._step_tokens
                    bar.update(1)

                    if p.step % tc.log_interval == 0:
                        now = time.perf_counter()
                        p.elapsed = now - start
                        p.train_seconds = p.elapsed - eval_seconds
                        self._log_train(interval_start, metrics_file, bar)
                        interval_start = (now, p.tokens, p.train_seconds)
                    if p.step % tc.eval_interval == 0 or eval_due:
                        t0 = time.perf_counter()
                        p.elapsed = t0 - start
                        p.train_seconds = p.elapsed - eval_seconds
                        should_stop = self._evaluate_and_save(metrics_file)
                        eval_seconds += time.perf_counter() - t0
                        if should_stop:
                            stop_reason = "early_stopping"
                            break

                p.elapsed = time.perf_counter() - start
                p.train_seconds = p.elapsed - eval_seconds
                if interrupted:
                    self._check_losses()
                    self._save(LAST)
                    self._event(metrics_file, "interrupt")
                    logger.warning(
                        "stopped at step %d; saved %s. Resume with `rnn2gpt train --resume %s` "
                        "(or train(..., resume=True))",
                        p.step,
                        self.out_dir / LAST,
                        self.out_dir,
                    )
                else:
                    self._log_train(interval_start, metrics_file, bar)
                    if p.last_eval_step != p.step and p.step > 0:
                        self._evaluate_and_save(metrics_file)
                    self._test(metrics_file)
                    logger.info("finished at step %d (%s)", p.step, stop_reason)
                    self._event(metrics_file, "end", reason=stop_reason)
        finally:
            bar.close()
            if metrics_file is not None:
                metrics_file.close()
        if ctx.is_main:
            self._plot()
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
        )

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
        tc = self.config.train
        accum = tc.grad_accum
        model, device = self.forward_model, self.device
        total = None
        tokens = 0
        first = self.progress.step * accum
        for micro in range(accum):
            if self.task is not None:
                loss, count = self._task_micro_step(model, first + micro, micro == accum - 1)
                total = loss if total is None else total + loss
                tokens += count
                continue
            batch = self.batches.get(first + micro)
            x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
            state = None
            if self.stateful:
                # Truncated BPTT: keep the values, cut the graph; start afresh where told.
                state = None if batch[2] or self.carried is None else self.carried.detach()
            sync = micro == accum - 1 or not self.ctx.enabled
            with contextlib.nullcontext() if sync else model.no_sync():
                with autocast(device, self.dtype):
                    logits, new_state = model(x, state)  # (B, T, V)
                loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
                (loss / accum if accum > 1 else loss).backward()
            if self.stateful:
                self.carried = new_state
            total = loss.detach() if total is None else total + loss.detach()
            tokens += y.numel()
        if tc.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._step_tokens = tokens * self.ctx.world_size
        return total / accum if accum > 1 else total

    def _task_micro_step(
        self, model: nn.Module, index: int, last: bool
    ) -> tuple[torch.Tensor, int]:
        """Forward and backward of one micro-batch of a task; (detached loss, target tokens)."""
        assert self.task is not None
        accum = self.config.train.grad_accum
        batch = self.batches.get(index).to(self.device)
        sync = last or not self.ctx.enabled
        with contextlib.nullcontext() if sync else model.no_sync():
            with autocast(self.device, self.dtype):
                loss, count = self.task.loss(model, batch)
            (loss / accum if accum > 1 else loss).backward()
        return loss.detach(), count

    # ------------------------------------------------------------------ logging and checks

    def _check_losses(self) -> list[float]:
        """Read back the pending per-step losses; TrainingError at the first non-finite one."""
        pending = self.pending
        if not pending:
            return []
        values = torch.stack(pending).double().tolist()
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

    def _log_train(
        self, interval_start: tuple[float, int, float], metrics_file: TextIO | None, bar: Any
    ) -> None:
        """Log the mean loss of the steps since the last log (no-op when there are none)."""
        values = self._check_losses()
        self.pending = []
        if not values:
            return
        p, lr = self.progress, self.lr
        loss = mean_over_ranks(sum(values) / len(values), self.ctx)
        seconds = max(p.train_seconds - interval_start[2], 1e-9)
        tokens_per_sec = (p.tokens - interval_start[1]) / seconds
        p.last_metrics["train_loss"] = loss
        self._event(metrics_file, "train", lr=lr, loss=loss, tokens_per_sec=tokens_per_sec)
        postfix = {"loss": f"{loss:.4f}", "tok/s": f"{tokens_per_sec:,.0f}"}
        eta = self._eta()
        if eta is not None:
            postfix["left"] = _format_seconds(eta)
        bar.set_postfix(postfix, refresh=False)
        log = logger.info if bar.disable else logger.debug  # the bar already shows it
        log("step %d: loss %.4f, lr %.3g, %.0f tokens/s", p.step, loss, lr, tokens_per_sec)

    def _eta(self) -> float | None:
        """Seconds of training left, from the budget progress (None when unknown)."""
        tc, p = self.config.train, self.progress
        done = progress_fraction(p.step, p.elapsed, p.tokens, replace(tc, warmup_steps=0))
        if done <= 0 or p.elapsed <= 0:
            return None
        return p.elapsed * (1.0 - done) / done

    def _event(self, metrics_file: TextIO | None, kind: str, **values: Any) -> None:
        if metrics_file is None:
            return
        p = self.progress
        record = {
            "event": kind,
            "step": p.step,
            "tokens": p.tokens,
            "elapsed": round(p.elapsed, 4),
            **values,
        }
        metrics_file.write(json.dumps(record) + "\n")
        metrics_file.flush()

    def _open_metrics(self) -> TextIO | None:
        """``metrics.jsonl`` for appending; on resume, events after the resumed step are dropped."""
        if not self.ctx.is_main:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / METRICS_FILE
        if path.exists():
            step = self.progress.step
            kept = []
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                # A new run starts a new log; a resumed one keeps what led up to its step.
                if step > 0 and isinstance(event, dict) and event.get("step", 0) <= step:
                    if event.get("event") not in ("interrupt", "end", "test"):
                        kept.append(line)
            path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        return open(path, "a", encoding="utf-8")

    # ------------------------------------------------------------------ evaluation and saving

    def _evaluate(
        self, ids: Any, max_batches: int, chars_per_token: float | None
    ) -> dict[str, Any]:
        from ..evaluation import evaluate_lm

        tc = self.config.train
        return evaluate_lm(
            self.model,
            ids,
            batch_size=tc.batch_size,
            seq_len=tc.seq_len,
            stream=self.stateful,
            max_batches=max_batches,
            chars_per_token=chars_per_token,
            autocast=self.dtype,
        )

    def _evaluate_and_save(self, metrics_file: TextIO | None) -> bool:
        """Validation metrics, ``best``/``last`` checkpoints; True when patience runs out."""
        tc, p = self.config.train, self.progress
        from ..evaluation import lm_metrics

        self._check_losses()  # never evaluate, let alone save, a model that already diverged
        if self.task is not None:
            metrics = self.task.evaluate(self.model, max_batches=tc.eval_batches, dtype=self.dtype)
        else:
            metrics = self._evaluate(self.val_ids, tc.eval_batches, self.chars_per_token)
        val_loss = mean_over_ranks(metrics["loss"], self.ctx)
        if not math.isfinite(val_loss):
            self._raise_non_finite(p.step, val_loss)
        metrics = lm_metrics(val_loss, metrics["tokens"], self.chars_per_token)
        task_metrics: dict[str, Any] = {}
        if self.task is not None and tc.early_stop_metric != "val_loss":
            # BLEU/ROUGE of decoded validation pairs (rank 0 decodes; others wait).
            task_metrics = self.task.decode_metrics(self.model) if self.ctx.is_main else {}
        if tc.early_stop_metric != "val_loss" and self.task is not None:
            value = mean_over_ranks(float(task_metrics.get(tc.early_stop_metric, 0.0)), self.ctx)
            improved = better(tc.early_stop_metric, value, p.best_metric)
            if improved:
                p.best_metric = value
            if p.best_val_loss is None or val_loss < p.best_val_loss:
                p.best_val_loss = val_loss
        else:
            improved = p.best_val_loss is None or val_loss < p.best_val_loss
            if improved:
                p.best_val_loss = val_loss
        if improved:
            p.best_step = p.step
            p.evals_without_improvement = 0
        else:
            p.evals_without_improvement += 1
        p.last_eval_step = p.step
        p.last_eval_train_seconds = p.train_seconds
        p.last_metrics.update({f"val_{k}": v for k, v in metrics.items() if k != "tokens"})
        p.last_metrics.update({f"val_{k}": v for k, v in task_metrics.items()})
        if improved:
            self._save(BEST)
        self._save(LAST)
        self._event(
            metrics_file,
            "eval",
            val_loss=val_loss,
            val_perplexity=metrics["perplexity"],
            val_bits_per_token=metrics["bits_per_token"],
            val_bits_per_char=metrics["bits_per_char"],
            best=improved,
            **{f"val_{k}": v for k, v in task_metrics.items()},
        )
        # Bits per character only exist for text corpora; a task adds its metric (BLEU, ROUGE).
        extras = []
        if metrics["bits_per_char"] is not None:
            extras.append(f"{metrics['bits_per_char']:.3f} bits/char")
        extras.extend(f"{name} {value:.2f}" for name, value in task_metrics.items())
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

    def _test(self, metrics_file: TextIO | None) -> None:
        """Score the best checkpoint on the test text, when the run has one."""
        from ..data import encode_cached

        if self.task is not None:
            self._test_task(metrics_file)
            return
        if self.test_text is None:
            return
        best = self.out_dir / BEST
        if (best / "model.safetensors").is_file() and self.progress.best_step != self.progress.step:
            load_weights(self.model, best, self.device)  # base weights, then any adapters
        ids = encode_cached(self.test_text, self.tokenizer, self.config.data.cache_dir)
        metrics = self._evaluate(ids, 0, len(self.test_text) / max(len(ids), 1))
        self.progress.last_metrics.update(
            {f"test_{k}": v for k, v in metrics.items() if k != "tokens"}
        )
        self._event(metrics_file, "test", **{f"test_{k}": v for k, v in metrics.items()})
        logger.info("test loss %.4f, perplexity %.2f", metrics["loss"], metrics["perplexity"])

    def _test_task(self, metrics_file: TextIO | None) -> None:
        """Loss and perplexity of the best checkpoint on the task's test pairs, when given."""
        assert self.task is not None
        if self.task.test is None:
            return
        best = self.out_dir / BEST
        if (best / "model.safetensors").is_file() and self.progress.best_step != self.progress.step:
            load_weights(self.model, best, self.device)
        metrics = self.task.evaluate(self.model, "test", dtype=self.dtype)
        self.progress.last_metrics.update(
            {f"test_{k}": v for k, v in metrics.items() if k != "tokens"}
        )
        self._event(metrics_file, "test", **{f"test_{k}": v for k, v in metrics.items()})
        logger.info("test loss %.4f, perplexity %.2f", metrics["loss"], metrics["perplexity"])

    def _save(self, name: str) -> None:
        """Write checkpoint ``out_dir/name`` (rank 0); never a model with non-finite weights."""
        if not self.ctx.is_main:
            return
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            self._raise_non_finite(self.progress.step, float("nan"))
        rng_json, tensors = capture_rng_state()
        has_state = self.stateful and self.carried is not None
        if has_state:
            tensors.update(state_to_tensors(self.carried, prefix="carried"))
        trainer_state = {
            "progress": self.progress.__dict__,
            # Losses of steps since the last log, so a resumed run logs the same means.
            "pending_losses": self._check_losses(),
            "rng": rng_json,
            "has_carried_state": has_state,
            "world_size": self.ctx.world_size,
            "seed": self.config.train.seed,
            "step": self.progress.step,
            "tokens": self.progress.tokens,
            "best_val_loss": self.progress.best_val_loss,
            "trainable_parameters": count_parameters(self.model, trainable_only=True),
        }
        if self.lora_layers:
            tc = self.config.train
            # model.safetensors holds the base weights; the adapters are in adapter.safetensors.
            trainer_state["lora"] = {
                "adapter": True,
                "rank": tc.lora_rank,
                "alpha": tc.lora_alpha,
                "layers": self.lora_layers,
            }
        save_checkpoint(
            self.out_dir / name,
            model=self.model,
            tokenizer=self.tokenizer,
            source_tokenizer=self.source_tokenizer,
            config=self.config,
            optimizer=self.optimizer,
            trainer_state=trainer_state,
            tensors=tensors,
        )

    def _plot(self) -> None:
        from ..analysis import plot_loss_curve

        try:
            plot_loss_curve(
                self.out_dir / METRICS_FILE,
                self.out_dir / LOSS_CURVE_FILE,
                title=f"{self.config.model.arch} on {self.tokenizer.kind} tokens",
            )
        except (OSError, ValueError) as exc:  # a plot is never worth failing a finished run
            logger.warning("could not draw the loss curve: %s", exc)


# --------------------------------------------------------------------------- helpers


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _load_resume_checkpoint(out_dir: Path, device: torch.device) -> Checkpoint:
    last = out_dir / LAST
    if not last.exists() and not any(out_dir.glob(f".{LAST}.old-*")):
        raise CheckpointError(
            f"cannot resume: {last} does not exist; start a new run without --resume"
        )
    ckpt = load_checkpoint(last, map_location=device)
    if ckpt.trainer_state is None or not ckpt.has_optimizer_state:
        raise CheckpointError(
            f"cannot resume from {last}: it has no optimizer/trainer state; use it as "
            "init_from to fine-tune instead"
        )
    return ckpt


def _resume_config(asked: RunConfig, saved: RunConfig) -> RunConfig:
    """Resume keeps the checkpoint's model and tokenizer; training settings come from ``asked``."""
    sizes = {"vocab_size": saved.model.vocab_size, "src_vocab_size": saved.model.src_vocab_size}
    if replace(asked.model, **sizes) != saved.model:
        logger.warning(
            "resuming keeps the checkpoint's model settings; the model settings given are ignored"
        )
    if (
        asked.train.batch_size != saved.train.batch_size
        or asked.train.seq_len != saved.train.seq_len
    ):
        logger.warning(
            "resuming with another batch shape: the batches will differ from the original run"
        )
    return _keep_lora_settings(replace(asked, model=saved.model, tokenizer=saved.tokenizer), saved)


_LORA_KEYS = ("lora_rank", "lora_alpha", "lora_targets", "lora_dropout")


def _keep_lora_settings(asked: RunConfig, saved: RunConfig) -> RunConfig:
    """A resumed run keeps its LoRA settings: its adapters already exist in the checkpoint."""
    kept = {key: getattr(saved.train, key) for key in _LORA_KEYS}
    if any(getattr(asked.train, key) != value for key, value in kept.items()):
        logger.warning("resuming keeps the run's LoRA settings; the train.lora_* given are ignored")
    return replace(asked, train=replace(asked.train, **kept))


def _base_tokenizer_error(
    text: str, tokenizer: Any, what: str, error: TokenizerError
) -> TokenizerError:
    """The error for new text that the fine-tuning source's tokenizer cannot encode."""
    unknown = []
    for char in sorted(set(text)):
        try:
            tokenizer.encode(char)
        except TokenizerError:
            unknown.append(char)
    if not unknown:
        return TokenizerError(
            f"the base model's {tokenizer.kind} tokenizer cannot encode {what}: {error}"
        )
    shown = ", ".join(repr(c) for c in unknown[:10])
    more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
    return TokenizerError(
        f"the base model's {tokenizer.kind} tokenizer cannot encode the new data: {what} has "
        f"{len(unknown)} character(s) it has never seen ({shown}{more}); fine-tune on text "
        "without them, or start from a base model that can encode them (one trained with "
        "tokenizer.unk=true maps unseen characters to <unk>; a BPE tokenizer encodes any text)"
    )


def _finetune_config(asked: RunConfig, saved: RunConfig) -> RunConfig:
    """Fine-tuning keeps the source's architecture and tokenizer (dropout may change)."""
    model = replace(saved.model, dropout=asked.model.dropout)
    sizes = {"vocab_size": saved.model.vocab_size, "src_vocab_size": saved.model.src_vocab_size}
    if replace(asked.model, **sizes, dropout=asked.model.dropout) != model:
        logger.info("fine-tuning keeps the source checkpoint's model shape (%s)", saved.model.arch)
    if model.arch == "gpt" and asked.train.seq_len > model.block_size:
        raise ConfigError(
            f"train.seq_len ({asked.train.seq_len}) exceeds the source model's block_size "
            f"({model.block_size}); set train.seq_len={model.block_size} or less"
        )
    return replace(asked, model=model, tokenizer=saved.tokenizer)


def _test_text(corpus: Any, config: RunConfig) -> str | None:
    """The test text: the corpus's own, or ``data.test_path`` (relative to ``data.data_dir``)."""
    text = getattr(corpus, "test_text", None)
    if text:
        return text
    test_path = getattr(config.data, "test_path", "")
    if not test_path:
        return None
    from ..data import read_text

    path = Path(test_path).expanduser()
    data_dir = getattr(config.data, "data_dir", "")
    if data_dir and not path.is_absolute():
        path = Path(data_dir).expanduser() / path
    return read_text(path)


def _progress_bar(tc: Any, initial: int, *, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    only_steps = tc.max_steps > 0 and tc.max_time <= 0 and tc.max_tokens <= 0
    return tqdm(
        total=tc.max_steps if only_steps else None,
        initial=initial,
        unit="step",
        file=sys.stderr,
        disable=not enabled,
        dynamic_ncols=True,
        leave=True,
    )


def _logging_redirect() -> contextlib.AbstractContextManager[Any]:
    """Route log lines through tqdm so they do not tear the progress bar."""
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm
    except ImportError:  # pragma: no cover - very old tqdm
        return contextlib.nullcontext()
    return logging_redirect_tqdm()


def _format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


__all__ = ["LOSS_CURVE_FILE", "METRICS_FILE", "TrainResult", "train"]
