"""The GPT's flattened decoding forward (models/decode_plan.py) gives GPT.forward's numbers.

These hold the plan's PyTorch path to the general path exactly, so the one-token step in C
(which sums in another order) is kept out here; tests/models/test_models_native_step.py holds
it to both within float rounding.
"""

from __future__ import annotations

import pytest
import torch
from gpt_decoding import GPT_VARIANTS, PROMPT, decode_logits

from rnn2gpt.config import GenerationConfig
from rnn2gpt.generation import generate
from rnn2gpt.models import base, decode_plan
from rnn2gpt.models.base import use_inference_layout
from rnn2gpt.models.lora import apply_lora
from rnn2gpt.models.quantized import quantize_model


@pytest.fixture(autouse=True)
def pytorch_steps_only(monkeypatch):
    monkeypatch.setattr(decode_plan, "build_native_step", lambda model: None)
    monkeypatch.setattr(base, "keeps_row_layout", lambda model: False)


def _assert_same_steps(model, rows=PROMPT, **kwargs) -> None:
    fast = decode_logits(model, rows, **kwargs)
    assert model._decode_plan is not None and model._decode_plan.layers is not None
    general = decode_logits(model, rows, general=True, **kwargs)
    assert model._decode_plan.layers is None
    torch.testing.assert_close(fast, general, rtol=0, atol=0)


VARIANTS = {**GPT_VARIANTS, "adaptive": {"adaptive_cutoffs": (6,)}}


@pytest.mark.parametrize("overrides", VARIANTS.values(), ids=VARIANTS.keys())
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
        decode_logits(model, PROMPT, steps=4)
    finally:
        handle.remove()
    assert len(calls) == 1 + 1 + 4  # the prefill, the 3-token check and each step
    assert model._decode_plan.layers is None


def test_a_module_replaced_between_generations_is_seen(make_model) -> None:
    model = make_model(n_embd=32)
    before = decode_logits(model, PROMPT)
    quantize_model(model)
    after = decode_logits(model, PROMPT)
    assert model._decode_plan.layers is not None
    general = decode_logits(model, PROMPT, general=True)
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


# --------------------------------------------------------------------------- the LSTM's step
# The LSTM's plan is a CPU fast path (off under RNN2GPT_FASTPATHS=off, tested last): the tests of
# what it computes take conftest's ``fastpaths_auto``, whatever the run's setting.


def _lstm_steps(model, rows, steps: int = 5, general: bool = False, rollback: int = 0):
    """Prefill ``rows``, then ``steps`` tokens one at a time: logits (B, 1 + steps, V) and the
    final (h, c). ``general``: through a no-op pre-hook (GPT.forward's general path)."""
    handle = model.register_forward_pre_hook(lambda module, args: None) if general else None
    try:
        with torch.inference_mode():
            state = model.new_state(len(rows), rollback=rollback)
            out, state = model(torch.tensor(rows), state)
            logits = [out[:, -1:]]
            for step in range(steps):
                out, state = model(torch.full((len(rows), 1), (5 * step + 2) % 13), state)
                logits.append(out)
    finally:
        if handle is not None:
            handle.remove()
    return torch.cat(logits, dim=1), state


def _assert_same_lstm_steps(model, **kwargs) -> None:
    fast, fast_state = _lstm_steps(model, PROMPT, **kwargs)
    assert model._decode_plan is not None and model._decode_plan.cells is not None
    general, general_state = _lstm_steps(model, PROMPT, general=True, **kwargs)
    assert model._decode_plan.cells is None
    torch.testing.assert_close(fast, general, rtol=0, atol=0)
    torch.testing.assert_close(fast_state.h, general_state.h, rtol=0, atol=0)
    torch.testing.assert_close(fast_state.c, general_state.c, rtol=0, atol=0)
    assert fast_state.length == general_state.length == len(PROMPT[0]) + 5


@pytest.mark.parametrize(
    "variant", ["plain", "adaptive", "int8", "inference-layout", "rollback", "one-layer"]
)
def test_lstm_step_equals_general_path(make_model, variant, fastpaths_auto) -> None:
    overrides = {"arch": "lstm", "n_layer": 1 if variant == "one-layer" else 2}
    if variant == "adaptive":
        overrides["adaptive_cutoffs"] = (6,)
    model = make_model(**overrides)
    if variant == "int8":
        quantize_model(model)
    elif variant == "inference-layout":
        use_inference_layout(model)
    _assert_same_lstm_steps(model, rollback=3 if variant == "rollback" else 0)


def test_lstm_rollback_trail_records_planned_steps(make_model, fastpaths_auto) -> None:
    model = make_model(arch="lstm")
    _, state = _lstm_steps(model, PROMPT, steps=3, rollback=3)
    _, general_state = _lstm_steps(model, PROMPT, steps=3, rollback=3, general=True)
    with torch.inference_mode():
        state.truncate({0: len(PROMPT[0]) + 1})
        general_state.truncate({0: len(PROMPT[0]) + 1})
    torch.testing.assert_close(state.h, general_state.h, rtol=0, atol=0)
    assert not torch.equal(state.h[:, 0], state.h[:, 1])


@pytest.mark.parametrize("arch", ["gru", "rnn"])
def test_other_recurrent_models_keep_their_fused_kernels(make_model, arch) -> None:
    model = make_model(arch=arch)
    _lstm_steps(model, PROMPT, steps=2)
    assert model._decode_plan is None


def test_lstm_plan_off_for_explicit_cells_and_without_fast_paths(make_model, monkeypatch) -> None:
    explicit = make_model(arch="lstm", cell="explicit")
    _lstm_steps(explicit, PROMPT, steps=2)
    assert explicit._decode_plan.cells is None
    monkeypatch.setenv("RNN2GPT_FASTPATHS", "off")
    fused = make_model(arch="lstm")
    _lstm_steps(fused, PROMPT, steps=2)
    assert fused._decode_plan.cells is None
