"""A GPT's decoding forward over a few tokens as one C call (``kernels/avx2.c``), on AVX2.

Why: a decode step of a small GPT is about a hundred PyTorch operations on vectors of a few
hundred floats, and each pays a fixed dispatch cost that is larger than its arithmetic. Measured
on an AMD EPYC (AVX2 only): the default 6L/192 GPT's step took 2.3-2.7 ms through the flattened
plan of :mod:`rnn2gpt.models.decode_plan`, while its 24 matrix products over 10.6 MB of weights
need a few hundred microseconds. The C step does the same arithmetic (LayerNorms, the fused qkv
product, attention over the cache, the MLP with its GELU, the residuals, the head) in one call on
the model's own weights and the cache's own buffers, and writes the new keys and values into the
cache as :meth:`KVCache.append` would. It takes a few tokens per row as well (a speculative
check of drafted tokens, a short prompt), each attending causally.

When: :func:`build_native_step` decides once per decoding state (with the decode plan) whether
the model can run in C at all: fp32 CPU weights, plain ``nn.Linear``/``nn.LayerNorm``/
``nn.Embedding`` layers (or their packed twin, or :class:`Int8Linear`: int8 weights are widened
to fp32 in registers, as the int8 product of :mod:`rnn2gpt.models.avx2_int8` does), no adaptive output, no hooks, and the kernel built
here (:mod:`rnn2gpt.models.native`). :meth:`NativeStep.accepts` then decides per forward: at
most :data:`MAX_ROWS` new tokens in all, and a cache whose buffers are allocated, float32 and
contiguous. Whether C or PyTorch is faster for the model's shape at that batch and token count,
and on how many threads, is timed once per process (:func:`rnn2gpt.models.decode_plan.native_threads`).
Anything else takes the plan's PyTorch path, which gives the same numbers within float rounding
(``tests/models/test_models_native_step.py``).

Threads: the kernel splits a step's products, attention heads and GELU over the threads it is
given, with a small pool of its own (workers spin about a millisecond for the next part, then
sleep). The numbers are the same bits for any thread count and for a row alone or beside others.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from . import native
from .kv_cache import KVCache, SlotKVCache
from .packed import PackedLinear
from .quantized import Int8Linear

if TYPE_CHECKING:
    from .gpt import GPT

logger = logging.getLogger(__name__)

KERNEL = "avx2"  # kernels/avx2.c
# New tokens (rows x tokens per row) a C call is tried at, at most (where it runs is then timed:
# decode_plan.native_threads). It reads each weight once per four tokens or per token (from the
# core's cache after the first), where PyTorch's matrix products read each weight once for all
# of them: past a few tokens they win.
MAX_ROWS = 8

_LINEARS = (nn.Linear, PackedLinear, Int8Linear)
_float_p = ctypes.POINTER(ctypes.c_float)


ROWS, TRANSPOSED, INT8 = 0, 1, 2  # Matrix.kind, as in kernels/avx2.c


class Matrix(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("kind", ctypes.c_int64), ("scale", ctypes.c_void_p)]


class GptLayer(ctypes.Structure):
    _fields_ = [
        ("ln1_w", ctypes.c_void_p),
        ("ln1_b", ctypes.c_void_p),
        ("attn", Matrix),
        ("attn_b", ctypes.c_void_p),
        ("proj", Matrix),
        ("proj_b", ctypes.c_void_p),
        ("ln2_w", ctypes.c_void_p),
        ("ln2_b", ctypes.c_void_p),
        ("fc", Matrix),
        ("fc_b", ctypes.c_void_p),
        ("mlp_proj", Matrix),
        ("mlp_proj_b", ctypes.c_void_p),
    ]


class GptWeights(ctypes.Structure):
    _fields_ = [
        ("n_layer", ctypes.c_int64),
        ("width", ctypes.c_int64),
        ("n_head", ctypes.c_int64),
        ("inner", ctypes.c_int64),
        ("vocab", ctypes.c_int64),
        ("gelu_tanh", ctypes.c_int64),
        ("eps", ctypes.c_double),
        ("wte", Matrix),
        ("positions", Matrix),
        ("lnf_w", ctypes.c_void_p),
        ("lnf_b", ctypes.c_void_p),
        ("head", Matrix),
        ("head_b", ctypes.c_void_p),
        ("layers", ctypes.POINTER(GptLayer)),
    ]


class NativeStep:
    """A GPT's decode step in C, bound to the model's weights as they are now.

    Call it as ``step(tokens (B, T), cache, threads) -> logits (B, T, V)``; it appends the
    tokens' keys and values to ``cache`` and advances it T slots, as ``planned_forward`` does.
    Check :meth:`accepts` first.
    """

    def __init__(
        self,
        function: ctypes._CFuncPtr,
        weights: GptWeights,
        keep: list[object],
        vocab: int,
        block_size: int,
    ) -> None:
        self._function = function
        self._weights = weights
        self._keep = keep  # the tensors and ctypes arrays that weights points into
        self._vocab = vocab
        self._block_size = block_size
        # What one step reads (the embedding's one row aside): large models are timed briefly.
        self.weight_bytes = sum(t.nbytes for t in keep if isinstance(t, Tensor))
        self._buffers: tuple[tuple[int, ...], object, object] | None = None
        # What the speed of a step depends on: the shapes and the weights' layouts.
        self.signature = (
            weights.n_layer,
            weights.width,
            weights.n_head,
            weights.inner,
            vocab,
            weights.head.kind,
            weights.layers[0].attn.kind,
        )

    def accepts(self, tokens: Tensor, cache: object) -> bool:
        """Whether this forward can run in C: at most MAX_ROWS new tokens in all, and a cache of
        allocated float32 buffers (a light cache grows into one at its first step)."""
        if tokens.numel() > MAX_ROWS:
            return False
        if type(cache) is KVCache:
            keys = cache.keys
            if keys[0] is None or keys[0].shape[2] != cache.capacity:
                return False
        elif type(cache) is not SlotKVCache:
            return False
        return all(
            t is not None and t.dtype == torch.float32 and t.is_contiguous()
            for t in (*cache.keys, *cache.values)
        )

    def __call__(self, tokens: Tensor, cache: KVCache | SlotKVCache, threads: int = 1) -> Tensor:
        """tokens (B, T) -> logits (B, T, V); the work is split over ``threads`` threads (the
        caller's and the kernel's own workers; the numbers do not depend on it)."""
        batch, steps = tokens.shape
        if type(cache) is SlotKVCache:
            slots = cache.host_lengths
            positions = [start + t for start in slots for t in range(steps)]
            valid = None
        else:
            slots = [cache.length] * batch
            per_row = cache.positions(steps)  # (B, T) when rows are padded, else None
            if per_row is None:
                positions = list(range(cache.length, cache.length + steps)) * batch
            else:
                positions = per_row.reshape(-1).tolist()
            valid = cache.valid
        token_ids = tokens.reshape(-1).tolist()
        if min(token_ids) < 0 or max(token_ids) >= self._vocab:
            # C would read outside the embedding: the same error as nn.Embedding's instead.
            raise IndexError(f"token ids must be in 0..{self._vocab - 1}; got {token_ids}")
        per_token = ctypes.c_int64 * (batch * steps)
        logits = torch.empty(batch, steps, self._vocab, dtype=torch.float32)
        keys, values = self._cache_pointers(cache)
        status = self._function(
            ctypes.byref(self._weights),
            batch,
            steps,
            per_token(*token_ids),
            per_token(*positions),
            (ctypes.c_int64 * batch)(*slots),
            None if valid is None else valid.contiguous().data_ptr(),
            keys,
            values,
            cache.capacity,
            self._block_size,
            logits.data_ptr(),
            threads,
        )
        if status != 0:
            raise MemoryError("the C decode step could not allocate its scratch memory")
        cache.advance(steps)
        return logits

    def _cache_pointers(self, cache: KVCache | SlotKVCache) -> tuple[object, object]:
        """The per-layer key and value buffer addresses as C arrays, remembered for the last
        cache (read once into a local: another thread may decode another cache meanwhile)."""
        addresses = tuple(t.data_ptr() for t in (*cache.keys, *cache.values))
        known = self._buffers
        if known is None or known[0] != addresses:
            layers = len(cache.keys)
            array = ctypes.c_void_p * layers
            known = (addresses, array(*addresses[:layers]), array(*addresses[layers:]))
            self._buffers = known
        return known[1], known[2]


def unavailable_reason() -> str | None:
    """Why no GPT decodes in C here (one phrase, for ``rnn2gpt doctor``), or None."""
    return native.load(KERNEL)[1]


@functools.cache
def _kernel() -> ctypes._CFuncPtr | None:
    library, _ = native.load_built(KERNEL)
    if library is None:
        return None
    function = library.rnn2gpt_gpt_step
    function.argtypes = [
        ctypes.c_void_p,  # weights
        ctypes.c_int64,  # batch
        ctypes.c_int64,  # steps
        ctypes.c_void_p,  # tokens
        ctypes.c_void_p,  # positions
        ctypes.c_void_p,  # slots
        ctypes.c_void_p,  # valid
        ctypes.c_void_p,  # keys
        ctypes.c_void_p,  # values
        ctypes.c_int64,  # capacity
        ctypes.c_int64,  # block_size
        ctypes.c_void_p,  # logits
        ctypes.c_int64,  # threads
    ]
    function.restype = ctypes.c_int
    return function


def build_native_step(model: GPT) -> NativeStep | None:
    """The C step of ``model`` as its modules are now, or None where it cannot run (the reason
    is logged once at debug level)."""
    reason = _ineligible(model) or unavailable_reason()
    if reason is not None:
        logger.debug("GPT decode step in PyTorch: %s", reason)
        return None
    function = _kernel()
    if function is None:  # the setting allowed it but the machine cannot (already logged)
        return None
    keep: list[object] = []

    def vector(t: Tensor | None) -> int | None:
        if t is None:
            return None
        keep.append(t)
        return t.data_ptr()

    def matrix(weight: Tensor) -> Matrix:
        keep.append(weight)
        return Matrix(weight.data_ptr(), ROWS if weight.is_contiguous() else TRANSPOSED, None)

    def linear(layer: nn.Module) -> Matrix:
        if isinstance(layer, Int8Linear):
            keep.extend((layer.qweight, layer.scale))
            return Matrix(layer.qweight.data_ptr(), INT8, layer.scale.data_ptr())
        return matrix(layer.weight)

    tr = model.transformer
    layers = (GptLayer * len(tr.h))()
    for slot, block in zip(layers, tr.h, strict=True):
        attn, mlp = block.attn, block.mlp
        slot.ln1_w, slot.ln1_b = vector(block.ln_1.weight), vector(block.ln_1.bias)
        slot.attn, slot.attn_b = linear(attn.c_attn), vector(attn.c_attn.bias)
        slot.proj, slot.proj_b = linear(attn.c_proj), vector(attn.c_proj.bias)
        slot.ln2_w, slot.ln2_b = vector(block.ln_2.weight), vector(block.ln_2.bias)
        slot.fc, slot.fc_b = linear(mlp.c_fc), vector(mlp.c_fc.bias)
        slot.mlp_proj, slot.mlp_proj_b = linear(mlp.c_proj), vector(mlp.c_proj.bias)
    keep.append(layers)
    config = model.config
    positions = model.pos_table if config.pos_encoding == "sinusoidal" else tr.wpe.weight
    weights = GptWeights(
        n_layer=config.n_layer,
        width=config.n_embd,
        n_head=config.n_head,
        inner=tr.h[0].mlp.c_fc.out_features,
        vocab=config.vocab_size,
        gelu_tanh=int(tr.h[0].mlp.act.approximate == "tanh"),
        eps=float(tr.ln_f.eps),
        wte=matrix(tr.wte.weight),
        positions=matrix(positions),
        lnf_w=vector(tr.ln_f.weight),
        lnf_b=vector(tr.ln_f.bias),
        head=linear(model.lm_head),
        head_b=vector(model.lm_head.bias),
        layers=layers,
    )
    return NativeStep(function, weights, keep, config.vocab_size, positions.shape[0])


def keeps_row_layout(model: nn.Module) -> bool:
    """Whether ``model`` is a GPT whose decoding can run in C here, so that
    :func:`rnn2gpt.models.base.use_inference_layout` leaves its linear weights as rows."""
    config = getattr(model, "config", None)
    return (
        getattr(config, "arch", None) == "gpt"
        and hasattr(model, "transformer")
        and unavailable_reason() is None
        and _ineligible(model) is None
    )


def _ineligible(model: GPT) -> str | None:
    """Why this model's layers or weights rule the C step out; None if they do not."""
    if model.cutoffs:
        return "an adaptive output layer"
    tr = model.transformer
    if type(tr.wte) is not nn.Embedding or type(model.lm_head) not in _LINEARS:
        return "a replaced embedding or output layer"
    norms = [tr.ln_f, *(n for b in tr.h for n in (b.ln_1, b.ln_2))]
    linears = [
        layer for b in tr.h for layer in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj)
    ] + [model.lm_head]
    if any(type(n) is not nn.LayerNorm for n in norms):
        return "a replaced LayerNorm"
    if any(type(layer) not in _LINEARS for layer in linears):
        return "LoRA or other replaced linear layers"
    if len({n.eps for n in norms}) != 1 or len({b.mlp.act.approximate for b in tr.h}) != 1:
        return "layers with different settings"
    positions = model.pos_table if model.config.pos_encoding == "sinusoidal" else tr.wpe.weight
    floats = [positions, *model.parameters()]
    floats += [t for x in linears if isinstance(x, Int8Linear) for t in (x.scale, x.bias)]
    if any(t is not None and (t.dtype != torch.float32 or t.device.type != "cpu") for t in floats):
        return "weights that are not float32 on the CPU"
    matrices = [tr.wte.weight, positions]
    matrices += [x.weight for x in linears if not isinstance(x, Int8Linear)]
    if not all(m.is_contiguous() or m.t().is_contiguous() for m in matrices):
        return "weights in a strided layout"
    vectors = [t for n in norms for t in (n.weight, n.bias)] + [x.bias for x in linears]
    vectors += [t for x in linears if isinstance(x, Int8Linear) for t in (x.qweight, x.scale)]
    if not all(v is None or v.is_contiguous() for v in vectors):
        return "weights in a strided layout"
    return None


__all__ = ["MAX_ROWS", "NativeStep", "build_native_step", "keeps_row_layout", "unavailable_reason"]
