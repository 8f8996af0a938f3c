"""A whole training step without autograd, where the model and the optimizer both run in C.

    batch -> loss, every gradient, clipping and AdamW: four C calls, nothing else between them

Why: with the GPT's training forward and backward in C (:mod:`rnn2gpt.models.native_model`) and
AdamW in C (:mod:`rnn2gpt.training.native_adamw`), what was left of a nanoGPT-size fp32 step
outside the C calls was Python and autograd: 2.6-2.9 ms of a 31-36 ms step on an AMD EPYC
(AVX2 only), 3-4x what the same code costs alone because the step's 25 MB of activations leave
the interpreter's objects cold. About 1.5 ms of it was the autograd engine, the loss function's
buffers and argument arrays, the gradients handed over one by one and the optimizer gathering
them again (``benchmarks/RESULTS.md``, issue 14's eleventh part). Here the buffers, the
gradients and every C call's argument arrays are made once, and a step is the four calls.

It is the same arithmetic to the bit: the same C functions in the same order, the mean's
gradient as autograd computes it, the norm over the gradients in the optimizer's order
(``tests/training/test_fused_step.py``). ``param.grad`` stays None; the optimizer's state is the
one :class:`~rnn2gpt.training.native_adamw.NativeAdamW` keeps, so checkpoints and resume do not
change.

Where: :func:`fused_step` returns one only where nothing else could see the difference: a
language-model task over independent windows, a GPT whose forward with targets takes the C path
(:func:`rnn2gpt.models.native_model.fixed_loss_pass`), a :class:`NativeAdamW` whose step takes
its C path, one process (DDP's hooks need autograd), no gradient accumulation, no compile, fp32,
and no hook on a parameter or the optimizer. The trainer falls back to the autograd step for a
batch of another shape, or once an optimizer hook appears.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..models import native_model
from .native_adamw import NativeAdamW

if TYPE_CHECKING:
    from .setup import RunParts


class FusedStep:
    """The training step of one run without autograd: :meth:`__call__` (a batch (x, y)) -> the
    mean loss after the update. Its buffers are made for the first batch's shape (B, T)."""

    def __init__(self, model: nn.Module, optimizer: NativeAdamW, max_grad_norm: float) -> None:
        self.model = model
        self.optimizer = optimizer
        self.max_grad_norm = max_grad_norm
        self.loss_pass: native_model.FixedLossPass | None = None
        self.update: Any = None
        self.usable = True
        self.tokens = 0  # the last step's target tokens

    def __call__(self, batch: tuple[Tensor, ...], compiler: Any) -> Tensor | None:
        """The step's mean loss (0-d) after clipping and AdamW, or None where this batch must
        take the autograd step: the step runs a compiled module now, an optimizer hook was
        registered since, the batch has another shape, or the C path does not apply."""
        tokens, targets = batch[0], batch[1]
        if not self.usable or compiler.module is not self.model or self.optimizer.hooked():
            return None
        if self.loss_pass is None and not self._build(*tokens.shape):
            return None
        assert self.loss_pass is not None
        if tuple(tokens.shape) != self.loss_pass.shape_bt:
            return None
        with torch.no_grad():
            loss = self.loss_pass.run(tokens, targets)
            self.update(self.max_grad_norm)
        self.tokens = targets.numel()
        return loss

    def _build(self, batch: int, steps: int) -> bool:
        self.usable = False
        loss_pass = native_model.fixed_loss_pass(self.model, batch, steps)
        if loss_pass is None:
            return False
        update = self.optimizer.fixed_update(loss_pass.grads)
        if update is None:
            return False
        self.loss_pass, self.update, self.usable = loss_pass, update, True
        return True


def _hooked_parameters(model: nn.Module) -> bool:
    return any(p._backward_hooks or p._post_accumulate_grad_hooks for p in model.parameters())


def fused_step(parts: RunParts, module: nn.Module, distributed: bool) -> FusedStep | None:
    """The fused step for this run, or None where the autograd step must run (see the module's
    docstring). ``module`` is what the step calls now (DDP-wrapped, compiled, or the model)."""
    tc, model, optimizer = parts.config.train, parts.model, parts.optimizer
    if distributed or tc.grad_accum != 1 or parts.precision.dtype not in (None, torch.float32):
        return None
    if module is not model or not getattr(parts.task, "plain_windows", False):
        return None
    if not isinstance(optimizer, NativeAdamW) or optimizer.hooked() or _hooked_parameters(model):
        return None
    return FusedStep(model, optimizer, max(tc.grad_clip, 0.0))


__all__ = ["FusedStep", "fused_step"]
