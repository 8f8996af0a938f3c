"""A GPT's blocks, forward and backward, as one autograd function (fp32 training on AVX2).

    x (B, T, C) -> n_layer x [ x = x + c_proj(attention(ln_1(x)))
                               x = x + mlp_proj(GELU(c_fc(ln_2(x)))) ] -> (B, T, C)

Why: the module path dispatches about 1,260 ATen operations for a training step of the nanoGPT-size
GPT (views, transposes, reshapes, autograd nodes and their bookkeeping). A step of the same graph
at width 16, where the arithmetic is nothing, took 4.9 ms against 56 ms at width 128 (AMD EPYC,
AVX2 only; ``benchmarks/RESULTS.md``). Here the blocks are one C call forward and one backward
(``rnn2gpt_blocks_forward``/``_backward`` in ``kernels/avx2.c``, a loop over
``rnn2gpt_block_forward``/``_backward``): eight matrix products a block each way,
by an AVX2 product of ours or the BLAS ``sgemm`` that ``torch.mm`` calls (MKL in PyTorch's x86
builds), whichever a model's first passes time faster (:class:`_ProductTrial`), with the
residual adds folded into the products, and the C LayerNorm, attention and GELU of
:mod:`rnn2gpt.models.native_ops` (the LayerNorm's backward adds the residual stream's gradient in
its pass). Autograd sees one node for the whole stack. Written in Python over ``torch.mm``, the
same blocks made about 30 PyTorch calls a layer forward and 40 backward; the C calls measured
1.047x faster a nanoGPT-size step.

The numbers are the modules' within float rounding: the same arithmetic, the residual and bias
adds in another order (``tests/models/test_models_native_blocks.py``). Only the products that a
gradient needs run: a frozen weight's gradient is not computed. Each block's activations live in
one buffer of the function's (:data:`SAVED`), freed as soon as the backward has read them all
(:class:`BlocksPass`); autograd's check that nothing changed a saved tensor
in place does not cover them (nothing outside the function sees them but the cache's views).

Where: :meth:`rnn2gpt.models.gpt.GPT.forward` takes it when :func:`plain_blocks` returns the
layers: gradients on, a fresh sequence without mask, recorder or dropout, the exact GELU, plain
``nn.Linear``/``nn.LayerNorm`` layers with contiguous parameters and without hooks (LoRA and the
int8 layers keep the modules), and the C kernels usable
(:func:`rnn2gpt.models.native_ops.blocks_usable`: float32, AVX2, fast paths on, outside autocast
and ``torch.compile``; without PyTorch's ``sgemm`` ours run). The cache of that forward holds
the keys and values as views of each layer's packed projection, as the module path's does.
"""

from __future__ import annotations

import statistics
import time
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from . import native_ops
from .decode_plan import has_hooks
from .kv_cache import KVCache


class LayerWeights(NamedTuple):
    """One block's parameters in the order the function takes them (biases may be None)."""

    ln_1_weight: Tensor
    ln_1_bias: Tensor | None
    c_attn_weight: Tensor  # (3C, C)
    c_attn_bias: Tensor | None
    attn_proj_weight: Tensor  # (C, C)
    attn_proj_bias: Tensor | None
    ln_2_weight: Tensor
    ln_2_bias: Tensor | None
    c_fc_weight: Tensor  # (F, C), F = mlp_ratio * C
    c_fc_bias: Tensor | None
    mlp_proj_weight: Tensor  # (C, F)
    mlp_proj_bias: Tensor | None


FIELDS = len(LayerWeights._fields)


class _Layers(NamedTuple):
    ln_1: nn.Module
    c_attn: nn.Module
    attn_proj: nn.Module
    ln_2: nn.Module
    c_fc: nn.Module
    mlp_proj: nn.Module
    act: nn.Module


def _layers(block: nn.Module) -> _Layers:
    """A block's layers, read from the modules' own dictionaries: through ``nn.Module``'s
    attribute lookup, checking and collecting a 4-layer GPT's took 190 us a step (of a 3.6 ms
    step at width 16, where nothing but this overhead is left)."""
    modules = block._modules
    attn, mlp = modules["attn"]._modules, modules["mlp"]._modules
    return _Layers(
        modules["ln_1"],
        attn["c_attn"],
        attn["c_proj"],
        modules["ln_2"],
        mlp["c_fc"],
        mlp["c_proj"],
        mlp["act"],
    )


def _plain(layers: _Layers) -> bool:
    return (
        all(type(layer) is nn.Linear for layer in layers[1:3] + layers[4:6])
        and all(
            type(norm) is nn.LayerNorm and norm._parameters.get("weight") is not None
            for norm in (layers.ln_1, layers.ln_2)
        )
        and layers.act.approximate == "none"
        # The C blocks read each parameter as a dense row-major array.
        and all(
            p is None or p.is_contiguous()
            for layer in layers[:6]
            for p in layer._parameters.values()
        )
    )


