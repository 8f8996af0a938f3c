"""The GPT's one-token decode step in C (models/native_step.py) gives GPT.forward's numbers.

Where the C kernel cannot run (not x86 with AVX2 and FMA, or no compiler), the tests of its
results skip naming why; the fallback (the plan's PyTorch path) is what every other test runs.
"""

from __future__ import annotations

import pytest
import torch
from gpt_decoding import GPT_VARIANTS, PROMPT, decode_logits

from rnn2gpt.config import GenerationConfig
from rnn2gpt.generation import generate
from rnn2gpt.models import decode_plan, native, native_step
from rnn2gpt.models.base import use_inference_layout
from rnn2gpt.models.lora import apply_lora
from rnn2gpt.models.native_step import MAX_ROWS, NativeStep, build_native_step
from rnn2gpt.models.quantized import quantize_model


@pytest.fixture
def c_steps(monkeypatch, fastpaths_auto):
    """Every one-token step the C kernel accepts runs in C on two threads (no timing); counts
    the C calls."""
    reason = native.load_built(native_step.KERNEL)[1]
    if reason is not None:
        pytest.skip(f"the C decode step cannot run here: {reason}")
    monkeypatch.setattr(decode_plan, "native_threads", lambda plan, rows, steps=1: 2)
    calls = []
    real_call = NativeStep.__call__

    def counted(self, tokens, cache, threads=1):
        calls.append(tuple(tokens.shape))
        return real_call(self, tokens, cache, threads)

    monkeypatch.setattr(NativeStep, "__call__", counted)
    return calls


def _assert_close_to_general(model, calls, rows=PROMPT, steps=6, **kwargs):
    fast = decode_logits(model, rows, steps=steps, **kwargs)
    batch = len(rows)
    expected = [(batch, t) for t in (len(rows[0]), 3) if batch * t <= MAX_ROWS]
    assert calls == expected + [(batch, 1)] * steps, "every call of a few tokens ran in C"
    general = decode_logits(model, rows, steps=steps, general=True, **kwargs)
    torch.testing.assert_close(fast, general, rtol=1e-5, atol=1e-5)


VARIANTS = {
    **GPT_VARIANTS,
    "odd": {"n_embd": 20, "n_head": 4},  # head width 5, rows of 20: every scalar tail
    "wide": {"n_embd": 96, "n_head": 3, "vocab_size": 70},  # head width 32, 64-output chunks
}


@pytest.mark.parametrize("overrides", VARIANTS.values(), ids=VARIANTS.keys())
@pytest.mark.parametrize("layout", ["rows", "column-major"])
def test_c_step_equals_general_path(make_model, c_steps, overrides, layout):
    model = make_model(**overrides)
    if layout == "column-major":  # as use_inference_layout lays out models that decode in PyTorch
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.Linear):  # the tied embedding too
                    module.weight.data = module.weight.data.t().contiguous().t()
        assert not model.transformer.h[0].attn.c_attn.weight.is_contiguous()
    _assert_close_to_general(model, c_steps)


def test_the_inference_layout_keeps_rows_where_the_step_runs_in_c(make_model, c_steps, monkeypatch):
    model = use_inference_layout(make_model())
    assert model.transformer.h[0].attn.c_attn.weight.is_contiguous()
    _assert_close_to_general(model, c_steps)
    monkeypatch.setattr(native_step, "unavailable_reason", lambda: "no compiler")
    other = use_inference_layout(make_model())
    assert not other.transformer.h[0].attn.c_attn.weight.is_contiguous()
    lstm = use_inference_layout(make_model(arch="lstm"))
    assert not lstm.decoder.weight.is_contiguous()


@pytest.mark.parametrize("overrides", [{}, {"bias": False}, {"n_embd": 20, "n_head": 4}])
def test_int8_weights_run_in_c_too(make_model, c_steps, overrides):
    model = quantize_model(make_model(**overrides))
    assert native_step._ineligible(model) is None
    _assert_close_to_general(model, c_steps)


