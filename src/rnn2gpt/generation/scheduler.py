"""Continuous batching: one thread decodes every running request, one token per step.

The scheduler owns ``max_batch`` slots of one model state (``model.new_state(max_batch,
slots=True)``: a :class:`~rnn2gpt.models.kv_cache.SlotKVCache` for a GPT, the RNN state for the
recurrent models). A request waits in a bounded queue until a slot is free; then its prompt is
prefilled alone (batch 1) and its state copied into the slot (``write_rows``), and from the next
step on it advances with every other running request. A request that finishes, or whose client
goes away (:meth:`Ticket.cancel`), leaves at the end of the step (``free``); its slot takes the
next waiting request. No request waits for another to end.

**Each request keeps its own settings**: its logits processors (penalties, temperature, top-k/p,
min-p, typical, logit bias...), its own ``torch.Generator`` seeded from its seed, its stop strings
and its token limit, all applied to its own row.

**Batch invariance.** Decode steps run at fixed shapes: the slots are cut into tiles of ``tile``
rows, and every tile that holds a running request is computed whole (busy or idle rows alike; a
GPT attends over its whole capacity under a per-row mask); every prefill runs alone. A matrix
product of a fixed number of rows gives each row the same result whatever its position and its
neighbours (checked for MKL's sgemm; not so across row counts, where M = 1 takes a GEMV and
larger M other blockings), so the same kernels compute a request's logits whatever else is
running: a seeded request gives the same tokens alone or among 31 others. The price is that a
lone request pays for a whole tile (measured in benchmarks/RESULTS.md: with one tile of 32 rows,
0.27-0.44x of a lone slot's speed), while smaller tiles cost a full batch more calls.
:func:`choose_tile` measures the trade-off for a model at start-up. New requests take the lowest
free slot, so running requests gather in as few tiles as possible.

Per step: one batched forward (B = max_batch, T = 1), one host sync to read the greedy choices,
and for each busy row its processors and (when sampling) one draw; the events of a request are
handed to its ``emit`` callback from this thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..config import GenerationConfig
from ..errors import ConfigError, ContextLengthError
from ..models.base import eval_mode, model_device
from ..tokenizers.base import Tokenizer
from .processors import apply_processors, build_processors
from .request import make_generator, vocab_size_of
from .stopping import TextTracker

logger = logging.getLogger(__name__)


def choose_tile(model: nn.Module, max_batch: int, *, keep: float = 0.75, repeats: int = 5) -> int:
    """The tile for ``max_batch`` slots of ``model``, measured on this machine.

    Times one decode step (T = 1) at every divisor t of ``max_batch`` (median of ``repeats``) and
    returns the smallest t whose full-load rate, t rows per step time, is at least ``keep`` of the
    best divisor's: a lone request runs as fast as it can without costing a full batch more than
    a quarter of its throughput. Large models, whose step is arithmetic, get small tiles; small
    ones, whose step is fixed per-call cost, get large tiles. Takes ~20 steps' time.
    """
    device = model_device(model)
    divisors = [t for t in range(1, max_batch + 1) if max_batch % t == 0]
    step_seconds: dict[int, float] = {}
    with eval_mode(model), torch.inference_mode():
        for rows in divisors:
            state = model.new_state(rows, slots=True)
            tokens = torch.zeros(rows, 1, dtype=torch.long, device=device)
            _, state = model(tokens, state)  # warm-up: first-call allocations
            samples = []
            for _ in range(repeats):
                start = time.perf_counter()
                _, state = model(tokens, state)
                samples.append(time.perf_counter() - start)
            step_seconds[rows] = sorted(samples)[len(samples) // 2]
    rate = {rows: rows / seconds for rows, seconds in step_seconds.items()}
    best = max(rate.values())
    tile = min(rows for rows in divisors if rate[rows] >= keep * best)
    logger.info(
        "tile %d of %d slots (ms per step: %s)",
        tile,
        max_batch,
        ", ".join(f"{rows} rows {1000 * s:.2f}" for rows, s in step_seconds.items()),
    )
    return tile


class QueueFull(Exception):
    """The scheduler's queue holds ``max_queue`` waiting requests already."""


@dataclass
class Event:
    """What a running request produces, in order: ``token`` events, then one ``done`` (or
    ``error``).

    token: ``token_id``; ``text``, the text that became safe to show (may be "" while a
    character or a possible stop string is incomplete); ``logprob`` and ``top_logprobs``
    ({id: logprob}) under the model's unprocessed distribution when asked.
    done: ``finish_reason`` ("stop": end-of-sequence or a stop string; "length": max_tokens or
    the model's context), ``text`` (what was still held back), ``completion_tokens``.
    error: ``message``.
    """

    kind: str
    token_id: int | None = None
    text: str = ""
    logprob: float | None = None
    top_logprobs: dict[int, float] | None = None
    finish_reason: str | None = None
    completion_tokens: int = 0
    message: str = ""


