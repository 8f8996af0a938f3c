"""A GPT's blocks, forward and backward, as one autograd function (fp32 training on AVX2).

    x (B, T, C) -> n_layer x [ x = x + c_proj(attention(ln_1(x)))
                               x = x + mlp_proj(GELU(c_fc(ln_2(x)))) ] -> (B, T, C)

Why: the module path dispatches about 1,260 ATen operations for a training step of the nanoGPT-size
GPT (views, transposes, reshapes, autograd nodes and their bookkeeping). A step of the same graph
at width 16, where the arithmetic is nothing, took 4.9 ms against 56 ms at width 128 (AMD EPYC,
AVX2 only; ``benchmarks/RESULTS.md``). Here the blocks are written out once, forward and
backward: each layer is eight matrix products forward and eight backward (MKL, through
``torch.mm``/``torch.addmm`` with the residual adds folded into ``addmm``), and the C
attention, GELU and LayerNorm of :mod:`rnn2gpt.models.native_ops` (the LayerNorm's backward adds
the residual stream's gradient in its pass), and autograd sees one node for the whole stack.

The numbers are the modules' within float rounding: the same arithmetic, the residual and bias
adds in another order (``tests/models/test_models_native_blocks.py``). Only the products that a
gradient needs run: a frozen weight's gradient is not computed. The activations are kept on the
function's context, not with ``save_for_backward``, so that each layer's go as soon as the
backward has read them (as autograd frees the modules' node by node); the price is autograd's
check that nothing changed them in place between the forward and the backward.

Where: :meth:`rnn2gpt.models.gpt.GPT.forward` takes it when :func:`plain_blocks` returns the
layers: gradients on, a fresh
sequence without mask, recorder or dropout, the exact GELU, plain ``nn.Linear``/``nn.LayerNorm``
layers without hooks (LoRA and the int8 layers keep the modules), and the C kernels usable
(:func:`rnn2gpt.models.native_ops.usable`: float32, AVX2, fast paths on, outside autocast and
``torch.compile``). The cache of that forward holds the keys and values as views of each layer's
packed projection, as the module path's does.
"""

from __future__ import annotations

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
    return layers if native_ops.usable(x, layers[0].c_attn._parameters["weight"]) else None


def layer_weights(layers: _Layers) -> LayerWeights:
    params = [layer._parameters for layer in layers[:6]]
    return LayerWeights(*(p.get(name) for p in params for name in ("weight", "bias")))


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x (N, in) -> (N, out)."""
    return torch.mm(x, weight.t()) if bias is None else torch.addmm(bias, x, weight.t())


def _residual(x: Tensor, branch: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x + branch W^T (+ b): the residual add is the product's accumulation (addmm's beta)."""
    out = torch.addmm(x, branch, weight.t())
    return out if bias is None else out.add_(bias)


def _linear_param_grads(
    d_out: Tensor, x: Tensor, want_weight: bool, want_bias: bool
) -> tuple[Tensor | None, Tensor | None]:
    """A linear layer's weight gradient d_out^T x (out, in) and bias gradient (out,), each only
    where wanted; d_out (N, out), x (N, in)."""
    d_weight = torch.mm(d_out.t(), x) if want_weight else None
    return d_weight, (d_out.sum(0) if want_bias else None)


class _Saved(NamedTuple):
    """What one layer's backward reads (N = B * T rows)."""

    x: Tensor  # (N, C) the block's input
    ln_1: tuple[Tensor, Tensor, Tensor]  # output (N, C), mean and 1 / std (N,)
    qkv: Tensor  # (B, T, 3C)
    stats: Tensor  # (B, H, T, 2)
    y: Tensor  # (N, C) the attention's output
    x_mid: Tensor  # (N, C) after the attention's residual
    ln_2: tuple[Tensor, Tensor, Tensor]
    hidden: Tensor  # (N, F) GELU(c_fc(ln_2))
    slope: Tensor  # (N, F) GELU'(c_fc(ln_2))


