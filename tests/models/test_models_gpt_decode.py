"""The GPT's flattened decoding forward (models/gpt_decode.py) gives GPT.forward's numbers."""

from __future__ import annotations

import pytest
import torch

from rnn2gpt.config import GenerationConfig
from rnn2gpt.generation import generate
from rnn2gpt.models.base import use_inference_layout
from rnn2gpt.models.lora import apply_lora
from rnn2gpt.models.quantized import quantize_model

PROMPT = [[1, 5, 2, 7, 3, 3, 9], [4, 4, 8, 1, 0, 2, 6], [12, 11, 10, 9, 8, 7, 6]]


def _decode(model, rows, steps: int = 6, general: bool = False, pad_mask=None, slots=False):
    """Prefill ``rows``, feed 3 tokens at once (a speculative check), then ``steps`` tokens one at a
    time: the logits of the prefill's last position and of every fed token, (B, 4 + steps, V).
    ``general``: through a no-op forward pre-hook, which keeps every call on GPT.forward's general
    path."""
    handle = model.register_forward_pre_hook(lambda module, args: None) if general else None
    try:
        with torch.inference_mode():
            if slots:
                state = model.new_state(len(rows), slots=True)
            else:
                capacity = len(rows[0]) + 3 + steps
                state = model.new_state(len(rows), pad_mask=pad_mask, capacity=capacity)
            out, state = model(torch.tensor(rows), state)
            logits = [out[:, -1:]]
            out, state = model(torch.tensor([[2, 9, 4]] * len(rows)), state)
            logits.append(out)
            for step in range(steps):
                token = torch.full((len(rows), 1), (3 * step + 1) % 13)
                out, state = model(token, state)
                logits.append(out)
    finally:
        if handle is not None:
            handle.remove()
    return torch.cat(logits, dim=1)


def _assert_same_steps(model, rows=PROMPT, **kwargs) -> None:
    fast = _decode(model, rows, **kwargs)
    assert model._decode_plan is not None and model._decode_plan.layers is not None
    general = _decode(model, rows, general=True, **kwargs)
    assert model._decode_plan.layers is None
    torch.testing.assert_close(fast, general, rtol=0, atol=0)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"bias": False},
        {"activation": "gelu_tanh"},
        {"pos_encoding": "sinusoidal"},
        {"tie_weights": False},
        {"adaptive_cutoffs": (6,)},
        {"n_head": 4},
    ],
    ids=["plain", "no-bias", "gelu-tanh", "sinusoidal", "untied", "adaptive", "4-heads"],
)
def test_flattened_step_equals_general_path(make_model, overrides) -> None:
    _assert_same_steps(make_model(**overrides))


def test_one_row_batch(make_model) -> None:
    _assert_same_steps(make_model(), rows=PROMPT[:1])


def test_left_padded_rows(make_model) -> None:
    pad_mask = torch.tensor([[False, False, True, True, True, True, True]] + [[True] * 7] * 2)
    _assert_same_steps(make_model(), pad_mask=pad_mask)


def test_slot_cache_of_the_server_and_speculation(make_model) -> None:
    _assert_same_steps(make_model(), slots=True)


@pytest.mark.parametrize("transform", ["inference-layout", "int8", "lora", "bf16"])
def test_replaced_or_recast_layers_are_called_as_modules(make_model, transform) -> None:
    model = make_model(n_embd=32, n_head=2)
    if transform == "inference-layout":
        use_inference_layout(model)
    elif transform == "int8":
        quantize_model(model)
    elif transform == "lora":
        apply_lora(model, rank=2, alpha=4.0)
        for name, param in model.named_parameters():
            if "lora_b" in name.lower():
                torch.nn.init.normal_(param, std=0.5)  # a nonzero update, so it shows
    else:
        model.to(torch.bfloat16)
    _assert_same_steps(model)


def test_hooks_fire_on_every_step(make_model) -> None:
    model = make_model()
    calls = []
    handle = model.transformer.h[1].mlp.register_forward_hook(lambda *_: calls.append(1))
    try:
        _decode(model, PROMPT, steps=4)
    finally:
        handle.remove()
    assert len(calls) == 1 + 1 + 4  # the prefill, the 3-token check and each step
    assert model._decode_plan.layers is None


def test_a_module_replaced_between_generations_is_seen(make_model) -> None:
    model = make_model(n_embd=32)
    before = _decode(model, PROMPT)
    quantize_model(model)
    after = _decode(model, PROMPT)
    assert model._decode_plan.layers is not None
    general = _decode(model, PROMPT, general=True)
    torch.testing.assert_close(after, general, rtol=0, atol=0)
    assert not torch.equal(before, after)


def test_training_and_grad_take_the_general_path(make_model) -> None:
    model = make_model()
    model.train()
    with torch.no_grad():
        state = model.new_state(1, capacity=4)
        _, state = model(torch.tensor([[1, 2]]), state)
        model(torch.tensor([[3]]), state)
    assert model._decode_plan is None
    model.eval()
    state = model.new_state(1, capacity=4)
    logits, state = model(torch.tensor([[1, 2]]), state)
    assert model._decode_plan is None and logits.requires_grad


def test_beam_search_matches(make_model) -> None:
    model = make_model()
    config = GenerationConfig(
        num_beams=3, max_new_tokens=8, min_new_tokens=8, stop_at_eos=False, temperature=0.0
    )
    fast = generate(model, [PROMPT[0]], config)
    handle = model.register_forward_pre_hook(lambda module, args: None)
    try:
        general = generate(model, [PROMPT[0]], config)
    finally:
        handle.remove()
    assert [r.token_ids for r in fast[0]] == [r.token_ids for r in general[0]]