@dataclass
class Request:
    """One sequence to generate: ``config`` must ask for one sequence and no beams (``n``
    choices are ``n`` requests); ``logprobs`` None or the number of alternatives per token."""

    prompt_ids: Sequence[int]
    config: GenerationConfig
    emit: Callable[[Event], None]
    logprobs: int | None = None


@dataclass
class Ticket:
    """A submitted request: :meth:`cancel` makes it leave its slot at the end of the step."""

    request: Request
    submitted: float = field(default_factory=time.perf_counter)
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class Observer:
    """Hooks the server counts with (all called from the scheduler thread; no-ops here)."""

    def first_token(self, seconds: float) -> None:
        """Time from submission to the first token of a request."""

    def finished(self, tokens: int, seconds_per_token: float | None) -> None:
        """A request ended with ``tokens`` generated; the mean time between its tokens."""


class _Slot:
    """A running request: its history, processors, generator, text and counters."""

    def __init__(self, ticket: Ticket, model: nn.Module, tokenizer: Tokenizer, device: Any) -> None:
        request = ticket.request
        config = request.config
        self.ticket = ticket
        self.prompt_len = len(request.prompt_ids)
        self.max_new = config.max_new_tokens
        self.history = torch.zeros(1, self.prompt_len + self.max_new + 1, dtype=torch.long)
        self.history[0, : self.prompt_len] = torch.tensor(list(request.prompt_ids))
        self.length = self.prompt_len
        self.processors = build_processors(
            config,
            vocab_size=vocab_size_of(model),
            eos_id=tokenizer.eos_id,
            prompt_len=self.prompt_len,
            tokenizer=tokenizer,
            device=device,
        )
        self.generator = None if config.greedy else make_generator(config.seed, device)
        self.eos = tokenizer.eos_id if config.stop_at_eos else None
        self.tracker = TextTracker.for_config(tokenizer, config, prompt_ids=request.prompt_ids)
        self.generated = 0
        self.last_token = 0
        self.first_time: float | None = None


