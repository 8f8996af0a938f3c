"""``/v1/completions``: an OpenAI request -> scheduler requests -> an OpenAI response or stream.

Every prompt x ``n`` is one scheduler request (choice ``i * n + j``); with a ``seed``, choice j of
a prompt samples with ``seed + j``, so choices differ and each is reproducible. Events come back
from the scheduler thread through ``loop.call_soon_threadsafe`` into one asyncio queue per HTTP
request. A client that disconnects has every one of its requests cancelled: each leaves its slot
at the end of the current step.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ..config import GenerationConfig
from ..errors import ConfigError
from ..generation.scheduler import Event, QueueFull, Request, Ticket
from ..tokenizers.base import encode_prompt
from .hosts import Host, ServerSettings
from .schemas import MAX_STOP, CompletionRequest


class TooBusy(Exception):
    """The scheduler's queue is full: answer 429 with Retry-After."""


@dataclass
class Choice:
    """What one choice has produced so far."""

    index: int
    prompt_text: str
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[dict[int, float]] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class Job:
    """One HTTP request's choices, tickets and event queue."""

    host: Host
    request: CompletionRequest
    prompts: list[list[int]]
    choices: list[Choice]
    events: asyncio.Queue
    tickets: list[Ticket] = field(default_factory=list)
    id: str = field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))
    checked_at: float = field(default_factory=time.monotonic)  # last look for a gone client

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    @property
    def completion_tokens(self) -> int:
        return sum(len(c.tokens) for c in self.choices)

    def usage(self) -> dict[str, int]:
        prompt, completion = self.prompt_tokens, self.completion_tokens
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def cancel(self) -> None:
        for ticket in self.tickets:
            ticket.cancel()


def start_job(host: Host, body: CompletionRequest, settings: ServerSettings) -> Job:
    """Check the request against the model and the limits, and queue its choices.

    Raises:
        ConfigError: a setting or prompt the model cannot take (answered 400).
        TooBusy: the queue cannot take every choice (answered 429).
    """
    if body.max_tokens > settings.max_tokens:
        raise ConfigError(f"max_tokens must be at most {settings.max_tokens} on this server")
    prompt_texts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
    if not prompt_texts:
        raise ConfigError("prompt is an empty list; give a prompt or a list of prompts")
    if len(prompt_texts) * body.n > settings.max_batch:
        raise ConfigError(
            f"{len(prompt_texts)} prompt(s) x n={body.n} is more than this server's "
            f"{settings.max_batch} slots; send fewer at once"
        )
    tokenizer = host.tokenizer
    prompts = [encode_prompt(tokenizer, text) for text in prompt_texts]
    limit = host.context or settings.max_prompt_tokens
    for ids in prompts:
        if len(ids) > limit:
            raise ConfigError(f"the prompt has {len(ids)} tokens; this model takes at most {limit}")
    config = generation_config(body, tokenizer.vocab_size)
    scheduler = host.engine
    for ids in prompts:
        scheduler.check(ids, config)
    if scheduler.queued + len(prompts) * body.n > scheduler.max_queue + (
        scheduler.max_batch - scheduler.busy
    ):
        raise TooBusy(f"{scheduler.queued} requests are waiting already")

    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    choices = [
        Choice(i * body.n + j, text if body.echo else "")
        for i, text in enumerate(prompt_texts)
        for j in range(body.n)
    ]
    job = Job(host, body, prompts, choices, events)
    for i, ids in enumerate(prompts):
        for j in range(body.n):
            index = i * body.n + j
            seed = None if body.seed is None else body.seed + j
            request = Request(
                ids,
                config if seed is None else _with_seed(config, seed),
                _emitter(loop, events, index),
                logprobs=body.logprobs,
            )
            try:
                job.tickets.append(scheduler.submit(request))
            except QueueFull as exc:
                job.cancel()
                raise TooBusy(str(exc)) from None
    return job


