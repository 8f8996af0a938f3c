"""Recurrent LM specifics: weight tying, init, fused <-> explicit, recording, padding rules."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rnn2gpt.errors import ConfigError
from rnn2gpt.models import RNNState, build_model


def _tokens(batch: int, steps: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 13, (batch, steps), generator=torch.Generator().manual_seed(seed))


def test_tie_weights_needs_equal_sizes(make_config) -> None:
    with pytest.raises(ConfigError, match=r"model\.n_hidden.*model\.tie_weights=false"):
        build_model(make_config(arch="lstm", n_embd=16, n_hidden=24, tie_weights=True))
    model = build_model(make_config(arch="lstm", n_embd=16, n_hidden=24, tie_weights=False))
    logits, state = model(_tokens(2, 3))
    assert logits.shape == (2, 3, 13) and state.h.shape == (2, 2, 24)


def test_tied_decoder_shares_the_embedding(make_model) -> None:
    model = make_model(arch="gru", tie_weights=True)
    assert model.decoder.weight is model.embedding.weight


@torch.no_grad()
def test_classic_init(make_model) -> None:
    model = make_model(arch="lstm", tie_weights=False)
    assert float(model.embedding.weight.abs().max()) <= 0.1
    assert float(model.decoder.weight.abs().max()) <= 0.1
    assert torch.count_nonzero(model.decoder.bias) == 0
    bound = 1 / 16**0.5  # PyTorch's default for the recurrent weights
    assert float(model.rnn.weight_hh_l0.abs().max()) <= bound


@torch.no_grad()
@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru"])
def test_fused_checkpoint_loads_into_explicit_model(make_model, arch: str) -> None:
    fused = make_model(arch=arch, cell="fused")
    explicit = make_model(seed=9, arch=arch, cell="explicit")
    explicit.load_state_dict(fused.state_dict(), strict=True)
    tokens = _tokens(2, 7)
    torch.testing.assert_close(explicit(tokens)[0], fused(tokens)[0], atol=1e-5, rtol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("cell", ["fused", "explicit"])
def test_recorder_reports_gates_without_changing_logits(make_model, cell: str) -> None:
    model = make_model(arch="lstm", cell=cell)
    tokens = _tokens(3, 5)
    records: dict[str, torch.Tensor] = {}
    plain, _ = model(tokens)
    recorded, state = model(tokens, recorder=lambda name, t: records.__setitem__(name, t))
    torch.testing.assert_close(recorded, plain, atol=1e-5, rtol=1e-5)
    for layer in range(2):
        for gate in ("input_gate", "forget_gate", "cell_candidate", "output_gate", "cell"):
            assert records[f"layer{layer}.{gate}"].shape == (3, 5, 16)
        assert records[f"layer{layer}.hidden"].shape == (3, 5, 16)
    torch.testing.assert_close(records["layer1.hidden"][:, -1], state.h[1])


@torch.no_grad()
def test_rnn_recorder_reports_hidden_states(make_model) -> None:
    model = make_model(arch="rnn", nonlinearity="relu")
    records: dict[str, torch.Tensor] = {}
    model(_tokens(2, 4), recorder=lambda name, t: records.__setitem__(name, t))
    assert set(records) == {"layer0.hidden", "layer1.hidden"}
    assert float(records["layer0.hidden"].min()) >= 0.0  # relu


@torch.no_grad()
def test_padding_must_be_on_the_left(make_model) -> None:
    model = make_model(arch="gru")
    right_padded = torch.tensor([[True, True, False]])
    with pytest.raises(ValueError, match="left padding"):
        model(_tokens(1, 3), model.new_state(1, pad_mask=right_padded))


@torch.no_grad()
def test_all_pad_row_keeps_its_state(make_model) -> None:
    model = make_model(arch="lstm")
    _, start = model(_tokens(2, 3))
    mask = torch.tensor([[False, False], [True, True]])
    padded_start = dataclasses.replace(start, pad_mask=mask)
    _, after = model(_tokens(2, 2, seed=1), padded_start)
    torch.testing.assert_close(after.h[:, 0], start.h[:, 0])
    torch.testing.assert_close(after.c[:, 0], start.c[:, 0])
    assert not torch.allclose(after.h[:, 1], start.h[:, 1])


def test_state_is_frozen_and_shaped(make_model) -> None:
    state = make_model(arch="lstm").new_state(4)
    assert isinstance(state, RNNState)
    assert state.h.shape == (2, 4, 16) and state.c.shape == (2, 4, 16)
    assert make_model(arch="gru").new_state(4).c is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.h = torch.zeros(1)  # type: ignore[misc]


@torch.no_grad()
@pytest.mark.parametrize("mode", ["auto", "off"])
def test_short_lstm_calls_take_cell_steps_with_the_same_results(make_model, monkeypatch, mode):
    from rnn2gpt.models import rnn
    from rnn2gpt.models.base import SHORT_LSTM_CALL_STEPS

    monkeypatch.setenv("RNN2GPT_FASTPATHS", mode)
    calls = [0]

    def spy(original):
        def counted(*args):
            calls[0] += 1
            return original(*args)

        return counted

    # The first step (no state yet) takes the general path's cell steps; later ones the decode
    # plan's (models/decode_plan.py), the same cell kernel.
    monkeypatch.setattr(rnn, "lstm_by_cell_steps", spy(rnn.lstm_by_cell_steps))
    monkeypatch.setattr(rnn, "lstm_step", spy(rnn.lstm_step))
    model = make_model(arch="lstm").eval()
    tokens = torch.randint(0, model.config.vocab_size, (2, SHORT_LSTM_CALL_STEPS + 8))
    whole, _ = model(tokens)  # long enough for nn.LSTM (oneDNN where PyTorch picks it)
    assert calls[0] == 0
    state, steps = None, []
    for t in range(tokens.shape[1]):  # one step at a time: the cell-step fast path when on
        logits, state = model(tokens[:, t : t + 1], state)
        steps.append(logits)
    assert calls[0] == (tokens.shape[1] if mode == "auto" else 0)
    assert torch._C._get_mkldnn_enabled()  # the process-wide oneDNN switch is never touched
    torch.testing.assert_close(torch.cat(steps, dim=1), whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layers", [1, 2])
def test_lstm_cell_steps_equal_nn_lstm(layers):
    from rnn2gpt.models.rnn import lstm_by_cell_steps

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(6, 5, layers, batch_first=True)
    x = torch.randn(3, 4, 6)
    hx = (torch.randn(layers, 3, 5), torch.randn(layers, 3, 5))
    want_out, (want_h, want_c) = lstm(x, hx)
    got_out, (got_h, got_c) = lstm_by_cell_steps(lstm, x, hx)
    for got, want in ((got_out, want_out), (got_h, want_h), (got_c, want_c)):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    no_state, _ = lstm_by_cell_steps(lstm, x, None)
    torch.testing.assert_close(no_state, lstm(x)[0], atol=1e-6, rtol=1e-6)
