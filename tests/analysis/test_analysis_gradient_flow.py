"""Gradient flow through time: geometric decay in a linear-regime vanilla RNN, any model works."""

from __future__ import annotations

import math

import pytest
import torch
from analysis_helpers import tiny_model

from rnn2gpt.analysis.gradient_flow import gradient_flow, input_gradient_norms
from rnn2gpt.analysis.plots import plot_gradient_flow


def _orthogonal(size: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(size, size, generator=torch.Generator().manual_seed(seed)))
    return q


def _linear_regime_rnn(scale: float, hidden: int = 8, vocab: int = 10) -> torch.nn.Module:
    """A tanh RNN with W_hh = scale * orthogonal, W_ih orthogonal and tiny embeddings.

    The hidden state stays ~1e-4, so tanh' = 1 - h^2 ~ 1 and d loss / d e_t is
    W_ih^T (W_hh^T)^(T-1-t) g: its norm is scale^(T-1-t) ||g|| exactly (orthogonal factors keep
    norms), so consecutive distances differ by the factor ``scale``.
    """
    model = tiny_model("rnn", vocab, n_layer=1, n_embd=hidden, tie_weights=False)
    with torch.no_grad():
        model.rnn.weight_ih_l0.copy_(_orthogonal(hidden, 1))
        model.rnn.weight_hh_l0.copy_(scale * _orthogonal(hidden, 2))
        model.rnn.bias_ih_l0.zero_()
        model.rnn.bias_hh_l0.zero_()
        model.embedding.weight.copy_(1e-4 * torch.randn(vocab, hidden))
    return model


@pytest.mark.parametrize("scale", [0.5, 0.8])
def test_vanilla_rnn_gradient_decays_geometrically(scale):
    model = _linear_regime_rnn(scale)
    ids = torch.randint(0, 10, (200,), generator=torch.Generator().manual_seed(0)).tolist()
    flow = gradient_flow(model, ids, seq_len=12, batch_size=3, batches=2, seed=1)
    assert flow.distances == list(range(12)) and flow.windows == 6
    ratios = flow.decay_ratios()
    assert len(ratios) == 11
    # A constant ratio < 1 between consecutive distances: geometric decay at rate ``scale``.
    assert all(r == pytest.approx(scale, rel=1e-3) for r in ratios)
    assert flow.norms[-1] / flow.norms[0] == pytest.approx(scale**11, rel=1e-2)


def test_gradient_norms_match_autograd_on_the_embedding_output():
    model = tiny_model("lstm", 12, n_layer=1)
    x = torch.randint(0, 12, (2, 7), generator=torch.Generator().manual_seed(3))
    y = torch.tensor([1, 5])
    norms = input_gradient_norms(model, x, y)  # (B, T)

    # The same quantity by hand: differentiate with respect to the embedding output.
    emb = model.embedding(x).detach().requires_grad_(True)
    out, _ = model.rnn(emb)
    logits = model.decoder(out)
    loss = torch.nn.functional.cross_entropy(logits[:, -1], y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, emb)
    torch.testing.assert_close(norms, grad.norm(dim=-1))
    assert all(p.grad is None for p in model.parameters())  # nothing left on the model


def test_gpt_reaches_every_position_and_respects_its_context(tmp_path):
    model = tiny_model("gpt", 12, block_size=16)
    ids = list(range(12)) * 10
    flow = gradient_flow(model, ids, seq_len=40, batch_size=2, batches=1)
    assert len(flow.norms) == 16  # capped at the context
    assert all(n > 0 and math.isfinite(n) for n in flow.norms)
    png = plot_gradient_flow({"gpt": (flow.distances, flow.norms)}, tmp_path / "g.png")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_model_mode_is_restored():
    model = tiny_model("gru", 12, n_layer=1).train()
    gradient_flow(model, list(range(12)) * 3, seq_len=8, batch_size=1, batches=1)
    assert model.training
