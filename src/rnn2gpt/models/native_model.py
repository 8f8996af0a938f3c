"""A GPT's training forward from tokens to each token's loss as one autograd function (fp32
training on AVX2): the embeddings, the blocks of :mod:`rnn2gpt.models.native_blocks`, the last
LayerNorm, the output layer and the cross-entropy.

    tokens (B, T), targets (B, T) -> nll (B, T) = -log softmax(head(ln_f(blocks(x))))[target],
    x = wte[tokens] + positions[:T]

Why: around the blocks' C calls, the step's PyTorch part (the embedding and its dense backward,
the position add and its sum over the batch, the last LayerNorm, the output layer's three
products of vocabulary width, log_softmax and nll_loss and their backwards, an autograd node and
a few allocations each) took 2.7 ms of a 41 ms nanoGPT-size step on an AMD EPYC (AVX2 only,
``benchmarks/RESULTS.md``). Here the two ends are two C calls each way
(``rnn2gpt_embed``/``rnn2gpt_head_loss`` and their backwards in ``kernels/avx2.c``), and autograd
sees one node for the whole model. With tied weights (``lm_head.weight is wte.weight``) the
output layer's weight gradient and the embedding's are summed in one buffer.

The numbers are the module path's within float rounding (``tests/models/test_models_native_model.py``):
the same arithmetic; the softmax's exponential is the C attention's. A token or target outside
the vocabulary raises IndexError, as ``nn.Embedding`` and ``F.cross_entropy`` do.

Where: :meth:`rnn2gpt.models.gpt.GPT.forward` given ``targets`` (:func:`rnn2gpt.models.base.next_token_loss`
passes them in training) takes it when :func:`plain_model` returns the model's parts: the blocks
run in C (:func:`rnn2gpt.models.native_blocks.plain_blocks`), and plain ``nn.Embedding``,
``nn.LayerNorm`` and ``nn.Linear`` ends without an adaptive output.
"""

from __future__ import annotations

import ctypes
import functools
import time
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from . import native_blocks, native_ops
from .base import structure_memo
from .kv_cache import KVCache

# What the loss's forward keeps for its backward, in the order of the C struct HeadSaved.
HEAD_SAVED = ("ln", "mean", "rstd", "probs")


class HeadShape(ctypes.Structure):
    """The sizes of :func:`head_loss` and its backward (rows N = B T)."""

    _fields_ = [
        ("rows", ctypes.c_int64),
        ("width", ctypes.c_int64),
        ("vocab", ctypes.c_int64),
        ("threads", ctypes.c_int64),
        ("eps", ctypes.c_double),
    ]


@functools.cache
def _library() -> ctypes.CDLL:
    library = native_ops._library()
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    # tokens, wte, positions, vocab, x, block weights, saved, layers, shape, out, head weights,
    # targets, head saved, nll, head shape
    library.rnn2gpt_lm_forward.argtypes = [ptr] * 3 + [i64] + [ptr] * 3 + [i64] + [ptr] * 7
    library.rnn2gpt_lm_forward.restype = ctypes.c_int
    # tokens, d_nll, head weights, out, targets, head saved, head grads, head shape, block
    # weights, saved, grads, layers, shape, d_out, d_x, between, scratch, d_wte, accumulate,
    # d_positions, vocab
    library.rnn2gpt_lm_backward.argtypes = [ptr] * 11 + [i64] + [ptr] * 6 + [ctypes.c_int]
    library.rnn2gpt_lm_backward.argtypes += [ptr, i64]
    library.rnn2gpt_lm_backward.restype = ctypes.c_int
    return library


def _check(status: int, vocab: int, head_vocab: int) -> None:
    if status == -2:
        raise IndexError(f"a token id is outside the vocabulary of {vocab} tokens")
    if status == -3:
        raise IndexError(f"a target id is outside the vocabulary of {head_vocab} tokens")
    if status != 0:
        raise MemoryError("a C training kernel could not allocate its scratch memory")


def _addresses(tensors) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*(None if t is None else t.data_ptr() for t in tensors))


def _array(addresses: list[int | None]) -> ctypes.Array:
    return (ctypes.c_void_p * len(addresses))(*addresses)


