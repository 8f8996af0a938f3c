"""The explicit cells equal PyTorch's fused kernels with shared weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rnn2gpt.models.cells import ExplicitRecurrent, GRUCell, LSTMCell, RNNCell

TOL = dict(atol=1e-5, rtol=1e-5)
B, T, IN, H, L = 3, 7, 5, 6, 2

FUSED = {
    "rnn-tanh": lambda: nn.RNN(IN, H, L, batch_first=True, nonlinearity="tanh"),
    "rnn-relu": lambda: nn.RNN(IN, H, L, batch_first=True, nonlinearity="relu"),
    "lstm": lambda: nn.LSTM(IN, H, L, batch_first=True),
    "gru": lambda: nn.GRU(IN, H, L, batch_first=True),
}


def _explicit_for(name: str) -> ExplicitRecurrent:
    mode, _, nonlinearity = name.partition("-")
    return ExplicitRecurrent(mode, IN, H, L, nonlinearity=nonlinearity or "tanh")


def _initial_state(name: str):
    h0 = torch.randn(L, B, H)
    return (h0, torch.randn(L, B, H)) if name == "lstm" else h0


def _assert_state_close(a, b) -> None:
    if isinstance(a, tuple):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, **TOL)
    else:
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("name", sorted(FUSED))
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "given-state"])
def test_explicit_recurrent_equals_fused(name: str, with_state: bool) -> None:
    torch.manual_seed(0)
    fused = FUSED[name]()
    explicit = _explicit_for(name)
    # Same names and shapes: the state dict moves over unchanged, strictly.
    assert [(n, p.shape) for n, p in fused.named_parameters()] == [
        (n, p.shape) for n, p in explicit.named_parameters()
    ]
    explicit.load_state_dict(fused.state_dict(), strict=True)

    x = torch.randn(B, T, IN)
    hx = _initial_state(name) if with_state else None
    out_f, state_f = fused(x, hx)
    out_e, state_e = explicit(x, hx)
    assert out_e.shape == (B, T, H)
    torch.testing.assert_close(out_e, out_f, **TOL)
    _assert_state_close(state_e, state_f)


@pytest.mark.parametrize("name", sorted(FUSED))
def test_explicit_state_dict_loads_into_fused(name: str) -> None:
    torch.manual_seed(1)
    explicit = _explicit_for(name)
    fused = FUSED[name]()
    fused.load_state_dict(explicit.state_dict(), strict=True)
    x = torch.randn(B, T, IN)
    torch.testing.assert_close(explicit(x)[0], fused(x)[0], **TOL)


def test_gradients_match_fused_lstm() -> None:
    torch.manual_seed(2)
    fused = FUSED["lstm"]()
    explicit = _explicit_for("lstm")
    explicit.load_state_dict(fused.state_dict())
    x = torch.randn(B, T, IN)
    fused(x)[0].pow(2).sum().backward()
    explicit(x)[0].pow(2).sum().backward()
    for (name, pf), (_, pe) in zip(fused.named_parameters(), explicit.named_parameters()):
        torch.testing.assert_close(pe.grad, pf.grad, **TOL, msg=name)


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lambda: RNNCell(IN, H), lambda: nn.RNNCell(IN, H)),
        (
            lambda: RNNCell(IN, H, nonlinearity="relu"),
            lambda: nn.RNNCell(IN, H, nonlinearity="relu"),
        ),
        (lambda: LSTMCell(IN, H), lambda: nn.LSTMCell(IN, H)),
        (lambda: GRUCell(IN, H), lambda: nn.GRUCell(IN, H)),
    ],
    ids=["rnn-tanh", "rnn-relu", "lstm", "gru"],
)
def test_single_cells_equal_pytorch_cells(ours, theirs) -> None:
    torch.manual_seed(3)
    reference = theirs()
    cell = ours()
    cell.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(B, IN)
    is_lstm = isinstance(cell, LSTMCell)
    state = (torch.randn(B, H), torch.randn(B, H)) if is_lstm else torch.randn(B, H)
    # From a given state and from the default zero state, over a few steps.
    for _ in range(3):
        ours_out, ref_out = cell(x, state), reference(x, state)
        _assert_state_close(ours_out, ref_out)
        state = ours_out
    _assert_state_close(cell(x), reference(x))


def test_recorder_reports_gates_per_step() -> None:
    torch.manual_seed(4)
    explicit = _explicit_for("lstm")
    records: dict[str, torch.Tensor] = {}
    x = torch.randn(B, T, IN)
    out, (h_n, c_n) = explicit(x, recorder=lambda name, t: records.__setitem__(name, t))
    expected = {
        f"layer{k}.{g}"
        for k in range(L)
        for g in ("hidden", "input_gate", "forget_gate", "cell_candidate", "output_gate", "cell")
    }
    assert set(records) == expected
    assert all(t.shape == (B, T, H) for t in records.values())
    torch.testing.assert_close(records["layer1.hidden"], out)
    torch.testing.assert_close(records["layer0.cell"][:, -1], c_n[0])
    assert 0.0 <= float(records["layer0.forget_gate"].min())
    assert float(records["layer0.forget_gate"].max()) <= 1.0


def test_gru_recorder_names() -> None:
    explicit = _explicit_for("gru")
    names: list[str] = []
    explicit(torch.randn(B, T, IN), recorder=lambda name, t: names.append(name))
    assert {"layer0.reset_gate", "layer0.update_gate", "layer0.candidate", "layer1.hidden"} <= set(
        names
    )


@pytest.mark.parametrize("name", sorted(FUSED))
def test_mask_leaves_state_untouched(name: str) -> None:
    torch.manual_seed(5)
    explicit = _explicit_for(name)
    x = torch.randn(B, T, IN)
    hx = _initial_state(name)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[:, :3] = False  # three leading pad steps
    _, masked_state = explicit(x, hx, mask=mask)
    _, plain_state = explicit(x[:, 3:], hx)
    _assert_state_close(masked_state, plain_state)


def test_inter_layer_dropout_only_in_training() -> None:
    torch.manual_seed(6)
    explicit = ExplicitRecurrent("gru", IN, H, 2, dropout=0.5)
    x = torch.randn(B, T, IN)
    explicit.eval()
    torch.testing.assert_close(explicit(x)[0], explicit(x)[0])
    explicit.train()
    assert not torch.allclose(explicit(x)[0], explicit(x)[0])


def test_bad_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="mode"):
        ExplicitRecurrent("transformer", IN, H)
