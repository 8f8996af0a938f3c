"""A GPT's training forward from tokens to each token's loss as one autograd function
(models/native_model.py) gives the module path's losses and gradients, and the GPT takes it only
where it applies.

Where the C kernels cannot run, the tests of their results skip naming why (the ``c_kernels``
fixture); the module path they are compared with is what every other GPT test runs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rnn2gpt.models import native_model
from rnn2gpt.models.base import fixed_structure, next_token_loss, structure_memo

TOKENS = torch.randint(0, 13, (3, 21), generator=torch.Generator().manual_seed(0))
X, Y = TOKENS[:, :-1].contiguous(), TOKENS[:, 1:].contiguous()


@pytest.fixture
def loss_calls(monkeypatch):
    """The (B, T) shapes the one-function path ran on."""
    calls = []
    real = native_model.model_loss

    def counted(model, tokens, targets, cache, parts):
        calls.append(tuple(tokens.shape))
        return real(model, tokens, targets, cache, parts)

    monkeypatch.setattr(native_model, "model_loss", counted)
    return calls


def loss_and_grads(model: nn.Module, x: torch.Tensor = X, y: torch.Tensor = Y):
    loss, _ = next_token_loss(model, x, y)
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters()}


def module_loss_and_grads(model: nn.Module):
    """The same loss the plain way: the logits, then PyTorch's cross-entropy."""
    logits, _ = model(X)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), Y.reshape(-1))
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters()}


CONFIGS = {
    "biases, learned positions, tied": {},
    "no biases (nanoGPT)": {"bias": False},
    "sinusoids, untied": {"pos_encoding": "sinusoidal", "tie_weights": False},
    "three layers, odd widths, untied": {
        "n_layer": 3, "n_embd": 36, "n_head": 3, "mlp_ratio": 3, "tie_weights": False
    },
}  # fmt: skip


@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
def test_the_function_gives_the_modules_losses_and_gradients(
    make_model, c_kernels, loss_calls, monkeypatch, overrides
):
    settings = {"n_embd": 32, "n_head": 4, "block_size": 32, **overrides}
    loss, grads = loss_and_grads(make_model(**settings).train())
    assert loss_calls == [(3, 20)]
    monkeypatch.setenv("RNN2GPT_FASTPATHS", "off")
    loss_ref, grads_ref = module_loss_and_grads(make_model(**settings).train())
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
    assert grads.keys() == grads_ref.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, grads_ref[name], rtol=1e-4, atol=1e-6, msg=name)


def test_each_tokens_loss_is_its_cross_entropy(make_model, c_kernels):
    model = make_model(n_embd=32, n_head=4, block_size=32).train()
    nll, _ = model(X, None, targets=Y)
    assert type(nll.grad_fn).__name__ == "NativeLossBackward"
    with torch.no_grad():  # no gradient: the module path scores the targets
        logits, _ = model(X)
        expected = F.cross_entropy(logits.reshape(-1, 13), Y.reshape(-1), reduction="none")
        plain, _ = model(X, None, targets=Y)
    assert nll.shape == plain.shape == Y.shape
    torch.testing.assert_close(nll.detach().reshape(-1), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(plain.reshape(-1), expected, rtol=1e-5, atol=1e-6)


def test_frozen_embeddings_get_no_gradient(make_model, c_kernels, loss_calls):
    model = make_model(n_embd=32, n_head=4, block_size=32, tie_weights=False).train()
    model.transformer.wte.weight.requires_grad_(False)
    model.transformer.wpe.weight.requires_grad_(False)
    _, grads = loss_and_grads(model)
    assert loss_calls, "the function ran"
    assert grads["transformer.wte.weight"] is None and grads["transformer.wpe.weight"] is None
    assert grads["lm_head.weight"].abs().sum() > 0
    assert grads["transformer.h.0.attn.c_attn.weight"].abs().sum() > 0


def test_a_token_or_target_outside_the_vocabulary_is_an_index_error(make_model, c_kernels):
    model = make_model(n_embd=32, n_head=4, block_size=32).train()
    bad = X.clone()
    bad[1, 4] = 13
    with pytest.raises(IndexError, match="token id is outside the vocabulary of 13"):
        next_token_loss(model, bad, Y)
    with pytest.raises(IndexError, match="target id is outside the vocabulary of 13"):
        next_token_loss(model, X, bad)


def test_the_training_forwards_cache_continues_decoding(make_model, c_kernels, loss_calls):
    model = make_model(n_embd=32, n_head=4, block_size=32).train()
    _, cache = model(X[:1, :6], None, targets=Y[:1, :6])
    assert loss_calls == [(1, 6)] and cache.length == 6
    with torch.no_grad():
        step, _ = model(X[:1, 6:7], cache)
        whole, _ = model(X[:1, :7])
    torch.testing.assert_close(step[:, 0], whole[:, 6], rtol=1e-5, atol=1e-5)


def test_inside_a_fixed_structure_the_modules_are_checked_once(
    make_model, c_kernels, loss_calls, monkeypatch
):
    model = make_model(n_embd=32, n_head=4, block_size=32).train()
    finds = []
    real = native_model._find_parts
    monkeypatch.setattr(native_model, "_find_parts", lambda *a: finds.append(1) or real(*a))
    with fixed_structure(model):
        assert structure_memo(model) == {}
        for _ in range(3):
            loss_and_grads(model)
        with torch.no_grad():  # checked on every call: no gradient, the module path
            model(X, None, targets=Y)
        _, cache = model(X[:, :4], None, targets=Y[:, :4])  # the fourth call
        nll, _ = model(X[:, 4:8], cache, targets=Y[:, 4:8])  # not a fresh cache: the modules
        assert type(nll.grad_fn).__name__ != "NativeLossBackward"
    assert finds == [1] and len(loss_calls) == 4
    assert structure_memo(model) is None
    # Outside the block every forward looks again: a hook added now is seen.
    model.transformer.h[0].register_forward_hook(lambda *a: None)
    loss_and_grads(model)
    assert finds == [1, 1] and len(loss_calls) == 4


def test_where_it_does_not_apply_the_modules_run(make_model, c_kernels, loss_calls):
    for overrides in ({"adaptive_cutoffs": (5,)}, {"dropout": 0.1}, {"activation": "gelu_tanh"}):
        model = make_model(n_embd=32, n_head=4, block_size=32, **overrides).train()
        loss, _ = loss_and_grads(model)
        assert torch.isfinite(loss)
    model = make_model(n_embd=32, n_head=4, block_size=32).train()
    loss_and_grads(model, X.int(), Y)  # int32 tokens: the embedding takes them, the C call not
    assert loss_calls == []
    loss_and_grads(model)
    assert loss_calls == [(3, 20)]
