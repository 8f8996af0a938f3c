"""Decoding forwards, flattened: the same arithmetic as ``GPT.forward`` (and the LSTM's one-token
step of ``RecurrentLM.forward``) without the module calls around it.

A decode step of a small GPT is dozens of tiny kernels, and on a CPU the Python around them
costs as much as the kernels: each ``nn.Module`` call and each parameter read through
``nn.Module.__getattr__`` is a few microseconds. Measured on X3 (nanoGPT's 4L/128 size, batch 1,
one process, alternating): the model's forward took 1.78x as long as the same step written with
``F.linear``/``F.layer_norm`` on the weights directly; calling the linear layers as modules alone
made up 1.31x of it.

So, like PyTorch's own fast path in ``nn.TransformerEncoderLayer``, a forward that continues a
state (prefill, decode steps, speculative checks; any cache) in evaluation mode and outside
autograd runs from a :class:`DecodePlan`: per layer, the LayerNorms and plain ``nn.Linear``
layers bound to their weights, and every other layer (int8, packed, LoRA, ...) kept as the
module and called as usual. Training, recorders, ``targets=`` and ``forward(x, None)`` take the
general path.

The plan is resolved from the model's modules at the first such forward after the model's
``new_state``, so a layer replaced before a new state is always used. A model with forward
hooks on any module never takes this path: hooks fire as usual.

The LSTM's plan covers one token per row (a decode step, a drafter's step) on the CPU: the
embedding, ``torch.lstm_cell`` per layer on the layer's own weights (what the general path runs
for short calls, ``rnn.lstm_by_cell_steps``) and the output layer.
``tests/models/test_models_decode_plan.py`` holds the two paths to the same logits.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as module_hooks

from ..hardware import fastpaths_enabled
from .adaptive import lm_output
from .base import per_token
from .kv_cache import KVCache, SlotKVCache
from .native_step import NativeStep, build_native_step
from .ops import gelu, sdpa

if TYPE_CHECKING:
    from .gpt import GPT
    from .rnn import RecurrentLM, RNNState

logger = logging.getLogger(__name__)

Step = Callable[[Tensor], Tensor]


class LayerPlan(NamedTuple):
    """One block's callables: x (B, T, C) -> (B, T, C) each; ``c_attn`` -> 3C, ``c_fc`` -> 4C."""

    ln_1: Step
    c_attn: Step
    c_proj: Step
    ln_2: Step
    c_fc: Step
    approximate: str  # the MLP's GELU: "none" or "tanh"
    mlp_proj: Step


class DecodePlan(NamedTuple):
    """Everything a decoding forward of a model reads, resolved once per decoding state.

    ``layers`` is None when the model has forward hooks: its steps then take ``GPT.forward``'s
    general path, and the other fields are unused.
    """

    layers: tuple[LayerPlan, ...] | None
    embed: Step | None = None  # tokens (B, T) -> (B, T, C)
    positions: Tensor | None = None  # (block_size, C): learned wpe or the fixed sinusoids
    ln_f: Step | None = None
    head: Step | None = None  # hidden (B*T, C) -> logits (B*T, V), or the adaptive output
    n_head: int = 0
    native: NativeStep | None = None  # the one-token step in C, where it can run


class LSTMPlan(NamedTuple):
    """What an LSTM language model's one-token step reads; ``cells`` is None where the general
    path must run (hooks, explicit cells, no CPU fast paths)."""

    cells: tuple[tuple[Tensor, ...], ...] | None  # per layer (w_ih, w_hh[, b_ih, b_hh])
    embed: Step | None = None  # tokens (B, 1) -> (B, 1, E)
    head: Step | None = None  # hidden (B, H) -> logits (B, V), or the adaptive output


def may_use_plan(model: nn.Module, state: object, recorder: object, targets: object) -> bool:
    """Whether a forward may run from a decode plan: it continues a state, in evaluation mode,
    outside autograd and compilation, with no recorder and no targets."""
    return (
        state is not None
        and not model.training
        and recorder is None
        and targets is None
        and not torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
    )


def _linear(layer: nn.Module) -> Step:
    """A plain ``nn.Linear`` bound to its parameters; any other layer kept as the module."""
    if type(layer) is nn.Linear:
        return functools.partial(F.linear, weight=layer.weight, bias=layer.bias)
    return layer


def _layer_norm(layer: nn.Module) -> Step:
    if type(layer) is nn.LayerNorm:
        return functools.partial(
            torch.layer_norm,
            normalized_shape=layer.normalized_shape,
            weight=layer.weight,
            bias=layer.bias,
            eps=layer.eps,
        )
    return layer


