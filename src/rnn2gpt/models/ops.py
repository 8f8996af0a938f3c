"""Small tensor operations of the transformer models, each the fastest exact way on a CPU.

Shapes: B batch, nh heads, T queries, S keys, hd head width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import native_ops


def sdpa(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float, is_causal: bool
) -> Tensor:
    """Scaled dot-product attention; q (B, nh, T, hd), k/v (B, nh, S, hd) -> (B, nh, T, hd).

    On CPUs PyTorch's bf16 flash-attention kernel is several times slower than its fp32 one
    (measured here: 6.1 vs 1.4 ms forward+backward at B12/H4/T64/hd32), so under CPU bf16
    autocast the attention itself runs in fp32; the projections around it stay in bf16.
    """
    if q.device.type == "cpu" and (q.dtype == torch.bfloat16 or torch.is_autocast_enabled("cpu")):
        out_dtype = q.dtype
        # Autocast would cast the inputs straight back to bf16: step outside it.
        with torch.autocast("cpu", enabled=False):
            y = F.scaled_dot_product_attention(
                q.float(),
                k.float(),
                v.float(),
                attn_mask=mask,
                dropout_p=dropout_p,
                is_causal=is_causal,
            )
        return y.to(out_dtype)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal
    )


# PyTorch computes the exact (erf) GELU of a CPU float tensor with oneDNN, which costs a fixed
# ~16 us a call to find its primitive: on X3, 21.6 against 5.2 us for ATen's own kernel on 768
# values (one decode row of a 192-wide MLP), 6 of them a token for the default GPT. oneDNN wins on
# large tensors (234 against 308 us on 393k values, a training batch), so only small tensors
# outside autograd take ATen's kernel. The two agree within 2e-6.
SMALL_GELU_NUMEL = 1 << 14


def gelu(x: Tensor, approximate: str) -> Tensor:
    """``F.gelu(x, approximate)``: the exact form of a large float32 tensor in C where the kernel
    runs here (:mod:`rnn2gpt.models.native_ops`), of a small tensor outside autograd by ATen's own
    kernel, else PyTorch's."""
    if approximate == "none" and x.numel() > SMALL_GELU_NUMEL and native_ops.usable(x):
        # Forward and backward of 393k values (a nanoGPT-size training batch), AMD EPYC:
        # 0.45-0.81 ms against 0.70-1.02 ms for oneDNN's (benchmarks/train_kernels.py).
        return native_ops.gelu(x)
    if (
        approximate == "none"
        and x.numel() <= SMALL_GELU_NUMEL
        and x.is_cpu
        and not (x.requires_grad and torch.is_grad_enabled())
        and torch._C._get_mkldnn_enabled()
        and not torch.compiler.is_compiling()
    ):
        # The switch is process-wide; it is off only for the length of this one kernel.
        torch._C._set_mkldnn_enabled(False)
        try:
            return F.gelu(x)
        finally:
            torch._C._set_mkldnn_enabled(True)
    return F.gelu(x, approximate=approximate)


def dropout(layer: nn.Dropout, x: Tensor) -> Tensor:
    """``layer(x)``, skipped where it is the identity (evaluation, or p = 0): a decode step would
    otherwise pay a module call and a dispatch for each of its 2 n_layer + 1 dropouts."""
    return layer(x) if layer.training and layer.p > 0 else x


__all__ = ["SMALL_GELU_NUMEL", "dropout", "gelu", "sdpa"]
