"""Continuous batching: slot states, and the scheduler's results against plain decoding."""

from __future__ import annotations

import queue
import time

import pytest
import torch

from rnn2gpt.config import GenerationConfig, ModelConfig
from rnn2gpt.errors import ConfigError, ContextLengthError
from rnn2gpt.generation import generate
from rnn2gpt.generation.scheduler import QueueFull, Request, Scheduler
from rnn2gpt.models import build_model
from rnn2gpt.tokenizers import CharTokenizer

TEXT = "the quick brown fox jumps over the lazy dog.\nROMEO: o romeo, wherefore art thou?\n"
SHAPES = {
    "gpt": dict(arch="gpt", n_layer=2, n_head=2, n_embd=32, block_size=64),
    "lstm": dict(arch="lstm", n_layer=2, n_embd=32),
    "gru": dict(arch="gru", n_layer=1, n_embd=24),
    "rnn": dict(arch="rnn", n_layer=1, n_embd=24),
}


@pytest.fixture(scope="module")
def tokenizer():
    return CharTokenizer.train(TEXT)


def _model(arch: str, tokenizer, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(vocab_size=tokenizer.vocab_size, **SHAPES[arch])).eval()


def _run(scheduler: Scheduler, prompt: list[int], config: GenerationConfig, logprobs=None):
    """Submit one request; -> (token ids, text, finish reason, events)."""
    events: queue.Queue = queue.Queue()
    ticket = scheduler.submit(Request(prompt, config, events.put, logprobs=logprobs))
    tokens, text, log = [], "", []
    while True:
        event = events.get(timeout=60)
        log.append(event)
        text += event.text
        if event.kind == "token":
            tokens.append(event.token_id)
        elif event.kind == "done":
            return tokens, text, event.finish_reason, log, ticket
        else:
            raise AssertionError(event.message)


@pytest.mark.parametrize("arch", ["gpt", "lstm"])
def test_slot_state_rows_continue_as_alone(arch, tokenizer):
    model = _model(arch, tokenizer)
    prompts = [tokenizer.encode("the quick"), tokenizer.encode("ROMEO: o")]
    with torch.inference_mode():
        state = model.new_state(3, slots=True)
        alone = []
        for slot, prompt in zip((2, 0), prompts):
            logits, prefilled = model(torch.tensor([prompt]), None)
            state.write_rows([slot], prefilled)
            nxt, _ = model(torch.tensor([[5]]), prefilled)
            alone.append(nxt[0, -1])
        logits, state = model(torch.tensor([[5], [7], [5]]), state)  # row 1 is idle
    torch.testing.assert_close(logits[2, -1], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[0, -1], alone[1], atol=1e-5, rtol=1e-5)