def _pointer(tensor: Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def _forward_call(
    tokens: int,
    targets: int,
    wte: Tensor,
    positions: Tensor | None,
    x: int,
    blocks,
    out: int,
    head_weights: ctypes.Array,
    head_saved: ctypes.Array,
    nll: int,
    shape: HeadShape,
    block_arrays: tuple[ctypes.Array, ctypes.Array],
) -> None:
    """``rnn2gpt_lm_forward``: the addresses of tokens and targets (B, T) int64 -> nll (B, T);
    ``blocks`` a :class:`rnn2gpt.models.native_blocks.BlocksPass` (or alike: its shape, layers
    and products), ``block_arrays`` its weights' and saved buffers' address arrays."""
    vocab = wte.shape[0]
    native_ops.run_products(blocks.products)
    started = time.perf_counter()
    status = _library().rnn2gpt_lm_forward(
        tokens, wte.data_ptr(), _pointer(positions), vocab, x, *block_arrays, len(blocks.layers),
        ctypes.byref(blocks.shape), out, head_weights, targets, head_saved, nll, ctypes.byref(shape),
    )  # fmt: skip
    blocks.seconds = time.perf_counter() - started
    _check(status, vocab, shape.vocab)


def _backward_call(
    tokens: int,
    targets: int,
    d_nll: int,
    head: tuple[ctypes.Array, ctypes.Array, ctypes.Array],
    out: int,
    shape: HeadShape,
    blocks,
    block_arrays: tuple[ctypes.Array, ...],
    d_out: int,
    d_x: int,
    between: int,
    scratch: int,
    d_wte: int | None,
    tied: bool,
    d_positions: int | None,
    vocab: int,
) -> float:
    """``rnn2gpt_lm_backward`` after :func:`_forward_call`: ``head`` the address arrays of the
    output layer's weights, saved buffers and gradients, ``block_arrays`` the blocks' weights,
    saved buffers and gradients. Returns the call's seconds."""
    native_ops.run_products(blocks.products)
    started = time.perf_counter()
    status = _library().rnn2gpt_lm_backward(
        tokens, d_nll, head[0], out, targets, head[1], head[2], ctypes.byref(shape),
        *block_arrays, len(blocks.layers), ctypes.byref(blocks.shape), d_out, d_x, between,
        scratch, d_wte, int(tied), d_positions, vocab,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    _check(status, vocab, shape.vocab)
    return seconds


class ModelParts(NamedTuple):
    """The parts :class:`NativeLoss` computes with, as :func:`plain_model` found them."""

    wte: Tensor  # (V, C)
    positions: Tensor | None  # (block_size, C): learned or fixed; None: no positions
    ln_f: nn.LayerNorm
    lm_head: nn.Linear
    blocks: tuple[Tensor | None, ...]  # every block's native_blocks.LayerWeights in turn


def _plain_embedding(module: nn.Module) -> bool:
    return (
        type(module) is nn.Embedding
        and module.padding_idx is None
        and module.max_norm is None
        and not module.scale_grad_by_freq
        and not module.sparse
        and module.weight.is_contiguous()
    )


def plain_model(
    model: nn.Module, tokens: Tensor, targets: Tensor, cache: KVCache, recorder
) -> ModelParts | None:
    """The GPT ``model``'s parts when its forward of ``tokens`` (B, T) with ``targets`` (B, T)
    may run as :class:`NativeLoss`; else None. Inside :func:`rnn2gpt.models.base.fixed_structure`
    the modules are checked once (per training flag); the rest is checked on every call."""
    if model.cutoffs or tokens.dtype != torch.long or targets.shape != tokens.shape:
        return None
    if targets.dtype != torch.long:
        return None
    memo = structure_memo(model)
    parts = None if memo is None else memo.get(model.training)
    if parts is not None:
        mask, is_causal = cache.attention_mask(tokens.shape[1])
        fresh = mask is None and is_causal and cache.is_fresh(0)
        usable = torch.is_grad_enabled() and recorder is None and fresh
        return parts if usable and native_ops.usable(parts.wte) else None
    parts = _find_parts(model, tokens, cache, recorder)
    if parts is not None and memo is not None:
        memo[model.training] = parts
    return parts


def _find_parts(model: nn.Module, tokens: Tensor, cache: KVCache, recorder) -> ModelParts | None:
    modules = model.transformer._modules
    wte, ln_f, lm_head = modules["wte"], modules["ln_f"], model._modules["lm_head"]
    if (
        not _plain_embedding(wte)
        or type(lm_head) is not nn.Linear
        or type(ln_f) is not nn.LayerNorm
    ):
        return None
    if ln_f._parameters.get("weight") is None or not all(
        p is None or p.is_contiguous()
        for p in (*ln_f._parameters.values(), *lm_head._parameters.values())
    ):
        return None
    positions = None
    if model.config.pos_encoding == "learned":
        if not _plain_embedding(modules["wpe"]):
            return None
        positions = modules["wpe"].weight
    elif model.config.pos_encoding == "sinusoidal":
        positions = model.pos_table
    mask, is_causal = cache.attention_mask(tokens.shape[1])
    layers = native_blocks.plain_blocks(model, wte.weight, cache, mask, is_causal, recorder)
    if layers is None or (positions is not None and positions.dtype != torch.float32):
        return None
    flat = tuple(t for block in layers for t in native_blocks.layer_weights(block))
    return ModelParts(wte.weight, positions, ln_f, lm_head, flat)


class NativeLoss(torch.autograd.Function):
    """tokens, targets (B, T) -> nll (B, T), and each block's packed projection (B, T, 3C) for
    the cache; the gradients of every parameter given. Forward and backward are one C call each
    (``rnn2gpt_lm_forward``/``_backward``): the buffers are allocated and the addresses gathered
    first, while the interpreter's objects are still in the caches."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        tokens: Tensor,
        targets: Tensor,
        n_head: int,
        eps: float,
        wte: Tensor,
        positions: Tensor | None,
        ln_f_weight: Tensor,
        ln_f_bias: Tensor | None,
        head_weight: Tensor,
        head_bias: Tensor | None,
        *flat: Tensor | None,
    ):
        batch, steps = tokens.shape
        vocab, width = wte.shape
        head_vocab, rows = head_weight.shape[0], batch * steps
        tokens, targets = tokens.contiguous(), targets.contiguous()
        x = wte.new_empty(batch, steps, width)
        blocks = native_blocks.BlocksPass(x, n_head, eps, flat)
        block_weights, block_saved = blocks.forward_arguments(x)
        out = torch.empty_like(x)
        shape = HeadShape(rows, width, head_vocab, blocks.shape.threads, eps)
        saved = [out.new_empty(rows, width), out.new_empty(rows), out.new_empty(rows)]
        saved.append(out.new_empty(rows, head_vocab))
        nll = out.new_empty(batch, steps)
        weights = (ln_f_weight, ln_f_bias, head_weight, head_bias)
        _forward_call(
            tokens.data_ptr(), targets.data_ptr(), wte, positions, x.data_ptr(), blocks,
            out.data_ptr(), _addresses(weights), _addresses(saved), nll.data_ptr(), shape,
            (_array(block_weights), _array(block_saved)),
        )  # fmt: skip
        ctx.blocks, ctx.x, ctx.out, ctx.saved = blocks, x, out, saved
        ctx.tokens, ctx.targets, ctx.weights, ctx.shape = tokens, targets, weights, shape
        ctx.tied = head_weight is wte
        ctx.wte_shape = wte.shape
        ctx.positions_shape = None if positions is None else positions.shape
        packed = blocks.packed(x)
        ctx.mark_non_differentiable(*packed)
        ctx.set_materialize_grads(False)
        return (nll, *packed)

    @staticmethod
    @once_differentiable
    def backward(ctx, d_nll: Tensor, *unused: None):  # type: ignore[override]
        # Called only with d_nll: the packed projections are not differentiable.
        needs = ctx.needs_input_grad
        ln_w, ln_b, head_w, head_b = ctx.weights
        tied, wte_wanted = ctx.tied, needs[4]
        head_grads = [
            torch.empty_like(ln_w) if needs[6] else None,
            torch.empty_like(ln_b) if needs[7] else None,
            torch.empty_like(head_w) if needs[8] or (tied and wte_wanted) else None,
            torch.empty_like(head_b) if needs[9] else None,
        ]
        # Tied weights: the embedding's gradient is added to the output layer's, and the sum is
        # returned once, as the embedding's.
        if tied:
            d_wte = head_grads[2]
        else:
            d_wte = head_w.new_empty(ctx.wte_shape) if wte_wanted else None
        d_positions = None
        if needs[5]:
            d_positions = head_w.new_empty(ctx.positions_shape)
            d_positions[ctx.tokens.shape[1] :].zero_()  # positions past the sequence
        d_nll = d_nll.contiguous()
        blocks, out = ctx.blocks, ctx.out
        d_out = torch.empty_like(out)
        block_grads, d_x, between, scratch = blocks.backward_buffers(d_out, needs[10:])
        block_saved = [a for addresses in blocks.addresses for a in addresses]
        head = (_addresses(ctx.weights), _addresses(ctx.saved), _addresses(head_grads))
        seconds = _backward_call(
            ctx.tokens.data_ptr(), ctx.targets.data_ptr(), d_nll.data_ptr(), head,
            out.data_ptr(), ctx.shape, blocks,
            (_array(blocks.weights), _array(block_saved), _addresses(block_grads)),
            d_out.data_ptr(), d_x.data_ptr(), between.data_ptr(), scratch.data_ptr(),
            _pointer(d_wte), tied, _pointer(d_positions), ctx.wte_shape[0],
        )  # fmt: skip
        blocks.finish(seconds)
        ctx.blocks = ctx.x = ctx.out = ctx.saved = None  # the activations go now
        if tied:
            head_grads[2] = None
        return (None, None, None, None, d_wte, d_positions, *head_grads, *block_grads)


class FixedLossPass:
    """A GPT's loss and every trainable parameter's gradient for batches of one shape (B, T),
    without autograd: :class:`NativeLoss`'s two C calls over buffers allocated once, their
    addresses gathered once. For a training loop that holds the model's structure fixed
    (:func:`rnn2gpt.models.base.fixed_structure`): the parameters must stay where they are.

    Why: around the C calls, autograd and the per-call buffers cost 1-1.5 ms of a 33 ms
    nanoGPT-size step on an AMD EPYC (the engine, the function's 45 inputs, 37 gradients handed
    to ``AccumulateGrad`` one by one, 40 allocations; benchmarks/RESULTS.md). The numbers are the
    same bits as :class:`NativeLoss` followed by ``nll.mean().backward()``: the same C calls, and
    the mean's gradient ``1 / (B T)`` computed as autograd's is.

    :attr:`grads` maps each trainable parameter to its gradient, overwritten by every
    :meth:`run`; ``param.grad`` is left alone.
    """

    def __init__(self, model: nn.Module, parts: ModelParts, batch: int, steps: int) -> None:
        config = model.config
        wte, positions = parts.wte, parts.positions
        ln_f, head = parts.ln_f._parameters, parts.lm_head._parameters
        vocab, width = wte.shape
        rows = batch * steps
        self.shape_bt = (batch, steps)
        self.wte, self.positions, self.vocab = wte, positions, vocab
        self.x = wte.new_empty(batch, steps, width)
        self.blocks = native_blocks.BlocksPass(
            self.x, config.n_head, config.layer_norm_eps, parts.blocks
        )
        block_weights, block_saved = self.blocks.forward_arguments(self.x)
        self.trial_shape = (
            rows,
            width,
            self.blocks.shape.inner,
            config.n_head,
            len(self.blocks.layers),
        )
        self.out = torch.empty_like(self.x)
        head_weights = (ln_f["weight"], ln_f.get("bias"), head["weight"], head.get("bias"))
        self.head_shape = HeadShape(
            rows, width, head["weight"].shape[0], self.blocks.shape.threads, config.layer_norm_eps
        )
        self.head_saved = [
            self.out.new_empty(rows, width),
            self.out.new_empty(rows),
            self.out.new_empty(rows),
        ]
        self.head_saved.append(self.out.new_empty(rows, head["weight"].shape[0]))
        self.nll = self.out.new_empty(batch, steps)
        # The mean's gradient, as autograd's MeanBackward computes it (float32 1 / (B T)).
        self.d_nll = torch.ones(batch, steps).div_(rows)
        self.tied = head["weight"] is wte
        # One gradient buffer per trainable parameter (a tied output layer shares the
        # embedding's: the C backward adds the two).
        self.grads: dict[Tensor, Tensor] = {}

        def grad_of(param: Tensor | None) -> Tensor | None:
            if param is None or not param.requires_grad:
                return None
            if param not in self.grads:
                self.grads[param] = torch.zeros_like(param)  # positions past T stay zero
            return self.grads[param]

        d_wte, d_positions = grad_of(wte), grad_of(positions)
        head_grads = [grad_of(t) for t in head_weights]
        block_grads = [grad_of(t) for t in parts.blocks]
        self.d_out = torch.empty_like(self.out)
        self.d_x = torch.empty_like(self.out)
        self.between = self.out.new_empty(2 * self.out.numel())
        self.scratch = self.out.new_empty(self.blocks.layout.scratch)
        self.forward_arrays = (_array(block_weights), _array(block_saved))
        self.head_weights, self.head_saved_at = (
            _addresses(head_weights),
            _addresses(self.head_saved),
        )
        self.head = (self.head_weights, self.head_saved_at, _addresses(head_grads))
        self.backward_arrays = (*self.forward_arrays, _addresses(block_grads))
        self.d_wte, self.d_positions = _pointer(d_wte), _pointer(d_positions)

    def run(self, tokens: Tensor, targets: Tensor) -> Tensor:
        """tokens, targets (B, T) int64 -> the mean loss (0-d), every gradient in :attr:`grads`."""
        tokens, targets = tokens.contiguous(), targets.contiguous()
        blocks = self.blocks
        blocks.products, trial = native_blocks.products_for(self.trial_shape)
        at_tokens, at_targets = tokens.data_ptr(), targets.data_ptr()
        _forward_call(
            at_tokens, at_targets, self.wte, self.positions, self.x.data_ptr(), blocks,
            self.out.data_ptr(), self.head_weights, self.head_saved_at, self.nll.data_ptr(),
            self.head_shape, self.forward_arrays,
        )  # fmt: skip
        seconds = _backward_call(
            at_tokens, at_targets, self.d_nll.data_ptr(), self.head, self.out.data_ptr(),
            self.head_shape, blocks, self.backward_arrays, self.d_out.data_ptr(),
            self.d_x.data_ptr(), self.between.data_ptr(), self.scratch.data_ptr(), self.d_wte,
            self.tied, self.d_positions, self.vocab,
        )  # fmt: skip
        if trial is not None:
            trial.record(blocks.products, blocks.seconds + seconds)
        return self.nll.mean()


def fixed_loss_pass(model: nn.Module, batch: int, steps: int) -> FixedLossPass | None:
    """A :class:`FixedLossPass` for the GPT ``model`` in its training mode and batches (B, T),
    where :class:`NativeLoss` would serve its forward with targets, and nothing replaced the
    forward it bypasses (a subclass, or a ``forward`` set on the instance); else None."""
    from .gpt import GPT  # here: the gpt module imports this one

    if type(model) is not GPT or "forward" in vars(model) or model.cutoffs:
        return None
    tokens = torch.zeros(batch, steps, dtype=torch.long)
    cache = KVCache.empty(model.config.n_layer, batch, model.config.block_size)
    with torch.enable_grad():
        parts = _find_parts(model, tokens, cache, None)
        if parts is None or not native_ops.usable(parts.wte):
            return None
    return FixedLossPass(model, parts, batch, steps)


def model_loss(
    model: nn.Module, tokens: Tensor, targets: Tensor, cache: KVCache, parts: ModelParts
) -> Tensor:
    """tokens, targets (B, T) -> each target's negative log-likelihood (B, T); ``cache`` takes
    every layer's keys and values. ``parts``: what :func:`plain_model` returned."""
    config = model.config
    ln_f, head = parts.ln_f._parameters, parts.lm_head._parameters
    nll, *packed = NativeLoss.apply(
        tokens, targets, config.n_head, config.layer_norm_eps, parts.wte, parts.positions,
        ln_f["weight"], ln_f.get("bias"), head["weight"], head.get("bias"), *parts.blocks,
    )  # fmt: skip
    native_blocks.cache_packed(cache, packed, config.n_head)
    return nll


__all__ = [
    "FixedLossPass",
    "ModelParts",
    "NativeLoss",
    "fixed_loss_pass",
    "model_loss",
    "plain_model",
]