def test_one_row_and_the_most_rows(make_model, c_steps):
    model = make_model()
    _assert_close_to_general(model, c_steps, rows=PROMPT[:1])
    c_steps.clear()
    rows = (PROMPT * 2)[:MAX_ROWS]
    _assert_close_to_general(model, c_steps, rows=rows)


def test_left_padded_rows(make_model, c_steps):
    pad_mask = torch.tensor([[False, False, True, True, True, True, True]] + [[True] * 7] * 2)
    _assert_close_to_general(make_model(), c_steps, pad_mask=pad_mask)


def test_slot_cache_of_the_server_and_speculation(make_model, c_steps):
    _assert_close_to_general(make_model(), c_steps, slots=True)


def test_a_row_does_not_depend_on_its_neighbours(make_model, c_steps):
    """Each row's arithmetic in C is its own: the same bits alone or beside others (batch
    invariance, which the server's scheduler relies on)."""
    model = make_model()
    with torch.inference_mode():
        state = model.new_state(3, capacity=12)
        model(torch.tensor(PROMPT), state)
        alone = state.select(torch.tensor([1]))
        token = torch.tensor([[3], [5], [7]])
        together_logits, state = model(token, state)
        alone_logits, alone = model(token[1:2], alone)
    assert c_steps == [(3, 1), (1, 1)]
    assert torch.equal(together_logits[1:2], alone_logits)
    assert all(torch.equal(a[1:2], b) for a, b in zip(state.keys, alone.keys, strict=True))


def test_a_token_outside_the_vocabulary_is_an_index_error(make_model, c_steps):
    model = make_model()
    with torch.inference_mode():
        state = model.new_state(1)
        model(torch.tensor([PROMPT[0]]), state)
        for bad in (13, -1):  # the vocabulary has 13 tokens
            with pytest.raises(IndexError, match="token ids must be in 0..12"):
                model(torch.tensor([[bad]]), state)
        assert state.length == 7  # nothing was written


def test_more_tokens_than_it_takes_run_in_pytorch(make_model, c_steps):
    rows = (PROMPT * 3)[: MAX_ROWS + 1]
    decode_logits(make_model(), rows)
    assert c_steps == []


@pytest.mark.parametrize("pad", [False, True])
def test_a_prompt_and_a_speculative_check_of_several_tokens(make_model, c_steps, pad):
    """T > 1 tokens per row in one call: causal among themselves, over the cache before them."""
    model = make_model(n_embd=96, n_head=3, vocab_size=70)
    rows = [PROMPT[0][:4], PROMPT[1][:4]]
    pad_mask = torch.tensor([[False, True, True, True], [True] * 4]) if pad else None
    _assert_close_to_general(model, c_steps, rows=rows, steps=2, pad_mask=pad_mask)
    assert (2, 4) in c_steps and (2, 3) in c_steps


def test_greedy_tokens_equal_the_general_path(make_model, c_steps):
    model = make_model(n_embd=32, n_head=2)
    config = GenerationConfig(
        max_new_tokens=24, min_new_tokens=24, stop_at_eos=False, temperature=0.0
    )
    fast = generate(model, [PROMPT[0]], config)
    assert len(c_steps) >= 20 and (1, 7) in c_steps  # the prompt too
    handle = model.register_forward_pre_hook(lambda module, args: None)
    try:
        general = generate(model, [PROMPT[0]], config)
    finally:
        handle.remove()
    assert fast[0][0].token_ids == general[0][0].token_ids


