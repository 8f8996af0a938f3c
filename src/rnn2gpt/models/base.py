"""The language-model contract shared by every architecture, and the registry that builds them.

Every model is an ``nn.Module`` with::

    forward(tokens: LongTensor (B, T), state: State | None = None, *, recorder=None)
        -> (logits: FloatTensor (B, T, V), state: State)

``state`` is the recurrent hidden state (RNN, LSTM, GRU) or the KV cache (GPT). Feeding a sequence
in one call or in pieces, carrying the returned state, gives the same logits. A state may be
updated in place by ``forward`` (the GPT's preallocated KV cache is): always continue from the
state ``forward`` returned, never from one already passed in.

Beyond ``forward`` each model offers:

- ``new_state(batch_size, pad_mask=None, capacity=None, *, slots=False, rollback=0) -> State``:
  an empty state; with ``slots`` one whose rows are independent slots of their own lengths, with
  ``write_rows(slots, other)`` (a prefilled state joins), ``free(slots)`` (a row leaves) and
  ``truncate({slot: length})`` (continuous batching, speculative decoding; see SlotKVCache and
  RNNState: a recurrent state rolls back as far as ``rollback`` tokens, whose per-token states
  it keeps). ``pad_mask``
  (B, T0) bool, True at real tokens, describes *left-padded* prompts that the next ``forward``
  will receive (exactly T0 tokens); padding then never changes an RNN's hidden state and is never
  attended to by a GPT, and GPT positions count real tokens only. ``capacity`` bounds the GPT
  cache (default: the context length). ``forward(x, None)`` equals ``forward(x, new_state(B))``.
- ``max_context: int | None``: the longest sequence the model can attend to (None = unbounded,
  RNNs). Code above ``models/`` uses this, never the architecture's name.
- ``carries_state: bool``: True when training should stream contiguous text and carry the state
  across batches (truncated backpropagation through time), False for independent windows.
- ``config``: the :class:`~rnn2gpt.config.ModelConfig` it was built from.
- ``num_parameters(trainable_only=False) -> int`` (counting tied weights once).

A language model with an adaptive softmax output (``model.adaptive_cutoffs``, see
:mod:`~rnn2gpt.models.adaptive`) has ``computes_nll = True`` and also takes
``forward(tokens, state, targets=targets (B, T))``, which returns the negative log-likelihood of
each target (B, T) in place of the logits, without scoring the whole vocabulary; its logits are
then log-probabilities. Every GPT has ``computes_nll = True`` too: its training forward can run
from tokens to loss in C (:mod:`~rnn2gpt.models.native_model`). Training and scoring reach them
through :func:`next_token_loss`.

A recorder (``recorder(name: str, tensor)``), when given, receives internal tensors (attention
weights, gate activations, hidden states) for the analysis tools; it never changes the output.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError
from ..hardware import fastpaths_enabled
from .native_step import MAX_ROWS as NATIVE_MAX_ROWS
from .native_step import keeps_row_layout
from .native_step import unavailable_reason as native_step_unavailable
from .packed import MIN_PACKED_WEIGHTS, pack_linear_layers, packed_linear_supported
from .quantized import int8_paths

Recorder = Callable[[str, torch.Tensor], None]

# On CPU, PyTorch runs nn.LSTM through oneDNN, which builds its kernel on every call: 4-5x slower
# than PyTorch's native kernel for one decoding step (measured, 2 layers x 408, one thread:
# 3.46 ms through oneDNN, 0.71 ms native, 0.63 ms by torch.lstm_cell steps, which equal the
# native kernel bit for bit), though 25% faster over long training sequences. Calls shorter than
# this run as torch.lstm_cell steps (a fast path: RNN2GPT_FASTPATHS=off keeps nn.LSTM's choice).
SHORT_LSTM_CALL_STEPS = 16


def per_token(layer: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``layer`` (a linear output layer) applied to x (B, T, C) as one 2-D product -> (B, T, V).

    The same numbers as ``layer(x)``, but never PyTorch's batched-matmul route: under bf16
    autocast in inference mode a 3-D input to ``linear`` is multiplied batch row by batch row
    with the weight copied for each (measured on the PTB word LSTM's 200 x 10k decoder, 20 x 35
    tokens: 100 ms per call against 11 ms as one 2-D product), which made evaluation under bf16
    three times slower than in fp32.
    """
    return layer(x.reshape(-1, x.shape[-1])).unflatten(0, x.shape[:-1])


