"""AdamW whose step, gradient clipping included, runs as two C calls on AVX2 CPUs.

Why: in fp32 training of a small model the update is a fixed cost paid every step. On an AMD
EPYC (AVX2 only) the nanoGPT-size step (0.8M parameters in 27 tensors, 44-52 ms) spent 1.1 ms
in ``clip_grad_norm_`` (a norm, a stack and a multiplication per tensor) and 1.2 ms in PyTorch's
fused AdamW. Here one pass over the gradients finds their norm and a second updates the
parameters with the clipping factor folded in (``models/kernels/avx2.c``; the gradients are
read, never rescaled in place).

:class:`NativeAdamW` *is* a :class:`torch.optim.AdamW`: the same hyper-parameters, the same state
(``step``, ``exp_avg``, ``exp_avg_sq`` per parameter), the same ``state_dict``, so checkpoints
move between it and PyTorch's class both ways. Its :meth:`NativeAdamW.step` takes the C path
where :func:`rnn2gpt.models.native_ops.usable` allows (fast paths on, PyTorch at AVX2, the kernel
built) and every parameter and gradient is a dense contiguous float32 CPU tensor with plain
AdamW options; anything else goes to PyTorch's step (clipping with ``clip_grad_norm_`` first).

It also leaves ``torch._dynamo`` unimported: ``torch.optim.Optimizer`` wraps ``add_param_group``,
``zero_grad``, ``state_dict``, ``load_state_dict`` and AdamW's ``step`` so that their first call
imports it (1.5-1.8 s of a run's start on these CPUs, for a compiler the run does not use). This
class calls the same methods without the wrappers, on both paths.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.optim.optimizer as optimizer_hooks
from torch import Tensor, nn

from ..models import native_ops


def _unwrapped(method: Callable) -> Callable:
    """``method`` without PyTorch's ``torch._disable_dynamo`` wrapper (which imports
    ``torch._dynamo`` on its first call), where it has one."""
    return getattr(method, "__wrapped__", method)


def clip_norm_factor(total_norm: float, max_norm: float) -> float:
    """What ``clip_grad_norm_(max_norm)`` multiplies the gradients by, given their norm."""
    return min(max_norm / (total_norm + 1e-6), 1.0)


class NativeAdamW(torch.optim.AdamW):
    """:class:`torch.optim.AdamW` with ``step(max_grad_norm=...)`` computed in C where it can."""

    add_param_group = _unwrapped(torch.optim.Optimizer.add_param_group)
    state_dict = _unwrapped(torch.optim.Optimizer.state_dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop every parameter's gradient (or zero it, with ``set_to_none=False``). Dropping is
        a plain loop here: PyTorch's method (a profiler record, then the loop) took 0.11 ms of a
        nanoGPT-size step on an AMD EPYC."""
        if not set_to_none:
            _unwrapped(torch.optim.Optimizer.zero_grad)(self, set_to_none=False)
            return
        for group in self.param_groups:
            for param in group["params"]:
                param.grad = None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        _unwrapped(torch.optim.Optimizer.load_state_dict)(self, state_dict)
        self._states_checked = False  # loaded state may hold other dtypes: look again

    def _native_groups(self) -> list[tuple[dict, list[Tensor]]] | None:
        """Each group with its parameters that have gradients, or None where the C path does not
        apply (see the module's docstring)."""
        groups, f32 = [], torch.float32
        for group in self.param_groups:
            if (
                group["amsgrad"]
                or group["maximize"]
                or group["differentiable"]
                or group["capturable"]
            ):
                return None
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                grad = p.grad
                if p.dtype is not f32 or grad.dtype is not f32 or not (p.is_cpu and grad.is_cpu):
                    return None
                if grad.is_sparse or not (p.is_contiguous() and grad.is_contiguous()):
                    return None
            groups.append((group, params))
        if not getattr(self, "_states_checked", False):
            if not all(self._state_fits(state) for state in self.state.values()):
                return None
            self._states_checked = True
        first = next((params[0] for _, params in groups if params), None)
        return groups if first is not None and native_ops.usable(first) else None

    @staticmethod
    def _state_fits(state: dict[str, Any]) -> bool:
        """Whether a parameter's state is what the C update writes: float32, contiguous."""
        return all(
            state[k].dtype == torch.float32 and state[k].is_contiguous()
            for k in ("step", "exp_avg", "exp_avg_sq")
        )

    def _state_of(self, param: Tensor) -> dict[str, Any]:
        state = self.state[param]
        if not state:  # as torch.optim.AdamW initialises it (the fused kernel's float32 step)
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return state

    def step(self, closure: Callable[[], float] | None = None, *, max_grad_norm: float = 0.0):  # type: ignore[override]
        """One update; ``max_grad_norm > 0`` clips the gradients' total norm to it first, as
        ``torch.nn.utils.clip_grad_norm_`` would. Returns the closure's loss, if one is given.

        Raises:
            ValueError: a closure together with ``max_grad_norm`` (the closure computes the
                gradients, so it is where they can be clipped).
        """
        if max_grad_norm > 0 and closure is not None:
            raise ValueError("clip the gradients inside the closure, not with max_grad_norm")
        if max_grad_norm > 0 and self.defaults["differentiable"]:
            nn.utils.clip_grad_norm_(self._params_with_grads(), max_grad_norm)
            max_grad_norm = 0.0
        if self.defaults["differentiable"]:
            return super().step(closure)  # its wrapper sets the grad mode this needs
        with torch.no_grad():
            groups = self._native_groups() if closure is None else None
            if groups is None:
                if max_grad_norm > 0:
                    nn.utils.clip_grad_norm_(self._params_with_grads(), max_grad_norm)
                # PyTorch's AdamW step without its wrapper, which imports torch._dynamo only to
                # mark a graph break for the compiler; the no_grad here is the mode it would set.
                return _unwrapped(torch.optim.AdamW.step)(self, closure)
            self._native_step(groups, max_grad_norm)
        return None

    def clipped_step(self, max_grad_norm: float) -> None:
        """``step(max_grad_norm=max_grad_norm)``; where no step hooks are registered, without
        the wrapper PyTorch puts around every optimizer's ``step`` (a profiler record and the
        hooks' loops: 0.1 ms of a nanoGPT-size step on an AMD EPYC)."""
        step = type(self).step if self.hooked() else _unwrapped(type(self).step)
        step(self, max_grad_norm=max_grad_norm)

    def _native_step(self, groups: list[tuple[dict, list[Tensor]]], max_grad_norm: float) -> None:
        scale = 1.0
        if max_grad_norm > 0:
            grads = [p.grad for _, params in groups for p in params]
            scale = clip_norm_factor(math.sqrt(native_ops.squared_norm(grads)), max_grad_norm)
        for group, params in groups:
            if not params:
                continue
            states = [self._state_of(p) for p in params]
            native_ops.adamw_update(
                params,
                [p.grad for p in params],
                [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states],
                [s["step"] for s in states],
                lr=float(group["lr"]),
                betas=group["betas"],
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                grad_scale=scale,
            )

    def hooked(self) -> bool:
        """Whether a step hook, this optimizer's own or a global one, is registered."""
        return bool(
            self._optimizer_step_pre_hooks
            or self._optimizer_step_post_hooks
            or optimizer_hooks._global_optimizer_pre_hooks
            or optimizer_hooks._global_optimizer_post_hooks
        )

    def fixed_update(self, grads: dict[Tensor, Tensor]) -> Callable[[float], None] | None:
        """The clipped step over gradients kept in fixed buffers (``grads``: each parameter's,
        where ``param.grad`` is not used), its C calls' argument arrays built once: a function of
        ``max_grad_norm`` (0: no clipping) that does what :meth:`clipped_step` does with those
        gradients in ``param.grad``, to the bit. None where the C path does not apply (see
        :meth:`_native_groups`), or where a parameter without a buffer would need a gradient."""
        groups = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p in grads]
            if any(p.requires_grad and p not in grads for p in group["params"]):
                return None
            groups.append((group, params))
        before = {p: p.grad for p in grads}
        for p, grad in grads.items():
            p.grad = grad  # for the checks below only
        try:
            checked = self._native_groups()
        finally:
            for p, grad in before.items():
                p.grad = grad
        if checked is None or self.defaults["differentiable"]:
            return None
        library, threads = native_ops._library(), torch.get_num_threads()
        every = [grads[p] for _, params in groups for p in params]
        norm_arguments = (
            native_ops._pointers(every),
            native_ops._sizes(every),
            len(every),
            threads,
        )
        updates = []
        for group, params in groups:
            if not params:
                continue
            states = [self._state_of(p) for p in params]
            tensors = (params, [grads[p] for p in params])
            tensors += tuple([s[k] for s in states] for k in ("exp_avg", "exp_avg_sq", "step"))
            arrays = tuple(native_ops._pointers(t) for t in tensors)
            updates.append((group, (*arrays, native_ops._sizes(params), len(params))))

        def update(max_grad_norm: float) -> None:
            scale = 1.0
            if max_grad_norm > 0:
                total = library.rnn2gpt_squared_norm(*norm_arguments)
                if total < 0:
                    raise MemoryError("the C norm kernel could not allocate its scratch memory")
                scale = clip_norm_factor(math.sqrt(total), max_grad_norm)
            for group, arrays in updates:
                (beta1, beta2), lr = group["betas"], float(group["lr"])
                status = library.rnn2gpt_adamw(
                    *arrays, lr, beta1, beta2, group["eps"], group["weight_decay"], scale, threads
                )
                native_ops._check(status)

        return update

    def _params_with_grads(self) -> Iterable[Tensor]:
        return [p for group in self.param_groups for p in group["params"] if p.grad is not None]


def clip_and_step(
    optimizer: torch.optim.Optimizer, parameters: Iterable[Tensor], max_norm: float
) -> None:
    """Clip the gradients of ``parameters`` to total norm ``max_norm`` (0: no clipping) and take
    one optimizer step: in one C pass each for a :class:`NativeAdamW`."""
    if isinstance(optimizer, NativeAdamW):
        optimizer.clipped_step(max_norm)
        return
    if max_norm > 0:
        nn.utils.clip_grad_norm_(parameters, max_norm)
    optimizer.step()


__all__ = ["NativeAdamW", "clip_and_step", "clip_norm_factor"]
