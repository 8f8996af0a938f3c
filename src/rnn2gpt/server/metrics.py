"""Prometheus metrics of one server (``GET /metrics``), all named ``rnn2gpt_*``.

- ``rnn2gpt_requests_total{endpoint, status}``: HTTP requests answered;
- ``rnn2gpt_prompt_tokens_total{model}``, ``rnn2gpt_generation_tokens_total{model}``;
- ``rnn2gpt_slots_busy{model}``, ``rnn2gpt_queue_depth{model}``: read from each scheduler when
  scraped (a test can watch a slot being freed);
- ``rnn2gpt_time_to_first_token_seconds{model}`` and
  ``rnn2gpt_time_per_output_token_seconds{model}``: histograms.

Each server has a registry of its own, so several can live in one process (tests).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ..generation.scheduler import Observer, Scheduler

_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_TPOT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class ServerMetrics:
    """The metrics of one server and the observers its schedulers report to."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "rnn2gpt_requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "rnn2gpt_prompt_tokens", "prompt tokens of accepted requests", ["model"], registry=r
        )
        self.generation_tokens = Counter(
            "rnn2gpt_generation_tokens", "tokens generated", ["model"], registry=r
        )
        self.slots_busy = Gauge(
            "rnn2gpt_slots_busy", "slots running a request", ["model"], registry=r
        )
        self.queue_depth = Gauge(
            "rnn2gpt_queue_depth", "requests waiting for a slot", ["model"], registry=r
        )
        self.time_to_first_token = Histogram(
            "rnn2gpt_time_to_first_token_seconds",
            "from a request's arrival to its first token",
            ["model"],
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.time_per_output_token = Histogram(
            "rnn2gpt_time_per_output_token_seconds",
            "mean time between a request's tokens after the first",
            ["model"],
            buckets=_TPOT_BUCKETS,
            registry=r,
        )

    def watch(self, model: str, scheduler: Scheduler) -> None:
        """Read the scheduler's busy slots and queue when scraped."""
        self.slots_busy.labels(model=model).set_function(lambda: scheduler.busy)
        self.queue_depth.labels(model=model).set_function(lambda: scheduler.queued)

    def observer(self, model: str) -> Observer:
        return _ModelObserver(self, model)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ModelObserver(Observer):
    def __init__(self, metrics: ServerMetrics, model: str) -> None:
        self.ttft = metrics.time_to_first_token.labels(model=model)
        self.tpot = metrics.time_per_output_token.labels(model=model)
        self.tokens = metrics.generation_tokens.labels(model=model)

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def finished(self, tokens: int, seconds_per_token: float | None) -> None:
        self.tokens.inc(tokens)
        if seconds_per_token is not None:
            self.tpot.observe(seconds_per_token)


__all__ = ["ServerMetrics"]
