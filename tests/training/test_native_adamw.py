"""NativeAdamW (training/native_adamw.py): PyTorch's AdamW with clip_grad_norm_'s numbers, its
state interchangeable with PyTorch's class, and torch._dynamo left unimported.

Where the C kernels cannot run, the tests of the C path skip naming why (the ``c_kernels``
fixture); the fallback, PyTorch's own step, is tested everywhere."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from rnn2gpt.models import native_ops
from rnn2gpt.training.native_adamw import NativeAdamW, clip_and_step, clip_norm_factor

SHAPES = [(65, 16), (64, 16), (48, 16), (16, 16), (64, 16), (16, 64), (16,), (16,), (7, 5), (3,)]


def parameters(seed: int = 0) -> list[nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(*shape, generator=generator)) for shape in SHAPES]


def groups(params: list[nn.Parameter]) -> list[dict]:
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def run(optimizer_class, steps: int = 12, max_norm: float = 1.0, seed: int = 0, **options):
    """``steps`` updates of :func:`parameters` with seeded gradients, half of them large enough
    to be clipped; -> the parameters and the optimizer."""
    params = parameters()
    optimizer = optimizer_class(groups(params), lr=3e-2, betas=(0.9, 0.99), **options)
    generator = torch.Generator().manual_seed(seed + 1)
    for step in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator) * (3.0 if step % 2 else 0.01)
        clip_and_step(optimizer, params, max_norm)
        optimizer.zero_grad(set_to_none=True)
    return params, optimizer


def assert_same(a: list[torch.Tensor], b: list[torch.Tensor], rtol: float = 1e-5) -> None:
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x.detach(), y.detach(), rtol=rtol, atol=1e-6)


@pytest.fixture
def c_calls(monkeypatch):
    """Counts the C update's calls."""
    calls = []
    real = native_ops.adamw_update

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(native_ops, "adamw_update", counted)
    return calls


@pytest.mark.parametrize("max_norm", [1.0, 0.0])
def test_the_c_step_gives_pytorchs_adamw_and_clipping(c_kernels, c_calls, max_norm):
    ours, _ = run(NativeAdamW, max_norm=max_norm)
    theirs, _ = run(torch.optim.AdamW, max_norm=max_norm, fused=True)
    assert len(c_calls) == 12 * 2  # two groups a step, every step in C
    assert_same(ours, theirs)
    # The parameters moved: the comparison is not of two untouched copies.
    assert not torch.allclose(ours[0], parameters()[0])


def test_the_fallback_gives_the_same_numbers(fastpaths_off, c_calls):
    ours, _ = run(NativeAdamW)
    theirs, _ = run(torch.optim.AdamW)
    assert not c_calls
    assert_same(ours, theirs)


@pytest.mark.parametrize(
    "change",
    ["amsgrad", "bf16 parameter", "transposed gradient", "closure"],
)
def test_what_the_c_step_does_not_cover_goes_to_pytorch(c_kernels, c_calls, change):
    params = parameters()
    if change == "bf16 parameter":
        params[3].data = params[3].data.bfloat16()
    options = {"amsgrad": change == "amsgrad"}
    optimizer = NativeAdamW(groups(params), lr=1e-2, **options)
    reference = torch.optim.AdamW(
        groups([nn.Parameter(p.detach().clone()) for p in params]), lr=1e-2, **options
    )
    theirs = [p for group in reference.param_groups for p in group["params"]]
    ours = [p for group in optimizer.param_groups for p in group["params"]]
    for mine, other in zip(ours, theirs, strict=True):
        grad = torch.randn(mine.shape[::-1]).t() if mine.dim() == 2 else torch.randn(mine.shape)
        mine.grad = (grad if change == "transposed gradient" else grad.contiguous()).to(mine.dtype)
        other.grad = grad.contiguous().to(other.dtype, copy=True)  # not mine's tensor
    if change == "closure":
        assert optimizer.step(lambda: 1.5) == 1.5
    else:
        clip_and_step(optimizer, ours, 1.0)
    clip_and_step(reference, theirs, 0.0 if change == "closure" else 1.0)
    assert not c_calls
    assert_same(ours, theirs)


def test_a_closure_clips_its_own_gradients():
    optimizer = NativeAdamW(groups(parameters()), lr=1e-2)
    with pytest.raises(ValueError, match="inside the closure"):
        optimizer.step(lambda: 1.0, max_grad_norm=1.0)