def plain_blocks(
    model: nn.Module, x: Tensor, cache: KVCache, mask: Tensor | None, is_causal: bool, recorder
) -> list[_Layers] | None:
    """The GPT ``model``'s blocks' layers, when its forward of ``x`` (B, T, C) may run them
    here; else None."""
    config = model.config
    if not torch.is_grad_enabled() or recorder is not None or mask is not None or not is_causal:
        return None
    if not cache.is_fresh(0):
        return None
    if model.training and (config.dropout > 0 or config.attn_dropout > 0):
        return None
    layers = [_layers(block) for block in model.transformer.h]
    if not all(_plain(block) for block in layers) or has_hooks(model, backward=True):
        return None
    return layers if native_ops.blocks_usable(x, layers[0].c_attn._parameters["weight"]) else None


def layer_weights(layers: _Layers) -> LayerWeights:
    params = [layer._parameters for layer in layers[:6]]
    return LayerWeights(*(p.get(name) for p in params for name in ("weight", "bias")))


# What a block's forward keeps for its backward, in the order of the C struct BlockSaved: name
# and size in floats for N = B T rows, C width, F inner width, H heads.
SAVED = (
    ("x", "NC"),  # the block's input
    ("ln_1", "NC"),
    ("ln_1_mean", "N"),
    ("ln_1_rstd", "N"),
    ("qkv", "3NC"),  # the packed projection (B, T, 3C), which the KV cache reads too
    ("stats", "2NH"),  # each query's softmax maximum and 1 / sum (B, H, T, 2)
    ("y", "NC"),  # the attention's output
    ("x_mid", "NC"),  # after the attention's residual
    ("ln_2", "NC"),
    ("ln_2_mean", "N"),
    ("ln_2_rstd", "N"),
    ("hidden", "NF"),  # GELU(c_fc(ln_2))
    ("slope", "NF"),  # GELU'(c_fc(ln_2))
)
_ALIGN = 16  # floats: each buffer starts on a 64-byte line
_QKV = [name for name, _ in SAVED].index("qkv")