class _Blocks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, n_head: int, eps: float, *flat: Tensor | None):  # type: ignore[override]
        batch, steps, width = x.shape
        rows = batch * steps
        layers = [LayerWeights(*flat[i : i + FIELDS]) for i in range(0, len(flat), FIELDS)]
        h = x.reshape(rows, width).contiguous()
        saved, packed = [], []
        for w in layers:
            ln_1 = native_ops.layer_norm(h, w.ln_1_weight, w.ln_1_bias, eps)
            qkv = _linear(ln_1[0], w.c_attn_weight, w.c_attn_bias).view(batch, steps, 3 * width)
            y, stats = native_ops.attention_forward(qkv, n_head)
            y = y.view(rows, width)
            x_mid = _residual(h, y, w.attn_proj_weight, w.attn_proj_bias)
            ln_2 = native_ops.layer_norm(x_mid, w.ln_2_weight, w.ln_2_bias, eps)
            hidden, slope = native_ops.gelu_with_slope(
                _linear(ln_2[0], w.c_fc_weight, w.c_fc_bias), keep_slope=True
            )
            saved.append(_Saved(h, ln_1, qkv, stats, y, x_mid, ln_2, hidden, slope))
            packed.append(qkv)
            h = _residual(x_mid, hidden, w.mlp_proj_weight, w.mlp_proj_bias)
        ctx.saved, ctx.layers, ctx.n_head, ctx.eps = saved, layers, n_head, eps
        ctx.mark_non_differentiable(*packed)
        # The packed projections are returned for the cache only: no zero gradients for them
        # (four (B, T, 3C) fills a step, 0.2-0.5 ms at the nanoGPT size).
        ctx.set_materialize_grads(False)
        return (h.view(batch, steps, width), *packed)

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out: Tensor, *unused: None):  # type: ignore[override]
        # Called only with d_out: the other outputs are not differentiable.
        batch, steps, width = d_out.shape
        rows = batch * steps
        needs = ctx.needs_input_grad[3:]
        grads: list[Tensor | None] = [None] * len(needs)
        dh = d_out.reshape(rows, width).contiguous()
        for index in reversed(range(len(ctx.layers))):
            w, s = ctx.layers[index], ctx.saved[index]
            ctx.saved[index] = None  # each layer's activations go once read, as autograd's would
            wants = LayerWeights(*needs[index * FIELDS : (index + 1) * FIELDS])
            g = dict.fromkeys(LayerWeights._fields)
            # MLP: x_out = x_mid + GELU(ln_2 W_fc^T + b_fc) W_proj^T + b_proj
            g["mlp_proj_weight"], g["mlp_proj_bias"] = _linear_param_grads(
                dh, s.hidden, wants.mlp_proj_weight, wants.mlp_proj_bias
            )
            d_pre = torch.mm(dh, w.mlp_proj_weight).mul_(s.slope)  # (N, F) through the GELU
            g["c_fc_weight"], g["c_fc_bias"] = _linear_param_grads(
                d_pre, s.ln_2[0], wants.c_fc_weight, wants.c_fc_bias
            )
            d_mid, g["ln_2_weight"], g["ln_2_bias"] = native_ops.layer_norm_backward(
                torch.mm(d_pre, w.c_fc_weight),
                s.x_mid,
                s.ln_2,
                w.ln_2_weight,
                dh,
                (wants.ln_2_weight, wants.ln_2_bias),
            )
            # Attention: x_mid = x + attention(ln_1 W_attn^T + b_attn) W_o^T + b_o
            g["attn_proj_weight"], g["attn_proj_bias"] = _linear_param_grads(
                d_mid, s.y, wants.attn_proj_weight, wants.attn_proj_bias
            )
            d_y = torch.mm(d_mid, w.attn_proj_weight).view(batch, steps, width)
            d_qkv = native_ops.attention_backward(s.qkv, s.stats, d_y, ctx.n_head)
            d_qkv = d_qkv.view(rows, 3 * width)
            g["c_attn_weight"], g["c_attn_bias"] = _linear_param_grads(
                d_qkv, s.ln_1[0], wants.c_attn_weight, wants.c_attn_bias
            )
            dh, g["ln_1_weight"], g["ln_1_bias"] = native_ops.layer_norm_backward(
                torch.mm(d_qkv, w.c_attn_weight),
                s.x,
                s.ln_1,
                w.ln_1_weight,
                d_mid,
                (wants.ln_1_weight, wants.ln_1_bias),
            )
            grads[index * FIELDS : (index + 1) * FIELDS] = [
                g[name] for name in LayerWeights._fields
            ]
        ctx.saved = ctx.layers = None  # the activations go now, not when the graph does
        return (dh.view(batch, steps, width), None, None, *grads)


def blocks_forward(model: nn.Module, x: Tensor, cache: KVCache, layers: list[_Layers]) -> Tensor:
    """x (B, T, C) -> the last block's output (B, T, C); ``cache`` takes every layer's keys and
    values (views of its packed projection). ``layers``: what :func:`plain_blocks` returned."""
    config = model.config
    flat = [t for block in layers for t in layer_weights(block)]
    out, *packed = _Blocks.apply(x, config.n_head, config.layer_norm_eps, *flat)
    batch, steps, _ = x.shape
    head_dim = config.n_embd // config.n_head
    for layer, qkv in enumerate(packed):
        keys_values = qkv.view(batch, steps, 3, config.n_head, head_dim)[:, :, 1:]
        cache.append(layer, *keys_values.permute(2, 0, 3, 1, 4).unbind(0))
    return out


__all__ = ["FIELDS", "LayerWeights", "blocks_forward", "layer_weights", "plain_blocks"]