@runtime_checkable
class State(Protocol):
    """What decoding needs of any model state."""

    def select(self, index: torch.Tensor) -> State:
        """A new state holding batch rows ``index`` (LongTensor (B',)), in that order."""
        ...

    def detach(self) -> State:
        """The same state cut from the autograd graph (for truncated BPTT)."""
        ...

    @property
    def batch_size(self) -> int: ...


@runtime_checkable
class LanguageModel(Protocol):
    """Structural type of every rnn2gpt language model (see the module docstring)."""

    config: ModelConfig
    max_context: int | None
    carries_state: bool

    def __call__(
        self, tokens: torch.Tensor, state: State | None = None, *, recorder: Recorder | None = None
    ) -> tuple[torch.Tensor, State]: ...

    def new_state(
        self,
        batch_size: int,
        pad_mask: torch.Tensor | None = None,
        capacity: int | None = None,
        *,
        slots: bool = False,
        rollback: int = 0,
    ) -> State: ...

    def num_parameters(self, trainable_only: bool = False) -> int: ...


ModelBuilder = Callable[[ModelConfig], nn.Module]
_REGISTRY: dict[str, ModelBuilder] = {}


def register_model(*names: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: make a builder available to :func:`build_model` under ``names``."""

    def decorate(builder: ModelBuilder) -> ModelBuilder:
        for name in names:
            _REGISTRY[name] = builder
        return builder

    return decorate


def build_model(config: ModelConfig) -> nn.Module:
    """Build the model named by ``config.arch`` (weights freshly initialised)."""
    config.validate()
    if config.vocab_size < 1:
        raise ConfigError("model.vocab_size is not set; it comes from the tokenizer")
    # Importing the architectures registers them; done lazily to keep import order one-way.
    from . import gpt, rnn, seq2seq  # noqa: F401

    try:
        builder = _REGISTRY[config.arch]
    except KeyError:
        raise ConfigError(
            f"unknown architecture {config.arch!r}; available: {', '.join(sorted(_REGISTRY))}"
        ) from None
    return builder(config)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of distinct parameters (a tied weight counts once)."""
    seen: set[int] = set()
    total = 0
    for p in module.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def next_token_loss(
    model: nn.Module,
    tokens: torch.Tensor,
    targets: torch.Tensor,
    state: object | None = None,
    *,
    reduction: str = "mean",
) -> tuple[torch.Tensor, object]:
    """Cross-entropy of ``targets`` (B, T) after ``tokens`` (B, T), and the model's next state.

    The loss is a fp32 scalar: the mean over the B * T tokens, or their sum. A model whose
    ``computes_nll`` is True (an adaptive softmax output, every GPT) scores the targets itself,
    through ``forward(tokens, state, targets=targets)``, which then returns the per-token
    negative log-likelihood (B, T) in place of the logits; any other model from its logits.
    ``model`` may be wrapped (DDP, ``torch.compile``): it is called, never bypassed.
    """
    if getattr(unwrap_model(model), "computes_nll", False):
        nll, new_state = model(tokens, state, targets=targets)
        return (nll.mean() if reduction == "mean" else nll.sum()), new_state
    logits, new_state = model(tokens, state)  # (B, T, V)
    flat = logits.float().reshape(-1, logits.size(-1))
    return F.cross_entropy(flat, targets.reshape(-1), reduction=reduction), new_state


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's parameters (CPU for a model without any)."""
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


# Models inside fixed_structure, each with the memo its fast paths may fill (weakly held, so a
# model is never kept alive, nor a memo copied with it).
_FIXED: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


@contextmanager
def fixed_structure(model: nn.Module) -> Iterator[None]:
    """The caller's promise that inside the block nothing replaces ``model``'s modules or
    parameters, adds hooks to it or changes its dtype: a model may then check once per block,
    not on every forward, what its fast paths need (:func:`structure_memo`). The trainer's loop
    holds it: those checks took 0.28 ms of a 36 ms nanoGPT-size step on an AMD EPYC, run after
    the C blocks had pushed the interpreter's objects out of the caches."""
    target = unwrap_model(model)
    outer = _FIXED.get(target)
    _FIXED[target] = {} if outer is None else outer
    try:
        yield
    finally:
        if outer is None:
            _FIXED.pop(target, None)


def structure_memo(model: nn.Module) -> dict | None:
    """The memo of a model inside :func:`fixed_structure` (empty at first), or None outside."""
    return _FIXED.get(model) if _FIXED else None


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run with dropout off; restore the model's training flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def use_inference_layout(model: nn.Module) -> nn.Module:
    """Lay fp32 CPU linear weights out for fast decoding; values, names and results unchanged.

    ``nn.Linear`` keeps its weight as (out, in) rows, so a decode step multiplies a few rows of
    activations by a transposed matrix; CPU BLAS reads that layout at well under the memory
    bandwidth (measured here: GPT-2 small's 50257 x 768 output matrix, one row: 12.4 ms
    transposed vs 8.7 ms column-major). This stores each weight as the transposed view of a
    contiguous (in, out) buffer, in place, without a second copy. bf16 weights keep the row
    layout. Then every linear layer also gets a packed copy of its weight for several rows and
    for bf16 (:mod:`rnn2gpt.models.packed`; one extra copy of the weights in memory). Use it on
    models that will only generate; training works on it too (the packed path is off under
    autograd), but nothing is gained there. Both are fast paths: under ``RNN2GPT_FASTPATHS=off``
    the model is left as it is. Returns ``model``.

    A GPT whose decoding forwards can run in C (:mod:`rnn2gpt.models.native_step`) keeps its row
    layout: the C kernel reads (out, in) rows four at a time for every token of a call, where
    the column-major buffer is read with a stride of a whole row per input. Measured on an AMD
    EPYC, 6L/384 GPT, 2 threads: 2.9 against 3.6-4.0 ms for a step, 4.2 against 10.1 ms for a
    5-token speculative check.
    """
    if not fastpaths_enabled():
        return model
    if keeps_row_layout(model):
        pack_linear_layers(model)
        return model
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if (
                isinstance(module, nn.Linear)
                and weight is not None
                and weight.dtype == torch.float32
                and weight.device.type == "cpu"
                and weight.is_contiguous()
                and weight.shape[0] > 1
                and weight.shape[1] > 1
            ):
                weight.data = weight.data.t().contiguous().t()
    pack_linear_layers(model)
    return model


def decoding_paths(measure: bool = False) -> dict[str, str]:
    """Which fast paths :func:`use_inference_layout` and the recurrent models take here, and why.

    Keys: ``layout``, ``packed_fp32``, ``packed_bf16``, ``lstm_short_calls``, ``gpt_step``,
    ``int8``; each value is one phrase (what runs, then why), for ``rnn2gpt doctor`` and logs. ``measure`` times the
    int8 kernels (seconds).
    """
    if not fastpaths_enabled():
        off = "off (RNN2GPT_FASTPATHS=off): plain nn.Linear"
        return {
            "layout": "row-major (RNN2GPT_FASTPATHS=off)",
            "packed_fp32": off,
            "packed_bf16": off,
            "lstm_short_calls": "nn.LSTM as PyTorch dispatches it (RNN2GPT_FASTPATHS=off)",
            "gpt_step": "PyTorch operations (RNN2GPT_FASTPATHS=off)",
            "int8": int8_paths(),
        }
    paths = {"layout": "column-major fp32 linear weights (faster batch-1 reads)"}
    for name, dtype in (("packed_fp32", torch.float32), ("packed_bf16", torch.bfloat16)):
        if packed_linear_supported(dtype):
            paths[name] = (
                f"oneDNN-packed weights for layers of {MIN_PACKED_WEIGHTS:,}+ weights, where "
                "they measure faster than nn.Linear (timed per shape and row count at first use)"
            )
        elif not torch.backends.mkldnn.is_available():
            paths[name] = "plain nn.Linear (this PyTorch has no oneDNN)"
        else:
            paths[name] = "plain nn.Linear (oneDNN cannot pack this dtype here)"
    paths["lstm_short_calls"] = (
        f"torch.lstm_cell steps for calls under {SHORT_LSTM_CALL_STEPS} steps (no oneDNN kernel build)"
    )
    reason = native_step_unavailable()
    paths["gpt_step"] = (
        f"one C call for up to {NATIVE_MAX_ROWS} new tokens of a GPT (fp32 or int8 weights), on "
        "1 or all threads, where it measures faster than PyTorch's operations (timed per shape, "
        "rows and tokens at first use)"
        if reason is None
        else f"PyTorch operations (the C step cannot run: {reason})"
    )
    paths["int8"] = int8_paths(measure)
    return paths