def test_the_c_step_has_the_same_bits_on_one_thread_and_two(c_kernels):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, _ = run(NativeAdamW)
        torch.set_num_threads(2)
        two, _ = run(NativeAdamW)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a, b)


def test_squared_norm_over_blocks_of_several_tensors(c_kernels):
    # Sizes across the kernel's 16,384-element blocks, and a tail of every length below 8.
    tensors = [torch.randn(n) for n in (40_000, 16_384, 7, 1, 16_385 + 3)]
    expected = sum(float((t.double() ** 2).sum()) for t in tensors)
    assert native_ops.squared_norm(tensors) == pytest.approx(expected, rel=1e-6)


def test_clip_factor_is_clip_grad_norms():
    grads = [torch.randn(30) * 5, torch.randn(4, 4)]
    params = [nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    norm = nn.utils.clip_grad_norm_(params, 2.0)
    factor = clip_norm_factor(float(norm), 2.0)
    torch.testing.assert_close(params[0].grad, grads[0] * factor)
    assert clip_norm_factor(0.5, 2.0) == 1.0  # below the limit: untouched


def test_state_moves_between_it_and_pytorchs_adamw(c_kernels):
    """A checkpoint's optimizer state written by either class continues in the other."""
    params, ours = run(NativeAdamW, steps=5)
    reference_params, theirs = run(torch.optim.AdamW, steps=5)
    moved = torch.optim.AdamW(groups(params), lr=3e-2, betas=(0.9, 0.99))
    moved.load_state_dict(ours.state_dict())
    back = NativeAdamW(groups(reference_params), lr=3e-2, betas=(0.9, 0.99))
    back.load_state_dict(theirs.state_dict())
    generator = torch.Generator().manual_seed(9)
    for _ in range(3):
        for p, q in zip(params, reference_params, strict=True):
            p.grad = torch.randn(p.shape, generator=generator)
            q.grad = p.grad.clone()
        clip_and_step(moved, params, 1.0)
        clip_and_step(back, reference_params, 1.0)
    assert_same(params, reference_params)
    assert all(float(s["step"]) == 8 for s in back.state.values())


@pytest.mark.parametrize("path", ["C", "PyTorch's step"])
def test_it_leaves_torch_dynamo_unimported(c_kernels, path):
    """Building, stepping, saving and loading never import torch._dynamo (1.5-1.8 s), on either
    path."""
    code = (
        "import os, sys\n"
        + ("os.environ['RNN2GPT_FASTPATHS'] = 'off'\n" if path != "C" else "")
        + "import torch\n"
        "from torch import nn\n"
        "from rnn2gpt.models import native_ops\n"
        "calls = []\n"
        "real = native_ops.adamw_update\n"
        "native_ops.adamw_update = lambda *a, **k: calls.append(1) or real(*a, **k)\n"
        "native_ops.cpu_capability = lambda: 'AVX2'\n"
        "from rnn2gpt.training.native_adamw import NativeAdamW, clip_and_step\n"
        "p = nn.Parameter(torch.randn(40, 8))\n"
        "o = NativeAdamW([p], lr=0.1, fused=True)\n"
        "p.grad = torch.randn(40, 8)\n"
        "clip_and_step(o, [p], 1.0)\n"
        "o.zero_grad(set_to_none=True)\n"
        "o.load_state_dict(o.state_dict())\n"
        "assert float(o.state[p]['step']) == 1\n"
        "print(len(calls))\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["1" if path == "C" else "0", "False"]


def test_step_hooks_still_run_and_zero_grad_keeps_both_modes():
    """clip_and_step skips PyTorch's step wrapper only where no hook would miss it."""
    params = parameters()
    optimizer = NativeAdamW(groups(params), lr=3e-2)
    seen = []
    optimizer.register_step_pre_hook(lambda *a: seen.append("pre"))
    optimizer.register_step_post_hook(lambda *a: seen.append("post"))
    global_hook = register_optimizer_step_post_hook(lambda *a: seen.append("global"))
    try:
        for p in params:
            p.grad = torch.ones_like(p)
        clip_and_step(optimizer, params, 1.0)
    finally:
        global_hook.remove()
    assert seen == ["pre", "post", "global"]
    optimizer.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in params)
    optimizer.zero_grad()
    assert all(p.grad is None for p in params)
