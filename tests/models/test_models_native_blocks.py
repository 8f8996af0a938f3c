"""A GPT's blocks as one autograd function (models/native_blocks.py) give the modules' losses,
gradients and cache, and the GPT takes them only where they apply.

Where the C kernels cannot run (not x86 with AVX2 and FMA, or no compiler), the tests of their
results skip naming why; the fallback (the modules) is what every other GPT test runs, and what
:func:`test_where_they_do_not_apply_the_modules_run` checks is chosen.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rnn2gpt.models import native_blocks


@pytest.fixture
def block_calls(monkeypatch):
    """The (B, T, C) shapes the blocks function ran on."""
    calls = []
    real = native_blocks.blocks_forward

    def counted(model, x, cache, layers):
        calls.append(tuple(x.shape))
        return real(model, x, cache, layers)

    monkeypatch.setattr(native_blocks, "blocks_forward", counted)
    return calls


TOKENS = torch.randint(0, 13, (3, 21), generator=torch.Generator().manual_seed(0))


def loss_and_grads(model: nn.Module, tokens: torch.Tensor = TOKENS):
    logits, _ = model(tokens[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters()}


CONFIGS = {
    "biases, learned positions": {},
    "no biases (nanoGPT)": {"bias": False},
    "sinusoids, untied": {"pos_encoding": "sinusoidal", "tie_weights": False},
    "three layers, odd widths": {"n_layer": 3, "n_embd": 36, "n_head": 3, "mlp_ratio": 3},
}


@pytest.fixture(params=[*native_blocks.native_ops.PRODUCTS, "no sgemm exported"])
def products(request, c_kernels, monkeypatch):
    """The blocks' matrix products: timed (the first passes alternate ours and the BLAS sgemm
    PyTorch calls, so both run), ours, PyTorch's, or ours where PyTorch's library exports no
    sgemm."""
    native_ops = native_blocks.native_ops
    native_blocks.forget_product_choices()
    if request.param == "no sgemm exported":
        monkeypatch.setattr(native_ops, "blas_found", lambda: False)
        native_ops._library().rnn2gpt_set_sgemm(None)
    else:
        native_ops.use_products(request.param)
    yield request.param
    native_ops._library().rnn2gpt_set_sgemm(native_ops._blas_sgemm())
    native_ops.use_products(native_ops.PRODUCTS[0])
    native_blocks.forget_product_choices()


@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
def test_the_blocks_give_the_modules_losses_and_gradients(
    make_model, products, block_calls, monkeypatch, overrides
):
    def run():
        settings = {"n_embd": 32, "n_head": 4, "block_size": 32, **overrides}
        return loss_and_grads(make_model(**settings).train())

    loss, grads = run()
    assert block_calls == [(3, 20, overrides.get("n_embd", 32))]
    monkeypatch.setenv("RNN2GPT_FASTPATHS", "off")
    loss_ref, grads_ref = run()
    assert len(block_calls) == 1, "fast paths off: the modules ran"
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
    assert grads.keys() == grads_ref.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, grads_ref[name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_model_shape_chooses_its_products_after_its_trial(make_model, products, block_calls):
    """A shape's first 2 x (1 + TRIAL_PASSES) passes alternate ours and PyTorch's products, then
    one is kept; forced products, or no BLAS, time nothing."""
    model = make_model(n_embd=40, n_head=5, block_size=32, n_layer=2).train()
    passes = 2 * (1 + native_blocks.TRIAL_PASSES)
    for _ in range(passes - 1):
        loss_and_grads(model, TOKENS[:, :20])
    assert native_blocks.product_choices() == {}
    loss_and_grads(model, TOKENS[:, :20])  # the last pass of the trial decides
    choices = native_blocks.product_choices()
    assert len(block_calls) == passes
    if products == "timed":
        assert list(choices) == [(3 * 19, 40, 160, 5, 2)]
        assert set(choices.values()) <= set(native_blocks.native_ops.PRODUCTS[1:])
    else:
        assert choices == {}


def trial_choice(ours: list[float], theirs: list[float]) -> str | None:
    """What a product trial chooses from these pass times (after its two untimed passes)."""
    trial = native_blocks._ProductTrial()
    names = native_blocks.native_ops.PRODUCTS[1:]
    for products in names:
        trial.record(products, 1.0)  # each side's first pass is not timed
    for o, t in zip(ours, theirs):
        assert trial.choice is None
        trial.record(names[0], o)
        trial.record(names[1], t)
    return trial.choice


def test_a_product_trial_compares_neighbouring_passes():
    ours, theirs = native_blocks.native_ops.PRODUCTS[1:]
    host = [1.0, 3.0, 1.5, 2.0, 1.0, 4.0, 1.2, 2.5]  # the host's speed, pair by pair
    assert trial_choice(host, [0.9 * h for h in host]) == theirs
    assert trial_choice(host, [0.97 * h for h in host]) == ours, "within the margin: ours"
    assert trial_choice(host, [1.1 * h for h in host]) == ours
    # The host speeds up midway, between a pass of ours and PyTorch's: the two sides' medians
    # (2 against 1.51) would choose PyTorch's, which was no faster in any pair but that one.
    slow_then_fast = [2.0, 2.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0]
    assert trial_choice(slow_then_fast, [2.0, 2.0, 2.0, 2.0, 1.02, 1.02, 1.02, 1.02]) == ours


def test_a_frozen_weight_gets_no_gradient(make_model, c_kernels, block_calls):
    model = make_model(n_embd=32, n_head=4, block_size=32).train()
    frozen = [model.transformer.h[0].mlp.c_fc.weight, model.transformer.h[1].ln_1.bias]
    for p in frozen:
        p.requires_grad_(False)
    _, grads = loss_and_grads(model)
    assert block_calls, "the blocks ran"
    assert grads["transformer.h.0.mlp.c_fc.weight"] is None
    assert grads["transformer.h.1.ln_1.bias"] is None
    assert grads["transformer.h.0.mlp.c_fc.bias"] is not None
    assert grads["transformer.h.0.ln_1.weight"].abs().sum() > 0


def test_a_training_forwards_cache_continues_decoding(make_model, c_kernels, block_calls):
    model = make_model(n_embd=32, n_head=4, block_size=32).train()
    prompt, more = TOKENS[:1, :6], TOKENS[:1, 6:7]
    logits, cache = model(prompt)
    assert block_calls == [(1, 6, 32)]
    with torch.no_grad():
        step, _ = model(more, cache)
        whole, _ = model(torch.cat([prompt, more], dim=1))
    torch.testing.assert_close(logits.detach(), whole[:, :6], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(step[:, 0], whole[:, 6], rtol=1e-5, atol=1e-5)


def test_the_blocks_free_their_activations_after_backward(make_model, c_kernels, block_calls):
    model = make_model(n_embd=32, n_head=4, block_size=32).train()
    logits, _ = model(TOKENS[:, :-1])
    node = logits.grad_fn
    while node is not None and type(node).__name__ != "_BlocksBackward":
        node = next((fn for fn, _ in node.next_functions if fn is not None), None)
    assert node is not None and node.blocks is not None
    blocks = node.blocks
    assert all(buffer is not None for buffer in blocks.buffers)
    logits.sum().backward()
    assert node.blocks is None and all(buffer is None for buffer in blocks.buffers)


class _Adapted(nn.Linear):
    """A layer replaced by a subclass (as LoRA replaces its targets)."""


def _adapted(model):
    model.transformer.h[1].mlp.c_fc.__class__ = _Adapted


CASES = {
    "no gradient": lambda model: torch.set_grad_enabled(False),
    "dropout": {"dropout": 0.1},
    "attention dropout": {"attn_dropout": 0.1},
    "tanh GELU": {"activation": "gelu_tanh"},
    "a forward hook": lambda model: model.transformer.h[0].register_forward_hook(lambda *a: None),
    "a backward hook": lambda model: model.transformer.h[1].mlp.register_full_backward_hook(
        lambda *a: None
    ),
    "an adapted layer": _adapted,
    "bf16": lambda model: model.to(torch.bfloat16),
    "fast paths off": None,
}


@pytest.mark.parametrize("case", CASES)
def test_where_they_do_not_apply_the_modules_run(
    make_model, c_kernels, block_calls, monkeypatch, case
):
    change = CASES[case]
    settings = change if isinstance(change, dict) else {}
    model = make_model(n_embd=32, n_head=4, block_size=32, **settings).train()
    if case == "fast paths off":
        monkeypatch.setenv("RNN2GPT_FASTPATHS", "off")
    grad_mode = torch.is_grad_enabled()
    try:
        if callable(change):
            change(model)
        model(TOKENS[:, :-1])
    finally:
        torch.set_grad_enabled(grad_mode)
    assert block_calls == []


def test_a_step_over_a_cache_runs_the_modules(make_model, c_kernels, block_calls):
    model = make_model(n_embd=32, n_head=4, block_size=32).train()
    _, cache = model(TOKENS[:, :4])
    model(TOKENS[:, 4:6], cache)
    assert block_calls == [(3, 4, 32)], "the first forward only"