def test_truncate_rolls_a_gpt_row_back_exactly(tokenizer):
    model = _model("gpt", tokenizer)
    prompt = tokenizer.encode("the quick brown")
    with torch.inference_mode():
        state = model.new_state(2, slots=True)
        _, prefilled = model(torch.tensor([prompt]), None)
        state.write_rows([1], prefilled)
        first, state = model(torch.tensor([[0], [3]]), state)
        _, state = model(torch.tensor([[0], [9]]), state)  # a drafted token, then rejected
        state.truncate({1: len(prompt)})
        again, state = model(torch.tensor([[0], [3]]), state)
    torch.testing.assert_close(again[1], first[1], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("tile", [None, 2])
@pytest.mark.parametrize("arch", sorted(SHAPES))
def test_greedy_requests_equal_plain_greedy_decoding(arch, tokenizer, tile):
    model = _model(arch, tokenizer)
    config = GenerationConfig(max_new_tokens=20, temperature=0.0, stop_at_eos=False)
    prompts = ["the", "ROMEO:", "o romeo, where"]
    scheduler = Scheduler(model, tokenizer, max_batch=4, tile=tile)
    try:
        for prompt in prompts:
            ids = tokenizer.encode(prompt)
            tokens, text, reason, _, _ = _run(scheduler, ids, config)
            [[want]] = generate(model, [ids], config, tokenizer=tokenizer)
            assert tokens == list(want.token_ids) and text == want.text and reason == "length"
    finally:
        scheduler.close()


@pytest.mark.parametrize("tile", [None, 4])
@pytest.mark.parametrize("arch", ["gpt", "lstm"])
def test_a_seeded_request_gives_the_same_tokens_alone_or_among_others(arch, tokenizer, tile):
    model = _model(arch, tokenizer)
    seeded = GenerationConfig(max_new_tokens=30, temperature=1.0, top_k=20, seed=123)
    prompt = tokenizer.encode("ROMEO:")
    scheduler = Scheduler(model, tokenizer, max_batch=8, tile=tile)
    try:
        alone = _run(scheduler, prompt, seeded)[0]
        others = []
        for i in range(7):  # neighbours with other settings, joining and leaving
            config = GenerationConfig(
                max_new_tokens=5 + 7 * i, temperature=0.7 + 0.1 * i, seed=i, top_p=0.9
            )
            others.append(
                scheduler.submit(Request(tokenizer.encode("the"), config, lambda e: None))
            )
        batched = _run(scheduler, prompt, seeded)[0]
    finally:
        scheduler.close()
    assert batched == alone and len(alone) == 30


def test_stop_strings_logprobs_and_eos(tokenizer):
    model = _model("gru", tokenizer)
    config = GenerationConfig(max_new_tokens=40, temperature=0.0, stop_at_eos=False)
    scheduler = Scheduler(model, tokenizer, max_batch=2)
    try:
        ids = tokenizer.encode("the")
        full = _run(scheduler, ids, config)[1]
        stop = full[3:5]
        stopped = GenerationConfig(max_new_tokens=40, temperature=0.0, stop=(stop,))
        tokens, text, reason, log, _ = _run(scheduler, ids, stopped, logprobs=3)
    finally:
        scheduler.close()
    assert text == full[: full.index(stop)] and reason == "stop"
    token_events = [e for e in log if e.kind == "token"]
    assert all(e.logprob is not None and len(e.top_logprobs) == 3 for e in token_events)
    # Greedy: the chosen token is the most likely one.
    assert all(e.logprob == pytest.approx(max(e.top_logprobs.values())) for e in token_events)


def test_cancel_frees_the_slot_within_a_step_and_the_queue_is_bounded(tokenizer):
    model = _model("lstm", tokenizer)
    long = GenerationConfig(max_new_tokens=100_000, temperature=1.0, seed=1)
    scheduler = Scheduler(model, tokenizer, max_batch=1, max_queue=1)
    try:
        first = scheduler.submit(Request(tokenizer.encode("the"), long, lambda e: None))
        deadline = time.time() + 30
        while scheduler.busy == 0 and time.time() < deadline:
            time.sleep(0.01)
        second = scheduler.submit(Request(tokenizer.encode("the"), long, lambda e: None))
        with pytest.raises(QueueFull):
            scheduler.submit(Request(tokenizer.encode("the"), long, lambda e: None))
        assert scheduler.busy == 1 and scheduler.queued == 1
        first.cancel()
        second.cancel()
        while (scheduler.busy or scheduler.queued) and time.time() < deadline:
            time.sleep(0.01)
        assert scheduler.busy == 0 and scheduler.queued == 0
    finally:
        scheduler.close()


def test_only_tiles_with_running_requests_are_computed(tokenizer, monkeypatch):
    model = _model("gru", tokenizer)
    shapes = []
    forward = model.forward

    def spy(tokens, state=None, **kw):
        shapes.append(tuple(tokens.shape))
        return forward(tokens, state, **kw)

    monkeypatch.setattr(model, "forward", spy)
    scheduler = Scheduler(model, tokenizer, max_batch=8, tile=2)
    try:
        _run(
            scheduler, tokenizer.encode("the"), GenerationConfig(max_new_tokens=5, temperature=0.0)
        )
    finally:
        scheduler.close()
    assert shapes[0] == (1, 3)  # the prefill, alone
    assert set(shapes[1:]) == {(2, 1)}  # then one tile of two rows per step, not all eight
    with pytest.raises(ConfigError, match="divide"):
        Scheduler(model, tokenizer, max_batch=8, tile=3)


def test_requests_that_cannot_run_are_refused(tokenizer):

    scheduler = Scheduler(_model("gpt", tokenizer), tokenizer, max_batch=1)
    try:
        with pytest.raises(ContextLengthError):
            scheduler.check([1] * 60, GenerationConfig(max_new_tokens=10))
        with pytest.raises(ConfigError):
            scheduler.check([], GenerationConfig())
        with pytest.raises(ConfigError):
            scheduler.check([1], GenerationConfig(num_beams=2))
    finally:
        scheduler.close()


def test_choose_tile_keeps_three_quarters_of_the_best_full_load_rate(tokenizer, monkeypatch):
    from rnn2gpt.generation import scheduler as module

    model = _model("gru", tokenizer)
    assert 8 % module.choose_tile(model, 8, repeats=1) == 0  # a divisor, whatever this CPU measures

    # With a fake clock each step of t rows takes cost[t] seconds: rates 1, 1.6, 2.5, 3 rows/s.
    cost = {1: 1.0, 2: 1.25, 4: 1.6, 8: 8 / 3}
    now = [0.0]
    forward = model.forward

    def timed(tokens, state=None, **kw):
        now[0] += cost[tokens.shape[0]]
        return forward(tokens, state, **kw)

    monkeypatch.setattr(model, "forward", timed)
    monkeypatch.setattr(module.time, "perf_counter", lambda: now[0])
    assert module.choose_tile(model, 8, repeats=3) == 4  # 2.5 >= 0.75 * 3 > 1.6
    assert module.choose_tile(model, 8, keep=0.5, repeats=3) == 2
    assert module.choose_tile(model, 8, keep=1.0, repeats=3) == 8