@pytest.mark.parametrize(
    "transform, reason",
    [
        ("lora", "LoRA or other"),
        ("bf16", "not float32"),
        ("adaptive", "adaptive output"),
    ],
)
def test_models_it_cannot_run_keep_the_pytorch_step(make_model, c_steps, transform, reason):
    model = make_model(adaptive_cutoffs=(6,)) if transform == "adaptive" else make_model()
    if transform == "lora":
        apply_lora(model, rank=2, alpha=4.0)
    elif transform == "bf16":
        model.to(torch.bfloat16)
    assert reason in native_step._ineligible(model)
    assert build_native_step(model) is None
    decode_logits(model, PROMPT)
    assert c_steps == []
    assert model._decode_plan.native is None


def test_hooks_keep_every_step_in_pytorch(make_model, c_steps):
    model = make_model()
    fired = []
    handle = model.transformer.h[0].register_forward_hook(lambda *_: fired.append(1))
    try:
        decode_logits(model, PROMPT, steps=3)
    finally:
        handle.remove()
    assert c_steps == [] and len(fired) == 2 + 3


def test_fast_paths_off_keep_the_pytorch_step(make_model, monkeypatch):
    monkeypatch.setenv("RNN2GPT_FASTPATHS", "off")
    model = make_model()
    assert build_native_step(model) is None
    assert "RNN2GPT_FASTPATHS=off" in native_step.unavailable_reason()
    decode_logits(model, PROMPT, steps=2)
    assert model._decode_plan.native is None


def test_the_thread_count_does_not_change_a_bit(make_model, c_steps):
    model = make_model(n_embd=96, n_head=3, vocab_size=70)  # several output blocks and heads
    logits = []
    with torch.inference_mode():
        for threads in (1, 2, 3):
            state = model.new_state(2, capacity=12)
            model(torch.tensor(PROMPT[:2]), state)
            plan = model._decode_plan
            steps = [plan.native(torch.tensor([[t], [t + 1]]), state, threads) for t in (3, 4)]
            logits.append(torch.cat(steps, dim=1))
    assert torch.equal(logits[0], logits[1]) and torch.equal(logits[0], logits[2])


def test_the_choice_is_timed_once_and_draws_no_random_numbers(make_model, fastpaths_auto):
    reason = native.load_built(native_step.KERNEL)[1]
    if reason is not None:
        pytest.skip(f"the C decode step cannot run here: {reason}")
    decode_plan._NATIVE_CHOICE.clear()
    model = make_model()
    with torch.inference_mode():
        model(torch.tensor(PROMPT[:2]), model.new_state(2))  # builds the plan
    plan = model._decode_plan
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    with torch.inference_mode():
        first = decode_plan.native_threads(plan, 2)
    assert torch.equal(torch.rand(3), expected)  # the global generator did not move
    assert first in (0, 1, torch.get_num_threads())
    key = (*plan.native.signature, 2, 1, torch.get_num_threads())
    assert decode_plan._NATIVE_CHOICE[key] == first
    decode_plan._NATIVE_CHOICE[key] = 7  # a remembered answer is not timed again
    assert decode_plan.native_threads(plan, 2) == 7
    decode_plan._NATIVE_CHOICE.clear()


def test_two_threads_decoding_at_once_get_their_own_numbers(make_model, c_steps):
    """The server decodes from several Python threads: each call keeps its own cache and
    numbers (one of them gets the kernel's workers, the other runs on its own thread)."""
    import threading

    model = make_model(n_embd=96, n_head=3, vocab_size=70)

    def decode(row: list[int], out: list) -> None:
        with torch.inference_mode():
            state = model.new_state(1)
            logits, state = model(torch.tensor([row]), state)
            for step in range(20):
                logits, state = model(torch.tensor([[(row[0] + step) % 70]]), state)
                out.append(logits)

    alone = {i: [] for i in range(2)}
    for i in range(2):
        decode(PROMPT[i], alone[i])
    together = {i: [] for i in range(2)}
    workers = [threading.Thread(target=decode, args=(PROMPT[i], together[i])) for i in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    for i in range(2):
        assert all(torch.equal(a, b) for a, b in zip(alone[i], together[i], strict=True))
