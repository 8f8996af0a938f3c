"""Recurrent cells written as the textbook equations.

Three step functions hold the equations, once each:

- vanilla RNN:  h' = act(W_ih x + b_ih + W_hh h + b_hh),  act = tanh or relu
- LSTM:         i, f, g, o = sigma(.), sigma(.), tanh(.), sigma(.)  of  W_ih x + b_ih + W_hh h + b_hh
                c' = f * c + i * g
                h' = o * tanh(c')
- GRU:          r = sigma(W_ir x + b_ir + W_hr h + b_hr)
                z = sigma(W_iz x + b_iz + W_hz h + b_hz)
                n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
                h' = (1 - z) * n + z * h

Gates are stacked in PyTorch's order (LSTM: i, f, g, o; GRU: r, z, n), so the weights of
:class:`RNNCell`, :class:`LSTMCell` and :class:`GRUCell` have the names and shapes of
``nn.RNNCell``/``nn.LSTMCell``/``nn.GRUCell``, and :class:`ExplicitRecurrent` has those of
``nn.RNN``/``nn.LSTM``/``nn.GRU`` (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ...): a
``state_dict`` moves between the explicit and the fused versions unchanged.

Each step function takes the input projection ``gi = W_ih x + b_ih`` already computed. That lets
:func:`explicit_recurrence` project a whole sequence with one matrix product per layer and loop
over time only for the part that truly depends on the previous step (``W_hh h``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Recorder

KINDS = ("rnn", "lstm", "gru")
GATES_PER_KIND = {"rnn": 1, "lstm": 4, "gru": 3}

# (B, H) hidden state for RNN/GRU; (h, c) pair for the LSTM.
CellState = Tensor | tuple[Tensor, Tensor]


# --------------------------------------------------------------------------- the equations


def rnn_step(
    gi: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None, nonlinearity: str = "tanh"
) -> tuple[Tensor, dict[str, Tensor]]:
    """One vanilla RNN step. gi (B, H) = W_ih x + b_ih; h (B, H) -> h' (B, H), no gates."""
    pre = gi + F.linear(h, w_hh, b_hh)
    h_new = torch.tanh(pre) if nonlinearity == "tanh" else torch.relu(pre)
    return h_new, {}


def lstm_step(
    gi: Tensor, h: Tensor, c: Tensor, w_hh: Tensor, b_hh: Tensor | None
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """One LSTM step. gi (B, 4H) = W_ih x + b_ih; h, c (B, H) -> h', c' (B, H) and the gates."""
    i, f, g, o = (gi + F.linear(h, w_hh, b_hh)).chunk(4, dim=-1)
    i = torch.sigmoid(i)  # input gate: how much of the candidate to write
    f = torch.sigmoid(f)  # forget gate: how much of the old cell to keep
    g = torch.tanh(g)  # cell candidate
    o = torch.sigmoid(o)  # output gate: how much of the cell to expose
    c_new = f * c + i * g
    h_new = o * torch.tanh(c_new)
    gates = {"input_gate": i, "forget_gate": f, "cell_candidate": g, "output_gate": o}
    return h_new, c_new, gates


def gru_step(
    gi: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None
) -> tuple[Tensor, dict[str, Tensor]]:
    """One GRU step. gi (B, 3H) = W_ih x + b_ih; h (B, H) -> h' (B, H) and the gates."""
    i_r, i_z, i_n = gi.chunk(3, dim=-1)
    h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, dim=-1)
    r = torch.sigmoid(i_r + h_r)  # reset gate
    z = torch.sigmoid(i_z + h_z)  # update gate
    # The reset gate scales W_hn h + b_hn (PyTorch's and cuDNN's form, not r * h inside).
    n = torch.tanh(i_n + r * h_n)  # candidate
    h_new = (1 - z) * n + z * h
    return h_new, {"reset_gate": r, "update_gate": z, "candidate": n}


# --------------------------------------------------------------------------- single cells


class _Cell(nn.Module):
    """Weights of one cell, laid out as PyTorch's ``nn.*Cell`` (gates stacked along dim 0)."""

    def __init__(self, input_size: int, hidden_size: int, gates: int, bias: bool) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(gates * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(gates * hidden_size, hidden_size))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(gates * hidden_size))
            self.bias_hh = nn.Parameter(torch.empty(gates * hidden_size))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        _uniform_init(self, hidden_size)

    def _zeros(self, x: Tensor) -> Tensor:
        return x.new_zeros(x.shape[0], self.hidden_size)