class _Layout(NamedTuple):
    """Where each of :data:`SAVED` lies in a block's one buffer (offsets in floats)."""

    offsets: tuple[int, ...]
    total: int
    scratch: int  # floats the backward's scratch holds: N (F + 6C)

    @staticmethod
    def of(rows: int, width: int, inner: int, heads: int) -> _Layout:
        sizes = {"N": rows, "NC": rows * width, "3NC": 3 * rows * width}
        sizes |= {"2NH": 2 * rows * heads, "NF": rows * inner}
        offsets, total = [], 0
        for _, size in SAVED:
            offsets.append(total)
            total += -(-sizes[size] // _ALIGN) * _ALIGN
        return _Layout(tuple(offsets), total, rows * (inner + 6 * width))

    def addresses(self, buffer: Tensor) -> list[int]:
        base = buffer.data_ptr()
        return [base + 4 * offset for offset in self.offsets]


def _addresses(tensors) -> list[int | None]:
    return [None if t is None else t.data_ptr() for t in tensors]


# Pairs of passes (a forward and its backward with ours, then with PyTorch's) that a model shape
# times before choosing, after one untimed pass of each; and how much faster PyTorch's products
# must be to be chosen.
TRIAL_PASSES = 8
MARGIN = 0.95


class _ProductTrial:
    """Which matrix products the C blocks run for one model shape: ours or PyTorch's BLAS sgemm
    (``kernels/avx2.c``, "matrix products for training"). Its first passes alternate the two, and
    each pass is timed whole (the blocks' C calls forward and backward); after
    :data:`TRIAL_PASSES` pairs, PyTorch's runs from then on if the median over the pairs of its
    time over ours is below :data:`MARGIN`, else ours.

    Whole passes, because one product's time inside a step scattered by +-10% from run to run and
    the products also change what their neighbours cost: chosen product by product, half the
    shapes of a run took MKL's and the step ran 1.005x MKL's, against 1.047x for ours throughout
    (AMD EPYC, ``benchmarks/train_kernels.py --products``). Pairs of neighbouring passes, because
    the host's speed drifts over a few passes: comparing the two sides' medians, a run could choose
    MKL's where ours were 4-10% faster (benchmarks/RESULTS.md, issue 14's ninth part). Where
    the BLAS is truly faster (an AVX-512 CPU, whose sgemm has twice our vectors), it is so by far
    more than the margin."""

    def __init__(self) -> None:
        self.passes = 0
        self.seconds: dict[str, list[float]] = {
            native_ops.PRODUCTS[1]: [],
            native_ops.PRODUCTS[2]: [],
        }
        self.choice: str | None = None

    def next_products(self) -> str:
        return self.choice or native_ops.PRODUCTS[1 + self.passes % 2]

    def record(self, products: str, seconds: float) -> None:
        self.passes += 1
        if self.passes > 2:  # each product's first pass warms up
            self.seconds[products].append(seconds)
        ours, theirs = self.seconds.values()
        if self.choice is None and len(theirs) >= TRIAL_PASSES:
            ratio = statistics.median(t / o for o, t in zip(ours, theirs))
            self.choice = native_ops.PRODUCTS[2] if ratio < MARGIN else native_ops.PRODUCTS[1]


_TRIALS: dict[tuple[int, ...], _ProductTrial] = {}


def products_for(shape: tuple[int, ...]) -> tuple[str, _ProductTrial | None]:
    """The products a pass over blocks of ``shape`` runs, and the trial to report its time to."""
    forced = native_ops.forced_products()
    if forced is not None or not native_ops.blas_found():
        return forced or native_ops.PRODUCTS[1], None
    trial = _TRIALS.get(shape)
    if trial is None:  # not setdefault: that would build a trial on every pass
        trial = _TRIALS[shape] = _ProductTrial()
    return trial.next_products(), None if trial.choice else trial


def product_choices() -> dict[tuple[int, ...], str]:
    """The products each model shape (rows, width, inner width, heads, layers) chose so far."""
    return {shape: trial.choice for shape, trial in _TRIALS.items() if trial.choice}


def forget_product_choices() -> None:
    """Forget every shape's timings and choice (for tests and benchmarks)."""
    _TRIALS.clear()


class BlocksPass:
    """One training pass of a GPT's blocks in C: the forward of ``x`` (B, T, C) through every
    block, then the backward of the gradient at the last block's output, each one C call. It
    holds the blocks' activations between the two (a buffer per block, whose packed projection the
    cache's keys and values view), frees them once the backward has read them, and reports the
    pass's time to the shape's :class:`_ProductTrial`. :class:`_Blocks` and
    :class:`rnn2gpt.models.native_model.NativeLoss` run their blocks through it."""

    def __init__(self, x: Tensor, n_head: int, eps: float, flat: tuple[Tensor | None, ...]):
        batch, steps, width = x.shape
        self.layers = [LayerWeights(*flat[i : i + FIELDS]) for i in range(0, len(flat), FIELDS)]
        inner = self.layers[0].c_fc_weight.shape[0]
        threads = torch.get_num_threads()
        self.shape = native_ops.BlockShape(batch, steps, width, inner, n_head, threads, eps)
        self.layout = _Layout.of(batch * steps, width, inner, n_head)
        self.buffers: list[Tensor | None] = [x.new_empty(self.layout.total) for _ in self.layers]
        self.addresses = [self.layout.addresses(buffer) for buffer in self.buffers]
        shape = (batch * steps, width, inner, n_head, len(self.layers))
        self.products, self.trial = products_for(shape)
        self.seconds = 0.0

    def forward_arguments(self, x: Tensor) -> tuple[list[int | None], list[int]]:
        """The addresses a forward from ``x`` (B, T, C, contiguous; it must live until the
        backward) reads: every block's weights and saved buffers in turn (see
        :func:`rnn2gpt.models.native_ops.blocks_forward`)."""
        self.addresses[0][0] = x.data_ptr()  # the first block reads its input where it is
        self.weights = [a for weights in self.layers for a in _addresses(weights)]
        return self.weights, [a for addresses in self.addresses for a in addresses]

    def packed(self, x: Tensor) -> list[Tensor]:
        """Each block's packed projection (B, T, 3C) after the forward: views of its buffer."""
        batch, steps, width = x.shape
        qkv_at, qkv_size = self.layout.offsets[_QKV], 3 * batch * steps * width
        return [b[qkv_at : qkv_at + qkv_size].view(batch, steps, 3 * width) for b in self.buffers]

    def backward_buffers(
        self, d_out: Tensor, needs: tuple[bool, ...]
    ) -> tuple[list[Tensor | None], Tensor, Tensor, Tensor]:
        """What a backward from ``d_out`` (B, T, C) writes: the parameters' gradients
        (:func:`layer_weights` order, block by block; None where ``needs`` says not wanted), the
        gradient at the first block's input (B, T, C), and the space between blocks and the
        scratch (see :func:`rnn2gpt.models.native_ops.blocks_backward`)."""
        weights = [w for layer in self.layers for w in layer]
        grads = [torch.empty_like(w) if want else None for w, want in zip(weights, needs)]
        between = d_out.new_empty(2 * d_out.numel())
        return grads, torch.empty_like(d_out), between, d_out.new_empty(self.layout.scratch)

    def finish(self, backward_seconds: float) -> None:
        """Free the activations (the backward has read them) and report the pass's time."""
        if self.trial is not None:
            self.trial.record(self.products, self.seconds + backward_seconds)
        self.buffers = [None] * len(self.buffers)
        self.layers = []

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """x (B, T, C) contiguous, which must live until the backward -> the last block's output
        (B, T, C) and each block's packed projection (B, T, 3C)."""
        weights, saved = self.forward_arguments(x)
        out = torch.empty_like(x)
        native_ops.run_products(self.products)
        started = time.perf_counter()
        native_ops.blocks_forward(weights, saved, out.data_ptr(), self.shape)
        self.seconds = time.perf_counter() - started
        return out, self.packed(x)

    def backward(
        self, d_out: Tensor, needs: tuple[bool, ...]
    ) -> tuple[Tensor, list[Tensor | None]]:
        """d_out (B, T, C) at the last block's output -> the gradient at the first block's input
        (B, T, C) and the parameters' gradients (as :meth:`backward_buffers` orders them)."""
        d_out = d_out.contiguous()
        grads, d_x, between, scratch = self.backward_buffers(d_out, needs)
        saved = [a for addresses in self.addresses for a in addresses]
        native_ops.run_products(self.products)
        started = time.perf_counter()
        native_ops.blocks_backward(
            self.weights, saved, _addresses(grads), d_out.data_ptr(), d_x.data_ptr(),
            between.data_ptr(), scratch.data_ptr(), self.shape,
        )  # fmt: skip
        self.finish(time.perf_counter() - started)
        return d_x, grads


class _Blocks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, n_head: int, eps: float, *flat: Tensor | None):  # type: ignore[override]
        x = x.contiguous()
        blocks = BlocksPass(x, n_head, eps, flat)
        out, packed = blocks.forward(x)
        ctx.blocks, ctx.input = blocks, x
        ctx.mark_non_differentiable(*packed)
        # The packed projections are returned for the cache only: no zero gradients for them
        # (four (B, T, 3C) fills a step, 0.2-0.5 ms at the nanoGPT size).
        ctx.set_materialize_grads(False)
        return (out, *packed)

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out: Tensor, *unused: None):  # type: ignore[override]
        # Called only with d_out: the other outputs are not differentiable.
        d_x, grads = ctx.blocks.backward(d_out, ctx.needs_input_grad[3:])
        ctx.blocks = ctx.input = None  # the activations go now, not when the graph does
        # The gradients must not stay referenced (on ctx, say): autograd's accumulation takes a
        # gradient nothing else holds as the parameter's .grad, and copies any other (26 copies
        # a step at the nanoGPT size, measured).
        return (d_x, None, None, *grads)