def has_hooks(model: nn.Module, backward: bool = False) -> bool:
    """Whether hooks (global or on any of ``model``'s modules) must see its modules' forward
    calls, or with ``backward``, their backward calls too: then the modules must run."""
    global_hooks = [module_hooks._global_forward_hooks, module_hooks._global_forward_pre_hooks]
    if backward:
        global_hooks += [
            module_hooks._global_backward_hooks,
            module_hooks._global_backward_pre_hooks,
        ]
    if any(global_hooks):
        return True
    # The modules' own dictionaries, walked by hand: ``model.modules()`` builds a name and a
    # memo entry per module, 63-65 us a training step for a 4-layer GPT against 43-44 here.
    stack = [model]
    while stack:
        m = stack.pop()
        if (
            m._forward_hooks
            or m._forward_pre_hooks
            or (backward and (m._backward_hooks or m._backward_pre_hooks))
        ):
            return True
        stack.extend(child for child in m._modules.values() if child is not None)
    return False


def build_decode_plan(model: GPT) -> DecodePlan:
    """The plan of ``model`` as its modules are now (without layers where hooks must see every
    call)."""
    if has_hooks(model):
        return DecodePlan(None)
    tr = model.transformer
    positions = model.pos_table if model.config.pos_encoding == "sinusoidal" else tr.wpe.weight
    layers = tuple(
        LayerPlan(
            ln_1=_layer_norm(block.ln_1),
            c_attn=_linear(block.attn.c_attn),
            c_proj=_linear(block.attn.c_proj),
            ln_2=_layer_norm(block.ln_2),
            c_fc=_linear(block.mlp.c_fc),
            approximate=block.mlp.act.approximate,
            mlp_proj=_linear(block.mlp.c_proj),
        )
        for block in tr.h
    )
    return DecodePlan(
        layers,
        _embedding(tr.wte),
        positions,
        _layer_norm(tr.ln_f),
        _output(model, model.lm_head),
        model.config.n_head,
        build_native_step(model),
    )


def _embedding(layer: nn.Module) -> Step:
    if type(layer) is nn.Embedding and layer.padding_idx is None and layer.max_norm is None:
        return functools.partial(F.embedding, weight=layer.weight)
    return layer


def _output(model: GPT | RecurrentLM, layer: nn.Module) -> Step:
    """The output layer (hidden (N, H) -> (N, V)), the adaptive softmax's when there is one."""
    if model.cutoffs:
        return functools.partial(
            lm_output, output=layer, clusters=model.clusters, cutoffs=model.cutoffs
        )
    return _linear(layer)


def build_lstm_plan(model: RecurrentLM) -> LSTMPlan:
    """The one-token plan of an LSTM model as its modules are now."""
    lstm = model.rnn
    if (
        type(lstm) is not nn.LSTM
        or lstm.proj_size
        or not fastpaths_enabled()
        or model.embedding.weight.device.type != "cpu"
        or has_hooks(model)
    ):
        return LSTMPlan(None)
    per_layer = len(lstm._flat_weights) // lstm.num_layers
    cells = tuple(
        tuple(lstm._flat_weights[layer * per_layer : (layer + 1) * per_layer])
        for layer in range(lstm.num_layers)
    )
    return LSTMPlan(cells, _embedding(model.embedding), _output(model, model.decoder))


def lstm_step(plan: LSTMPlan, tokens: Tensor, state: RNNState) -> tuple[Tensor, Tensor, Tensor]:
    """tokens (B, 1) -> logits (B, 1, V), h and c (L, B, H) after the token.

    ``RecurrentLM.forward`` for one token per row in evaluation mode (dropout is the identity):
    the same kernels in the same order, so the same numbers.
    """
    x = plan.embed(tokens)[:, 0]  # (B, E)
    hs, cs = [], []
    for layer, weights in enumerate(plan.cells):
        x, c = torch.lstm_cell(x, (state.h[layer], state.c[layer]), *weights)
        hs.append(x)
        cs.append(c)
    logits = plan.head(x)  # (B, V)
    return logits[:, None], torch.stack(hs), torch.stack(cs)


def next_positions(table: Tensor, cache: KVCache | SlotKVCache, steps: int) -> Tensor:
    """Position embeddings of the next ``steps`` tokens from ``table`` (block_size, C): (T, C),
    or (B, T, C) where rows are at different positions (padding, slots)."""
    per_row = cache.positions(steps)  # (B, T) or None
    if per_row is None:
        return table[cache.length : cache.length + steps]  # a view: nothing allocated
    return F.embedding(per_row, table)


# The C step's choice per (model shape, rows, tokens per row, threads allowed), timed once per
# process: {key: threads for the C step, 0 for the PyTorch path}.
_NATIVE_CHOICE: dict[tuple[object, ...], int] = {}
_TIMED_CALLS = 4  # calls per timing; three timings per candidate, alternating
_TIMED_PREFILL = 8
_BRIEF_TIMING_BYTES = 64 << 20