class RNNCell(_Cell):
    """h' = tanh|relu(W_ih x + b_ih + W_hh h + b_hh). x (B, I), h (B, H) -> h' (B, H)."""

    def __init__(
        self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh"
    ) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu' (got {nonlinearity!r})")
        super().__init__(input_size, hidden_size, 1, bias)
        self.nonlinearity = nonlinearity

    def forward(self, x: Tensor, h: Tensor | None = None) -> Tensor:
        h = self._zeros(x) if h is None else h
        gi = F.linear(x, self.weight_ih, self.bias_ih)
        return rnn_step(gi, h, self.weight_hh, self.bias_hh, self.nonlinearity)[0]


class LSTMCell(_Cell):
    """The LSTM cell. x (B, I), (h, c) (B, H) each -> (h', c')."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True) -> None:
        super().__init__(input_size, hidden_size, 4, bias)

    def forward(
        self, x: Tensor, state: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        h, c = (self._zeros(x), self._zeros(x)) if state is None else state
        gi = F.linear(x, self.weight_ih, self.bias_ih)
        h_new, c_new, _ = lstm_step(gi, h, c, self.weight_hh, self.bias_hh)
        return h_new, c_new


class GRUCell(_Cell):
    """The GRU cell. x (B, I), h (B, H) -> h' (B, H)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True) -> None:
        super().__init__(input_size, hidden_size, 3, bias)

    def forward(self, x: Tensor, h: Tensor | None = None) -> Tensor:
        h = self._zeros(x) if h is None else h
        gi = F.linear(x, self.weight_ih, self.bias_ih)
        return gru_step(gi, h, self.weight_hh, self.bias_hh)[0]


# --------------------------------------------------------------------------- stacked layers


def explicit_recurrence(
    weights: nn.Module,
    x: Tensor,
    hx: CellState | None = None,
    *,
    kind: str,
    num_layers: int,
    nonlinearity: str = "tanh",
    dropout: float = 0.0,
    mask: Tensor | None = None,
    recorder: Recorder | None = None,
) -> tuple[Tensor, CellState]:
    """Run stacked layers step by step with the weights of ``nn.RNN/LSTM/GRU`` naming.

    ``weights`` is any module with ``weight_ih_l{k}``, ``weight_hh_l{k}`` and (optionally)
    ``bias_ih_l{k}``, ``bias_hh_l{k}``: an :class:`ExplicitRecurrent` or a fused ``nn.LSTM``
    itself (which is how a fused model reports its gates when recording).

    x: (B, T, I). hx: (L, B, H), or ``(h, c)`` for the LSTM; None means zeros.
    mask: (B, T) bool, False where the step must leave the state untouched (padding); the output
    at such a step repeats the carried hidden state.
    Returns output (B, T, H) of the last layer and the final state in ``hx``'s format.

    The recorder receives, per layer ``k``, ``"layer{k}.hidden"`` (B, T, H) and the gates:
    LSTM ``input_gate``, ``forget_gate``, ``cell_candidate``, ``output_gate``, ``cell``;
    GRU ``reset_gate``, ``update_gate``, ``candidate``.
    """
    batch, steps = x.shape[0], x.shape[1]
    hidden_size = weights.weight_hh_l0.shape[1]
    if hx is None:
        zeros = x.new_zeros(num_layers, batch, hidden_size)
        h0, c0 = zeros, (zeros if kind == "lstm" else None)
    elif kind == "lstm":
        h0, c0 = hx
    else:
        h0, c0 = hx, None

    layer_input = x
    final_h, final_c = [], []
    for k in range(num_layers):
        w_hh = getattr(weights, f"weight_hh_l{k}")
        b_hh = getattr(weights, f"bias_hh_l{k}", None)
        # The input projection does not depend on the recurrence: one product for all steps.
        gi_all = F.linear(
            layer_input,
            getattr(weights, f"weight_ih_l{k}"),
            getattr(weights, f"bias_ih_l{k}", None),
        )  # (B, T, G*H)
        h = h0[k]
        c = c0[k] if c0 is not None else None
        outputs: list[Tensor] = []
        trace: dict[str, list[Tensor]] = {}
        for t in range(steps):
            gi = gi_all[:, t]
            if kind == "lstm":
                h_new, c_new, gates = lstm_step(gi, h, c, w_hh, b_hh)
            elif kind == "gru":
                h_new, gates = gru_step(gi, h, w_hh, b_hh)
            else:
                h_new, gates = rnn_step(gi, h, w_hh, b_hh, nonlinearity)
            if mask is not None:
                keep = mask[:, t, None]  # (B, 1): True = real token, take the new state
                h_new = torch.where(keep, h_new, h)
                if kind == "lstm":
                    c_new = torch.where(keep, c_new, c)
            h = h_new
            if kind == "lstm":
                c = c_new
            outputs.append(h)
            if recorder is not None:
                if kind == "lstm":
                    gates = {**gates, "cell": c}
                for name, value in gates.items():
                    trace.setdefault(name, []).append(value)
        out = (
            torch.stack(outputs, dim=1) if outputs else layer_input.new_zeros(batch, 0, hidden_size)
        )
        if recorder is not None:
            recorder(f"layer{k}.hidden", out.detach())
            for name, values in trace.items():
                recorder(f"layer{k}.{name}", torch.stack(values, dim=1).detach())
        final_h.append(h)
        if c is not None:
            final_c.append(c)
        # Dropout between layers only, as nn.RNN/LSTM/GRU do.
        is_last = k == num_layers - 1
        layer_input = out if is_last else F.dropout(out, dropout, weights.training)

    h_n = torch.stack(final_h)
    if kind == "lstm":
        return layer_input, (h_n, torch.stack(final_c))
    return layer_input, h_n


