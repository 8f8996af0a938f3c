"""Recurrent language models: vanilla RNN (tanh or relu), LSTM and GRU.

    tokens (B, T) -> Embedding (V, E) -> dropout -> L recurrent layers (H) -> dropout
                  -> Linear (H, V) -> logits (B, T, V)

(with ``model.adaptive_cutoffs``, an adaptive softmax output: see models/adaptive.py)

The recurrent layers are PyTorch's fused kernels (``model.cell = "fused"``, what training uses)
or :class:`~rnn2gpt.models.cells.ExplicitRecurrent`, the textbook equations step by step
(``"explicit"``). Both share parameter names, so a checkpoint loads into either.

Left padding: ``new_state(B, pad_mask)`` keeps the mask until the next ``forward``, which then
runs each row only over its real tokens, so padding never touches the hidden state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..config import ModelConfig
from ..errors import ConfigError
from ..hardware import fastpaths_enabled
from .adaptive import check_cutoffs, cluster_layer, lm_output
from .base import SHORT_LSTM_CALL_STEPS, Recorder, count_parameters, register_model
from .cells import CellState, ExplicitRecurrent, explicit_recurrence, fused_kind
from .decode_plan import LSTMPlan, build_lstm_plan, lstm_step, may_use_plan

_FUSED = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class StepTrail:
    """What lets a recurrent state roll rows back: per-row token counts and recent states.

    ``states`` holds (h, c) after each of the most recent tokens, oldest first, at most
    ``depth + 1`` of them; the last one *is* the state's current (h, c) (the same tensors).
    Rolling row r back by j tokens copies row r of ``states[-1 - j]``: O(1) per row, no rerun.
    Any in-place edit of rows (truncate, write_rows, free) starts a fresh trail from the current
    state, so an entry never mixes a row's discarded tokens with its new ones.
    """

    def __init__(self, depth: int, batch_size: int, h: Tensor, c: Tensor | None) -> None:
        self.depth = depth
        self.lengths = [0] * batch_size  # tokens each row has taken
        self.states: list[tuple[Tensor, Tensor | None]] = [(h, c)]

    def record(self, h: Tensor, c: Tensor | None, steps: int) -> None:
        """Every row took ``steps`` tokens; (h, c) is the state after the last of them."""
        self.lengths = [n + steps for n in self.lengths]
        self.states.append((h, c))
        del self.states[: -(self.depth + 1)]

    def restart(self, h: Tensor, c: Tensor | None) -> None:
        self.states = [(h, c)]


@dataclass(frozen=True)
class RNNState:
    """Hidden state of a stacked recurrent model.

    h: (L, B, H) hidden state per layer. c: (L, B, H) LSTM cell state, None otherwise.
    pad_mask: (B, T0) bool, True at real tokens, for left-padded tokens the next ``forward``
    will receive; None once consumed.
    length: tokens fed so far (every row alike; a trail counts per row).
    trail: with ``new_state(..., rollback=depth)``, the recent per-token states that
    :meth:`truncate` rolls rows back to; ``forward`` then feeds tokens one at a time.
    """

    h: Tensor
    c: Tensor | None = None
    pad_mask: Tensor | None = None
    # Decoding bookkeeping, never saved with a carried training state (checkpoint.state).
    length: int = field(default=0, metadata={"transient": True})
    trail: StepTrail | None = field(default=None, repr=False, metadata={"transient": True})

    @property
    def batch_size(self) -> int:
        return self.h.shape[1]

    def select(self, index: Tensor) -> RNNState:
        """Rows ``index`` (LongTensor (B',)) in that order (without a trail)."""
        index = index.to(self.h.device)
        return RNNState(
            h=self.h.index_select(1, index),
            c=None if self.c is None else self.c.index_select(1, index),
            pad_mask=None if self.pad_mask is None else self.pad_mask.index_select(0, index),
            length=self.length,
        )

    def write_rows(self, slots: Sequence[int], other: RNNState) -> None:
        """Copy every row of ``other`` into rows ``slots``, in place (a request joins a batch)."""
        index = torch.tensor(list(slots), dtype=torch.long, device=self.h.device)
        self.h[:, index] = other.h.to(self.h.dtype)
        if self.c is not None and other.c is not None:
            self.c[:, index] = other.c.to(self.c.dtype)
        self._rows_edited(slots, other.length)

    def rows(self, start: int, stop: int) -> RNNState:
        """Rows start..stop-1 (views): a forward over them returns their next state, which
        :meth:`set_rows` copies back."""
        c = None if self.c is None else self.c[:, start:stop]
        return RNNState(h=self.h[:, start:stop], c=c)

    def set_rows(self, start: int, stop: int, part: RNNState) -> None:
        """Copy ``part`` (the state of rows start..stop-1) into those rows, in place."""
        self.h[:, start:stop] = part.h
        if self.c is not None and part.c is not None:
            self.c[:, start:stop] = part.c

    def free(self, slots: Sequence[int]) -> None:
        """Reset rows ``slots`` to the zero state, in place (a request leaves: O(1) per row)."""
        index = torch.tensor(list(slots), dtype=torch.long, device=self.h.device)
        self.h[:, index] = 0
        if self.c is not None:
            self.c[:, index] = 0
        self._rows_edited(slots, 0)

    def truncate(self, lengths: dict[int, int]) -> None:
        """Roll rows back in place: row ``r`` keeps its first ``lengths[r]`` tokens. Exact (the
        states are the ones the forward computed); needs a trail reaching that far back."""
        if self.trail is None:
            raise ValueError("this state keeps no trail; build it with new_state(..., rollback=N)")
        trail = self.trail
        for row, length in lengths.items():
            back = trail.lengths[row] - length
            if length == 0:
                self.h[:, row] = 0
                if self.c is not None:
                    self.c[:, row] = 0
            elif 0 <= back < len(trail.states):
                h, c = trail.states[-1 - back]
                self.h[:, row] = h[:, row]
                if self.c is not None and c is not None:
                    self.c[:, row] = c[:, row]
            else:
                raise ValueError(
                    f"cannot truncate row {row} of {trail.lengths[row]} tokens to {length} "
                    f"(the trail reaches {len(trail.states) - 1} tokens back)"
                )
            trail.lengths[row] = length
        trail.restart(self.h, self.c)

    def _rows_edited(self, slots: Sequence[int], length: int) -> None:
        if self.trail is not None:
            for slot in slots:
                self.trail.lengths[slot] = length
            self.trail.restart(self.h, self.c)

    def detach(self) -> RNNState:
        return RNNState(
            h=self.h.detach(),
            c=None if self.c is None else self.c.detach(),
            pad_mask=self.pad_mask,
            length=self.length,
            trail=self.trail,
        )

    def as_hx(self) -> CellState:
        """The state in the format nn.RNN/GRU (a tensor) or nn.LSTM (a pair) expects."""
        return self.h if self.c is None else (self.h, self.c)


class RecurrentLM(nn.Module):
    """Embedding -> stacked RNN/LSTM/GRU -> linear decoder, following the shared LM contract."""

    carries_state = True
    max_context: int | None = None

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.arch not in _FUSED:
            raise ConfigError(
                f"RecurrentLM builds rnn, lstm or gru (got model.arch={config.arch!r})"
            )
        hidden = config.hidden_size
        if config.tie_weights and hidden != config.n_embd:
            raise ConfigError(
                f"tie_weights needs the hidden size ({hidden}) to equal the embedding size "
                f"({config.n_embd}): set model.n_hidden equal to model.n_embd, or set "
                "model.tie_weights=false"
            )
        self.config = config
        self.kind = config.arch
        self.nonlinearity = config.nonlinearity if config.arch == "rnn" else "tanh"
        self.hidden_size = hidden
        self.num_layers = config.n_layer
        self._decode_plan: LSTMPlan | None = None  # built by the first LSTM decode step

        self.embedding = nn.Embedding(config.vocab_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        # nn.RNN/LSTM/GRU warn when dropout is set with a single layer; it would do nothing.
        inter_layer_dropout = config.dropout if config.n_layer > 1 else 0.0
        if config.cell == "explicit":
            self.rnn: nn.Module = ExplicitRecurrent(
                self.kind,
                config.n_embd,
                hidden,
                config.n_layer,
                nonlinearity=self.nonlinearity,
                dropout=inter_layer_dropout,
            )
        else:
            extra = {"nonlinearity": self.nonlinearity} if self.kind == "rnn" else {}
            self.rnn = _FUSED[self.kind](
                config.n_embd,
                hidden,
                config.n_layer,
                batch_first=True,
                dropout=inter_layer_dropout,
                **extra,
            )
        self.decoder = nn.Linear(hidden, config.vocab_size)
        self.cutoffs = check_cutoffs(config.adaptive_cutoffs, config.vocab_size)
        self.computes_nll = bool(self.cutoffs)
        self.clusters = cluster_layer(hidden, self.cutoffs) if self.cutoffs else None
        self._init_weights()
        if config.tie_weights:
            self.decoder.weight = self.embedding.weight

    def _init_weights(self) -> None:
        # The classic word-level LM init; recurrent weights keep PyTorch's defaults.
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    # ------------------------------------------------------------------ contract

    def num_parameters(self, trainable_only: bool = False) -> int:
        return count_parameters(self, trainable_only)

    def new_state(
        self,
        batch_size: int,
        pad_mask: Tensor | None = None,
        capacity: int | None = None,
        *,
        slots: bool = False,
        rollback: int = 0,
    ) -> RNNState:
        """Zero state for ``batch_size`` rows; ``capacity`` is ignored (no context limit), and so is
        ``slots`` (every RNN state's rows are independent slots already).

        pad_mask: (B, T0) bool, True at real tokens of left-padded input for the next forward.
        rollback: keep the states of the last ``rollback`` tokens so ``truncate`` can roll rows
            back that far (speculative decoding); 0 = keep none.
        """
        self._decode_plan = None  # decoding from this state resolves the modules afresh
        weight = self.embedding.weight
        shape = (self.num_layers, batch_size, self.hidden_size)
        h = torch.zeros(shape, dtype=weight.dtype, device=weight.device)
        c = torch.zeros_like(h) if self.kind == "lstm" else None
        if pad_mask is not None:
            if pad_mask.dim() != 2 or pad_mask.shape[0] != batch_size:
                raise ValueError(
                    f"pad_mask must have shape (batch_size={batch_size}, T0); got {tuple(pad_mask.shape)}"
                )
            pad_mask = pad_mask.to(device=weight.device, dtype=torch.bool)
        trail = StepTrail(rollback, batch_size, h, c) if rollback > 0 else None
        return RNNState(h=h, c=c, pad_mask=pad_mask, trail=trail)

    def forward(
        self,
        tokens: Tensor,
        state: RNNState | None = None,
        *,
        recorder: Recorder | None = None,
        targets: Tensor | None = None,
    ) -> tuple[Tensor, RNNState]:
        """tokens (B, T) -> logits (B, T, V) and the state after the last token.

        targets (B, T): with an adaptive output, return each target's negative log-likelihood
        (B, T) in place of the logits (see models/base.py).
        """
        if tokens.dim() != 2:
            raise ValueError(f"tokens must have shape (B, T); got {tuple(tokens.shape)}")
        if state is not None and state.trail is not None and tokens.shape[1] > 1:
            return self._forward_by_steps(tokens, state, recorder)
        if (
            tokens.shape[1] == 1
            and may_use_plan(self, state, recorder, targets)
            and state.c is not None
            and state.pad_mask is None
        ):
            # An LSTM decode step: the same numbers without the module calls (decode_plan.py).
            plan = self._decode_plan
            if plan is None:
                plan = self._decode_plan = build_lstm_plan(self)
            if plan.cells is not None:
                logits, h, c = lstm_step(plan, tokens, state)
                if state.trail is not None:
                    state.trail.record(h, c, 1)
                return logits, RNNState(h=h, c=c, length=state.length + 1, trail=state.trail)
        hx = None if state is None else state.as_hx()
        mask, pending = _take_mask(state, tokens.shape[1])

        x = self.drop(self.embedding(tokens))  # (B, T, E)
        if mask is None or bool(mask.all()):
            out, h_n = self._recur(x, hx, None, recorder)
        elif recorder is not None or isinstance(self.rnn, ExplicitRecurrent):
            out, h_n = self._recur(x, hx, mask, recorder)
        else:
            out, h_n = self._recur_packed(x, hx, mask)
        logits = lm_output(self.drop(out), self.decoder, self.clusters, self.cutoffs, targets)

        h, c = h_n if isinstance(h_n, tuple) else (h_n, None)
        length, trail = (0, None) if state is None else (state.length, state.trail)
        if trail is not None:
            trail.record(h, c, tokens.shape[1])
        return logits, RNNState(
            h=h, c=c, pad_mask=pending, length=length + tokens.shape[1], trail=trail
        )

    def _forward_by_steps(
        self, tokens: Tensor, state: RNNState, recorder: Recorder | None
    ) -> tuple[Tensor, RNNState]:
        """A state with a trail takes tokens one at a time, so the trail holds the state after
        each (the fused kernel returns only the last); the same arithmetic per step."""
        pieces = []
        for t in range(tokens.shape[1]):
            logits, state = self(tokens[:, t : t + 1], state, recorder=recorder)
            pieces.append(logits)
        return torch.cat(pieces, dim=1), state

    # ------------------------------------------------------------------ recurrence

    def _recur(
        self, x: Tensor, hx: CellState | None, mask: Tensor | None, recorder: Recorder | None
    ) -> tuple[Tensor, CellState]:
        """The stacked layers, step by step when explicit or recording, else the fused kernel."""
        if isinstance(self.rnn, ExplicitRecurrent):
            return self.rnn(x, hx, mask=mask, recorder=recorder)
        if recorder is not None or mask is not None:
            # Recording reads gates the fused kernel never exposes: run the same weights through
            # the explicit equations (equal to the kernel within float rounding).
            kind, nonlinearity = fused_kind(self.rnn)
            return explicit_recurrence(
                self.rnn,
                x,
                hx,
                kind=kind,
                num_layers=self.rnn.num_layers,
                nonlinearity=nonlinearity,
                dropout=self.rnn.dropout,
                mask=mask,
                recorder=recorder,
            )
        if (
            isinstance(self.rnn, nn.LSTM)
            and x.shape[1] < SHORT_LSTM_CALL_STEPS
            and x.device.type == "cpu"
            and fastpaths_enabled()
        ):
            return lstm_by_cell_steps(self.rnn, x, hx)
        return self.rnn(x, hx)

    def _recur_packed(
        self, x: Tensor, hx: CellState | None, mask: Tensor
    ) -> tuple[Tensor, CellState]:
        """Fused kernel over left-padded rows: x (B, T, E), mask (B, T) -> out (B, T, H).

        Each row is rotated so its real tokens come first, packed so the kernel stops after
        each row's last real token (the final state then ignores padding), and rotated back.
        Outputs at pad positions are zeros (finite, unspecified).
        """
        batch, steps = mask.shape
        lengths = mask.sum(dim=1)  # (B,) real tokens per row
        n_pad = steps - lengths
        arange = torch.arange(steps, device=x.device)
        if not torch.equal(mask, arange[None, :] >= n_pad[:, None]):
            raise ValueError("pad_mask must describe left padding: pads first, then real tokens")

        # Rotate left by n_pad: shifted[b, j] = x[b, (j + n_pad[b]) % T].
        shifted = _gather_time(x, (arange[None, :] + n_pad[:, None]) % steps)
        # pack_padded_sequence refuses empty rows; run them one (pad) step, then restore below.
        packed = pack_padded_sequence(
            shifted, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
        )
        out_packed, h_n = self.rnn(packed, hx)
        out, _ = pad_packed_sequence(out_packed, batch_first=True, total_length=steps)
        out = _gather_time(out, (arange[None, :] - n_pad[:, None]) % steps)  # rotate back

        empty = lengths == 0
        if bool(empty.any()):
            h_0 = hx if hx is not None else _zeros_like_state(h_n)
            keep = empty[None, :, None]  # (1, B, 1)
            if isinstance(h_n, tuple):
                h_n = (torch.where(keep, h_0[0], h_n[0]), torch.where(keep, h_0[1], h_n[1]))
            else:
                h_n = torch.where(keep, h_0, h_n)
        return out, h_n


def lstm_by_cell_steps(
    lstm: nn.LSTM, x: Tensor, hx: CellState | None
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """``nn.LSTM(x, hx)`` (batch first, one direction) computed with PyTorch's fused one-step
    kernel ``torch.lstm_cell``, step by step: x (B, T, E) -> out (B, T, H), (h, c) (L, B, H).

    The same arithmetic as PyTorch's native LSTM kernel, without oneDNN's per-call kernel
    build, and without touching the process-wide oneDNN switch.
    """
    batch, steps, _ = x.shape
    layers, hidden = lstm.num_layers, lstm.hidden_size
    if hx is None:
        zeros = x.new_zeros(layers, batch, hidden)
        hx = (zeros, zeros)
    assert isinstance(hx, tuple)
    h0, c0 = hx
    per_layer = len(lstm._flat_weights) // layers  # 4 with biases, 2 without
    layer_input = x
    last_h, last_c = [], []
    for layer in range(layers):
        weights = lstm._flat_weights[layer * per_layer : (layer + 1) * per_layer]
        w_ih, w_hh = weights[0], weights[1]
        b_ih, b_hh = (weights[2], weights[3]) if per_layer == 4 else (None, None)
        h, c = h0[layer], c0[layer]
        outputs = []
        for t in range(steps):
            h, c = torch.lstm_cell(layer_input[:, t], (h, c), w_ih, w_hh, b_ih, b_hh)
            outputs.append(h)
        layer_input = torch.stack(outputs, dim=1)  # (B, T, H)
        if lstm.dropout and lstm.training and layer < layers - 1:
            layer_input = F.dropout(layer_input, lstm.dropout, training=True)
        last_h.append(h)
        last_c.append(c)
    return layer_input, (torch.stack(last_h), torch.stack(last_c))


def _take_mask(state: RNNState | None, steps: int) -> tuple[Tensor | None, Tensor | None]:
    """Split a pending pad mask into the part for these ``steps`` tokens and the rest."""
    if state is None or state.pad_mask is None:
        return None, None
    pending = state.pad_mask
    if steps >= pending.shape[1]:
        # Tokens beyond the described prompt are real.
        return F.pad(pending, (0, steps - pending.shape[1]), value=True), None
    return pending[:, :steps], pending[:, steps:]


def _gather_time(x: Tensor, index: Tensor) -> Tensor:
    """x (B, T, D), index (B, T) -> x[b, index[b, t]] (B, T, D)."""
    return x.gather(1, index[:, :, None].expand(-1, -1, x.shape[2]))


def _zeros_like_state(state: CellState) -> CellState:
    if isinstance(state, tuple):
        return tuple(torch.zeros_like(s) for s in state)
    return torch.zeros_like(state)


@register_model("rnn", "lstm", "gru")
def build_recurrent(config: ModelConfig) -> RecurrentLM:
    """Builder registered for ``model.arch`` rnn, lstm and gru."""
    return RecurrentLM(config)


__all__ = ["RNNState", "RecurrentLM", "build_recurrent"]