def generation_config(body: CompletionRequest, vocab_size: int) -> GenerationConfig:
    """The decoding settings of a completion request (validated)."""
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > MAX_STOP or any(not s for s in stops):
        raise ConfigError(f"stop takes up to {MAX_STOP} non-empty strings")
    bias = []
    for key, value in (body.logit_bias or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise ConfigError(f"logit_bias keys are token ids; {key!r} is not one") from None
        if not 0 <= token < vocab_size:
            raise ConfigError(
                f"logit_bias token {token} is outside the vocabulary (0..{vocab_size - 1})"
            )
        if not -100.0 <= value <= 100.0:
            raise ConfigError(f"logit_bias values must be in [-100, 100] (got {value})")
        bias.append((token, float(value)))
    config = GenerationConfig(
        max_new_tokens=body.max_tokens,
        temperature=body.temperature,
        top_k=max(body.top_k, 0),
        top_p=body.top_p,
        min_p=body.min_p,
        typical_p=body.typical_p,
        repetition_penalty=body.repetition_penalty,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        logit_bias=tuple(bias),
        stop=tuple(stops),
        seed=body.seed,
    )
    if body.watermark is not None:
        config = replace(
            config,
            watermark=body.watermark.key,
            watermark_gamma=body.watermark.gamma,
            watermark_delta=body.watermark.delta,
            watermark_context=body.watermark.context,
        )
    config.validate()
    return config


def _with_seed(config: GenerationConfig, seed: int) -> GenerationConfig:
    return replace(config, seed=seed)


def _emitter(loop: asyncio.AbstractEventLoop, events: asyncio.Queue, index: int) -> Callable:
    def emit(event: Event) -> None:
        loop.call_soon_threadsafe(events.put_nowait, (index, event))

    return emit


def record(choice: Choice, event: Event) -> None:
    """Fold one scheduler event into a choice."""
    choice.text += event.text
    if event.kind == "token":
        assert event.token_id is not None
        choice.tokens.append(event.token_id)
        if event.logprob is not None:
            choice.logprobs.append(event.logprob)
            choice.top.append(event.top_logprobs or {})
    elif event.kind == "done":
        choice.finish_reason = event.finish_reason


# How often a waiting request asks whether its client is still there.
DISCONNECT_CHECK_S = 0.25


async def next_event(
    job: Job, disconnected: Callable[[], Awaitable[bool]]
) -> tuple[int, Event] | None:
    """The next event of any choice; None when the client went away (its choices cancelled).

    The client is looked for every DISCONNECT_CHECK_S, whether tokens are flowing or not: a
    request whose events never pause must still notice that nobody waits for it.
    """
    while True:
        now = time.monotonic()
        if now - job.checked_at >= DISCONNECT_CHECK_S:
            job.checked_at = now
            if await disconnected():
                job.cancel()
                return None
        try:
            return await asyncio.wait_for(job.events.get(), timeout=DISCONNECT_CHECK_S)
        except asyncio.TimeoutError:
            continue


async def collect(job: Job, disconnected: Callable[[], Awaitable[bool]]) -> dict[str, Any] | None:
    """Wait for every choice; the response body (None if the client went away)."""
    remaining = len(job.choices)
    while remaining:
        item = await next_event(job, disconnected)
        if item is None:
            return None
        index, event = item
        if event.kind == "error":
            job.cancel()
            raise RuntimeError(event.message)
        record(job.choices[index], event)
        remaining -= event.kind == "done"
    return {
        "id": job.id,
        "object": "text_completion",
        "created": job.created,
        "model": job.host.name,
        "choices": [_choice_body(job, c, c.text, c.tokens, c.logprobs, c.top) for c in job.choices],
        "usage": job.usage(),
    }


async def stream(job: Job, disconnected: Callable[[], Awaitable[bool]]) -> AsyncIterator[bytes]:
    """Server-Sent Events: a chunk per token, a last chunk per choice with its finish reason,
    the usage chunk when asked, then ``data: [DONE]``."""
    try:
        for choice in job.choices:
            if choice.prompt_text:  # echo: the prompt comes first
                yield _sse(_chunk(job, choice.index, choice.prompt_text, None, None))
        remaining = len(job.choices)
        while remaining:
            item = await next_event(job, disconnected)
            if item is None:
                return
            index, event = item
            if event.kind == "error":
                yield _sse({"error": {"message": event.message, "type": "server_error"}})
                return
            choice = job.choices[index]
            record(choice, event)
            if event.kind == "token":
                logprobs = None
                if job.request.logprobs is not None:
                    token = [event.token_id]
                    logprobs = _logprobs_body(
                        job, token, [event.logprob], [event.top_logprobs or {}], event.text
                    )
                yield _sse(_chunk(job, index, event.text, logprobs, None))
            else:
                remaining -= 1
                yield _sse(_chunk(job, index, event.text, None, event.finish_reason))
        options = job.request.stream_options
        if options is not None and options.include_usage:
            yield _sse({**_chunk_header(job), "choices": [], "usage": job.usage()})
        yield b"data: [DONE]\n\n"
    finally:
        job.cancel()  # a client that went away mid-stream frees its slots within a step


def _chunk_header(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "object": "text_completion",
        "created": job.created,
        "model": job.host.name,
    }


def _chunk(
    job: Job, index: int, text: str, logprobs: dict | None, finish_reason: str | None
) -> dict[str, Any]:
    choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
    return {**_chunk_header(job), "choices": [choice]}


def _sse(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _choice_body(
    job: Job,
    choice: Choice,
    text: str,
    tokens: list[int],
    logprobs: list[float],
    top: list[dict[int, float]],
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "index": choice.index,
        "text": choice.prompt_text + text,
        "logprobs": None,
        "finish_reason": choice.finish_reason,
    }
    if job.request.logprobs is not None:
        body["logprobs"] = _logprobs_body(job, tokens[: len(logprobs)], logprobs, top, text)
    return body


def _logprobs_body(
    job: Job, tokens: list[int], logprobs: list[float], top: list[dict[int, float]], text: str
) -> dict[str, Any]:
    """OpenAI's legacy logprobs object; token strings are each token decoded alone."""
    decode = job.host.tokenizer.decode
    pieces = [decode([t]) for t in tokens]
    offsets, at = [], 0
    for piece in pieces:
        offsets.append(at)
        at += len(piece)
    alternatives = None
    if job.request.logprobs:
        alternatives = [{decode([i]): lp for i, lp in alts.items()} for alts in top]
    return {
        "tokens": pieces,
        "token_logprobs": logprobs,
        "top_logprobs": alternatives,
        "text_offset": offsets,
    }


__all__ = ["Job", "TooBusy", "collect", "generation_config", "start_job", "stream"]