def native_threads(plan: DecodePlan, rows: int, steps: int = 1) -> int:
    """How many threads the C step should use for this model's shape at ``rows`` rows of
    ``steps`` new tokens each, or 0 where the plan's PyTorch path is faster on this machine.

    The candidates (PyTorch; C on one thread; C on ``torch.get_num_threads()``) are timed once
    per process on a scratch cache (tens of milliseconds), then remembered. Measured on an AMD
    EPYC at 2 threads, one row: the default 6L/192 GPT took 2.2-2.9 ms a step in PyTorch, 0.5-1.1
    in C on one thread and 0.3-0.4 on two (its 10.6 MB of weights stream from beyond the core's
    caches, and two cores read them faster); the nanoGPT size, whose weights fit one core's
    cache, was faster on one thread.
    """
    assert plan.native is not None and plan.layers is not None and plan.positions is not None
    allowed = torch.get_num_threads()
    key = (*plan.native.signature, rows, steps, allowed)
    known = _NATIVE_CHOICE.get(key)
    if known is not None:
        return known
    block_size, width = plan.positions.shape
    prefill = min(_TIMED_PREFILL, block_size - steps)
    calls = min(_TIMED_CALLS, (block_size - prefill) // steps)
    if plan.native.weight_bytes > _BRIEF_TIMING_BYTES:
        calls = 1  # a step of tens of milliseconds: one call is a clear enough measurement
    if prefill < 1:  # a toy context: nothing to time, and no step is more than overhead
        _NATIVE_CHOICE[key] = 1
        return 1
    pytorch_plan = plan._replace(native=None)
    cache = KVCache.allocate(
        len(plan.layers),
        rows,
        plan.n_head,
        width // plan.n_head,
        prefill + calls * steps,
        dtype=torch.float32,
        device=plan.positions.device,
    )
    # Fixed token ids: the timing must not draw from the global random generator.
    planned_forward(pytorch_plan, torch.zeros(rows, prefill, dtype=torch.long), cache)
    tokens = torch.zeros(rows, steps, dtype=torch.long)
    paths = {0: functools.partial(planned_forward, pytorch_plan)}
    for threads in sorted({1, allowed}):
        paths[threads] = functools.partial(plan.native, threads=threads)
    best = dict.fromkeys(paths, float("inf"))
    for _ in range(3):
        for threads, forward in paths.items():
            cache.length = prefill  # each timing continues the same prompt
            start = time.perf_counter()
            for _ in range(calls):
                forward(tokens, cache)
            best[threads] = min(best[threads], (time.perf_counter() - start) / calls)
    chosen = min(best, key=best.__getitem__)
    logger.info(
        "GPT decoding forward of %d row(s) x %d token(s): %s (ms a call: %s)",
        rows,
        steps,
        f"C on {chosen} thread(s)" if chosen else "PyTorch",
        ", ".join(
            f"{'C on ' + str(t) if t else 'PyTorch'} {seconds * 1e3:.3f}"
            for t, seconds in best.items()
        ),
    )
    _NATIVE_CHOICE[key] = chosen
    return chosen


def planned_forward(plan: DecodePlan, tokens: Tensor, cache: KVCache | SlotKVCache) -> Tensor:
    """tokens (B, T) -> logits (B, T, V); appends to ``cache`` and advances it T slots.

    ``GPT.forward`` in evaluation mode: the same operations in the same order (dropout is the
    identity there), so the same numbers.
    """
    batch, steps = tokens.shape
    if plan.native is not None and plan.native.accepts(tokens, cache):
        threads = native_threads(plan, batch, steps)
        if threads:
            return plan.native(tokens, cache, threads)
    x = plan.embed(tokens) + next_positions(plan.positions, cache, steps)  # (B, T, C)
    width = x.shape[-1]
    heads = plan.n_head
    mask, is_causal = cache.attention_mask(steps)
    for i, layer in enumerate(plan.layers):
        qkv = layer.c_attn(layer.ln_1(x))  # (B, T, 3C)
        if steps == 1:  # (B, 1, 3C) -> 3 x (B, nh, 1, hd): with one query the split is a view
            q, k, v = qkv.view(batch, 3, heads, 1, width // heads).unbind(1)
        else:  # as CausalSelfAttention: one contiguous copy
            qkv = qkv.view(batch, steps, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.contiguous().unbind(0)
        k, v = cache.append(i, k, v)  # (B, nh, S, hd)
        y = sdpa(q, k, v, mask, 0.0, is_causal)  # (B, nh, T, hd)
        x = x + layer.c_proj(y.transpose(1, 2).reshape(batch, steps, width))
        x = x + layer.mlp_proj(gelu(layer.c_fc(layer.ln_2(x)), layer.approximate))
    cache.advance(steps)
    return per_token(plan.head, plan.ln_f(x))


__all__ = [
    "DecodePlan",
    "LSTMPlan",
    "LayerPlan",
    "build_decode_plan",
    "build_lstm_plan",
    "has_hooks",
    "lstm_step",
    "may_use_plan",
    "next_positions",
    "planned_forward",
]