class Scheduler:
    """Continuous batching over one model (see the module docstring).

    Args:
        model: a language model of the contract whose ``new_state`` takes ``slots=True``.
        tokenizer: decodes text, stop strings; its ``eos_id`` ends sequences.
        max_batch: slots decoded together at every step.
        max_queue: requests that may wait for a slot; :meth:`submit` raises QueueFull beyond.
        tile: rows computed together (a divisor of ``max_batch``; default: all of them).
        observer: timing hooks (metrics).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Tokenizer,
        *,
        max_batch: int = 32,
        max_queue: int = 128,
        tile: int | None = None,
        observer: Observer | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 0:
            raise ConfigError("max_batch must be >= 1 and max_queue >= 0")
        tile = tile or max_batch
        if tile < 1 or max_batch % tile:
            raise ConfigError(f"the tile ({tile} rows) must divide max_batch ({max_batch})")
        self.tile = tile
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.observer = observer or Observer()
        self.device = model_device(model)
        with torch.inference_mode():
            self.state = model.new_state(max_batch, slots=True)
        self.slots: list[_Slot | None] = [None] * max_batch
        self.waiting: deque[Ticket] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="rnn2gpt-scheduler", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the caller's side

    def check(self, prompt_ids: Sequence[int], config: GenerationConfig) -> None:
        """Raise ConfigError/ContextLengthError for a request this scheduler cannot run."""
        config.validate()
        if config.num_beams != 1 or config.num_return_sequences != 1:
            raise ConfigError("the scheduler runs one sequence per request, without beams")
        if not prompt_ids:
            raise ConfigError("the prompt is empty; give at least one token")
        vocab = vocab_size_of(self.model)
        if min(prompt_ids) < 0 or max(prompt_ids) >= vocab:
            raise ConfigError(f"prompt token ids must be in 0..{vocab - 1}")
        context = self.model.max_context
        if context is not None and len(prompt_ids) + config.max_new_tokens > context:
            raise ContextLengthError(
                f"the prompt ({len(prompt_ids)} tokens) plus max_tokens ({config.max_new_tokens}) "
                f"exceed the model's context of {context} tokens; shorten the prompt or ask for "
                "fewer tokens"
            )

    def submit(self, request: Request) -> Ticket:
        """Queue a request (checked with :meth:`check`); QueueFull when the queue is full."""
        self.check(request.prompt_ids, request.config)
        ticket = Ticket(request)
        with self._wake:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            if len(self.waiting) >= self.max_queue and None not in self.slots:
                raise QueueFull(f"{len(self.waiting)} requests are waiting already")
            self.waiting.append(ticket)
            self._wake.notify()
        return ticket

    @property
    def busy(self) -> int:
        """Slots running a request now."""
        return sum(slot is not None for slot in self.slots)

    @property
    def queued(self) -> int:
        """Requests waiting for a slot."""
        return len(self.waiting)

    def close(self) -> None:
        """Stop the thread after the current step; running requests end with an error event."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=30)

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        with eval_mode(self.model), torch.inference_mode():
            while True:
                with self._wake:
                    while not self._closed and not self.waiting and self.busy == 0:
                        self._wake.wait()
                    if self._closed:
                        break
                try:
                    self._admit()
                    if self.busy:
                        self._step()
                except Exception as exc:  # a bug must not hang every client: end them all
                    logger.exception("the scheduler failed a step")
                    self._fail_all(f"internal error while generating: {exc}")
        self._fail_all("the server is shutting down")

    def _admit(self) -> None:
        """Fill free slots from the queue: prefill each request alone, copy its state in."""
        for index in range(self.max_batch):
            if self.slots[index] is not None:
                continue
            with self._wake:
                ticket = self.waiting.popleft() if self.waiting else None
            if ticket is None:
                return
            if ticket.cancelled:
                continue
            slot = _Slot(ticket, self.model, self.tokenizer, self.device)
            tokens = torch.tensor([list(ticket.request.prompt_ids)], device=self.device)
            logits, state = self.model(tokens, None)  # (1, T, V): this prompt alone
            self.state.write_rows([index], state)
            self.slots[index] = slot
            self._advance(index, slot, logits[0, -1].float())

    def _step(self) -> None:
        """One token for every busy slot: one forward per tile that holds one (fixed shapes)."""
        tokens = torch.zeros(self.max_batch, 1, dtype=torch.long)
        for index, slot in enumerate(self.slots):
            if slot is not None:
                tokens[index, 0] = slot.last_token
        tokens = tokens.to(self.device)
        for start in range(0, self.max_batch, self.tile):
            stop = start + self.tile
            if all(slot is None for slot in self.slots[start:stop]):
                continue
            part = self.state.rows(start, stop)
            logits, part = self.model(tokens[start:stop], part)
            self.state.set_rows(start, stop, part)
            logits = logits[:, -1].float()  # (tile, V)
            idle = []
            for offset, slot in enumerate(self.slots[start:stop]):
                if slot is None:
                    idle.append(start + offset)
                else:
                    self._advance(start + offset, slot, logits[offset])
            if idle:
                self.state.free(idle)  # idle rows took a pad token: reset them

    def _advance(self, index: int, slot: _Slot, logits: Tensor) -> None:
        """Choose the next token of one slot from its logits (V,), emit it, and end the request
        when it is done or cancelled."""
        if slot.ticket.cancelled:
            self._leave(index, slot, None)
            return
        history = slot.history[:, : slot.length]
        scores = logits[None]
        if slot.processors:
            scores = apply_processors(slot.processors, history, scores)
        if slot.generator is None:
            token = int(scores.argmax(dim=-1))
        else:
            probs = scores.softmax(dim=-1)
            token = int(torch.multinomial(probs, 1, generator=slot.generator))
        logprob = top = None
        asked = slot.ticket.request.logprobs
        if asked is not None:
            raw = logits.log_softmax(dim=-1)
            logprob = float(raw[token])
            if asked > 0:
                values, ids = raw.topk(asked)
                top = dict(zip(ids.tolist(), values.tolist()))
        now = time.perf_counter()
        if slot.first_time is None:
            slot.first_time = now
            self.observer.first_token(now - slot.ticket.submitted)
        slot.history[0, slot.length] = token
        slot.length += 1
        slot.generated += 1
        slot.last_token = token
        reason = None
        if token == slot.eos:
            reason = "stop"
        else:
            if slot.tracker.add(token):
                reason = "stop"
            slot.ticket.request.emit(
                Event("token", token, slot.tracker.take(), logprob=logprob, top_logprobs=top)
            )
        if reason is None and slot.generated >= slot.max_new:
            reason = "length"
        if reason is not None:
            self._leave(index, slot, reason)

    def _leave(self, index: int, slot: _Slot, reason: str | None) -> None:
        """Free the slot; ``reason`` None means the client went away (nothing is emitted)."""
        self.slots[index] = None
        self.state.free([index])
        seconds = None
        if slot.first_time is not None and slot.generated > 1:
            seconds = (time.perf_counter() - slot.first_time) / (slot.generated - 1)
        self.observer.finished(slot.generated, seconds)
        if reason is None:
            return
        slot.tracker.finish()
        slot.ticket.request.emit(
            Event(
                "done",
                text=slot.tracker.take(),
                finish_reason=reason,
                completion_tokens=slot.generated,
            )
        )

    def _fail_all(self, message: str) -> None:
        for index, slot in enumerate(self.slots):
            if slot is not None:
                self.slots[index] = None
                slot.ticket.request.emit(Event("error", message=message))
        with self._wake:
            waiting, self.waiting = list(self.waiting), deque()
        for ticket in waiting:
            ticket.request.emit(Event("error", message=message))


__all__ = ["Event", "Observer", "QueueFull", "Request", "Scheduler", "Ticket"]
