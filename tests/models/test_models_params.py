"""Parameter counts equal a hand computation (tied weights counted once)."""

from __future__ import annotations

import pytest

from rnn2gpt.models import build_model

V, E, L = 13, 16, 2  # the tiny config's vocabulary, width and depth


@pytest.mark.parametrize("arch, gates", [("rnn", 1), ("lstm", 4), ("gru", 3)])
@pytest.mark.parametrize("hidden, tied", [(16, True), (16, False), (24, False)])
@pytest.mark.parametrize("cell", ["fused", "explicit"])
def test_recurrent_parameter_count(make_config, arch, gates, hidden, tied, cell) -> None:
    config = make_config(arch=arch, n_hidden=hidden, tie_weights=tied, cell=cell)
    embedding = V * E
    layers = sum(
        gates * hidden * (layer_in + hidden) + 2 * gates * hidden  # W_ih, W_hh, b_ih, b_hh
        for layer_in in [E] + [hidden] * (L - 1)
    )
    decoder = V + (0 if tied else hidden * V)  # the bias always; the weight unless tied
    assert build_model(config).num_parameters() == embedding + layers + decoder


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_gpt_parameter_count(make_config, tied, bias, positions) -> None:
    config = make_config(tie_weights=tied, bias=bias, pos_encoding=positions, block_size=32)
    C, ratio = E, 4
    norm = 2 * C if bias else C  # LayerNorm weight (+ bias)
    attention = 3 * C * C + C * C + (4 * C if bias else 0)  # c_attn, c_proj
    mlp = 2 * ratio * C * C + ((ratio + 1) * C if bias else 0)  # c_fc, c_proj
    blocks = L * (2 * norm + attention + mlp)
    embeddings = V * C + (32 * C if positions == "learned" else 0)
    head = 0 if tied else V * C
    model = build_model(config)
    assert model.num_parameters() == embeddings + blocks + norm + head
    # Freezing the head freezes one V x C matrix: the shared one when tied, its own otherwise.
    model.lm_head.weight.requires_grad_(False)
    assert model.num_parameters(trainable_only=True) == embeddings + blocks + norm + head - V * C