def cache_packed(cache: KVCache, packed: list[Tensor], heads: int) -> None:
    """Append each layer's keys and values to ``cache``: strided views of its packed projection
    (B, T, 3C)."""
    batch, steps, width = packed[0].shape[0], packed[0].shape[1], packed[0].shape[2] // 3
    head_dim = width // heads
    # Keys and values (B, H, T, D) as one strided view each of the packed (B, T, 3C): a view,
    # slice, permute and unbind made five tensors a layer (80 us a step for four layers).
    shape, strides = (batch, heads, steps, head_dim), (steps * 3 * width, head_dim, 3 * width, 1)
    for layer, qkv in enumerate(packed):
        start = qkv.storage_offset()
        keys = qkv.as_strided(shape, strides, start + width)
        cache.append(layer, keys, qkv.as_strided(shape, strides, start + 2 * width))


def blocks_forward(model: nn.Module, x: Tensor, cache: KVCache, layers: list[_Layers]) -> Tensor:
    """x (B, T, C) -> the last block's output (B, T, C); ``cache`` takes every layer's keys and
    values (views of its packed projection). ``layers``: what :func:`plain_blocks` returned."""
    config = model.config
    flat = [t for block in layers for t in layer_weights(block)]
    out, *packed = _Blocks.apply(x, config.n_head, config.layer_norm_eps, *flat)
    cache_packed(cache, packed, config.n_head)
    return out


__all__ = [
    "FIELDS",
    "BlocksPass",
    "LayerWeights",
    "blocks_forward",
    "cache_packed",
    "forget_product_choices",
    "layer_weights",
    "plain_blocks",
    "product_choices",
]