def fused_kind(module: nn.RNNBase) -> tuple[str, str]:
    """(kind, nonlinearity) of a fused ``nn.RNN``/``nn.LSTM``/``nn.GRU``."""
    mode = module.mode  # "RNN_TANH" | "RNN_RELU" | "LSTM" | "GRU"
    if mode.startswith("RNN_"):
        return "rnn", mode[4:].lower()
    return mode.lower(), "tanh"


class ExplicitRecurrent(nn.Module):
    """A drop-in for ``nn.RNN``/``nn.LSTM``/``nn.GRU`` with ``batch_first=True``, step by step.

    Same constructor meaning, same parameter names and shapes, same call:
    ``forward(x (B, T, I), hx=None) -> (output (B, T, H), h_n)`` with ``h_n`` (L, B, H), or
    ``(h_n, c_n)`` for the LSTM. Slower than the fused kernels, but every equation is visible
    and an optional ``recorder`` receives the gates and hidden states of each step (see
    :func:`explicit_recurrence`). ``mask`` (B, T) bool leaves the state untouched where False.
    """

    def __init__(
        self,
        mode: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        mode = mode.lower()
        if mode not in KINDS:
            raise ValueError(f"mode must be one of {', '.join(KINDS)} (got {mode!r})")
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu' (got {nonlinearity!r})")
        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.nonlinearity = nonlinearity
        self.dropout = float(dropout)
        self.bias = bias
        gate_size = GATES_PER_KIND[mode] * hidden_size
        for k in range(num_layers):
            layer_in = input_size if k == 0 else hidden_size
            self.register_parameter(
                f"weight_ih_l{k}", nn.Parameter(torch.empty(gate_size, layer_in))
            )
            self.register_parameter(
                f"weight_hh_l{k}", nn.Parameter(torch.empty(gate_size, hidden_size))
            )
            if bias:
                self.register_parameter(f"bias_ih_l{k}", nn.Parameter(torch.empty(gate_size)))
                self.register_parameter(f"bias_hh_l{k}", nn.Parameter(torch.empty(gate_size)))
        _uniform_init(self, hidden_size)

    def forward(
        self,
        x: Tensor,
        hx: CellState | None = None,
        *,
        mask: Tensor | None = None,
        recorder: Recorder | None = None,
    ) -> tuple[Tensor, CellState]:
        return explicit_recurrence(
            self,
            x,
            hx,
            kind=self.mode,
            num_layers=self.num_layers,
            nonlinearity=self.nonlinearity,
            dropout=self.dropout,
            mask=mask,
            recorder=recorder,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.mode}, {self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
            f"nonlinearity={self.nonlinearity}, dropout={self.dropout}, bias={self.bias}"
        )


def _uniform_init(module: nn.Module, hidden_size: int) -> None:
    """PyTorch's default for recurrent weights: U(-1/sqrt(H), 1/sqrt(H)) everywhere."""
    bound = 1.0 / math.sqrt(hidden_size) if hidden_size > 0 else 0.0
    for param in module.parameters():
        nn.init.uniform_(param, -bound, bound)


__all__ = [
    "ExplicitRecurrent",
    "GRUCell",
    "LSTMCell",
    "RNNCell",
    "explicit_recurrence",
    "fused_kind",
    "gru_step",
    "lstm_step",
    "rnn_step",
]
