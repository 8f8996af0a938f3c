"""The GELU and causal attention of GPT training in C (``models/native_ops.py``) against PyTorch's
kernels, in one process, alternating so that the host's drift hits both alike.

Two measurements, for the nanoGPT CPU configuration (4L/4H/128, batch 12 x 64) and the
``shakespeare-char-gpt`` preset (6L/6H/192, batch 16 x 128), fp32:

- ``kernels``: one layer's attention (forward + backward, PyTorch's side including the copies of
  q, k, v out of the packed projection and of y back) and GELU (forward + backward), median
  microseconds per call;
- ``steps``: whole training steps (forward, backward, clipping, fused AdamW), alternating blocks
  of steps with ``RNN2GPT_FASTPATHS`` auto and off (which is read on every call), median ms per
  step and the median of the per-round ratios.

With ``--ablate``, where the nanoGPT-size step (no biases, as nanoGPT) goes: whole steps alternating
in one process with one component at a time replaced by a copy of its input (attention: a copy of
v; GELU and LayerNorm: ``x * 1.0``) or skipped (clipping, AdamW), and what the step saves without
it (median of the per-round differences). The results are wrong, the times are not. It runs the
GPT's modules (the parts are replaced there), not the blocks function.

With ``--blocks``, the GPT's blocks as one autograd function (``models/native_blocks.py``) against
its modules running the same C kernels, whole steps alternating in one process, both shapes
without biases.

With ``--optimizer``, whole steps (the blocks function, no biases) alternating the project's
AdamW (``training/native_adamw.py``: clipping and update as two C passes) with PyTorch's
``clip_grad_norm_`` and fused AdamW. (The blocks are C calls since the seventh part of issue 14 in
``benchmarks/RESULTS.md``; their LayerNorms can no longer be swapped for ATen's, and the
``--layernorm`` comparison of the sixth part is gone with the Python blocks.)

With ``--products``, the blocks' matrix products (``kernels/avx2.c``): whole steps (the blocks
function, no biases) alternating ``native_ops.use_products`` between our AVX2 product, the BLAS
sgemm ``torch.mm`` calls (MKL) and the timed choice of ``native_blocks``. (Timed one by one from Python, a
product of ours pays 10-30 us of ctypes and argument handling that ``torch.mm`` does not, a
tenth of the smaller ones: the products alone were compared from C, see benchmarks/RESULTS.md.)

With ``--fused``, whole steps (no biases) alternating the trainer's autograd step (the loss with
targets, ``backward()``, ``clip_and_step``) with the fused step of ``training/fused_step.py`` (the
same C calls without autograd, over buffers made once), each on its own copy of the model.

With ``--floor``, what PyTorch's own kernels cannot go below (run it under the AVX2 emulation to
see the emulated side of ``train_vs_peers.py nanogpt``, where our C kernels are off): the step's
matrix products alone (each linear layer's forward, input gradient and weight gradient, ``torch.mm``
on fresh tensors, no biases) and its causal attention alone (``scaled_dot_product_attention``
forward and backward), median milliseconds per step; beside them the GELU's forward and backward,
and the whole step as the trainer runs it with the fast paths off (the GPT's modules, autograd,
clipping and PyTorch's fused AdamW). Run with ``ATEN_CPU_CAPABILITY=avx2`` and friends, it bounds
the emulated whole run from below: no arrangement of PyTorch's operations does less work.

With ``--trainer``, also the real thing: ``rnn2gpt train`` in nanoGPT's configuration (the
settings of ``train_vs_peers.py nanogpt``) in this process for ``--trainer-steps`` steps, with a
thread flipping ``RNN2GPT_FASTPATHS`` between auto and off every 1.5 s; each step is timed and
counted under the setting it ran under (steps during which it flipped are dropped), and the first
20 steps are left out. Two whole runs, one after the other, would compare the host's drift more
than the kernels.

    python benchmarks/train_kernels.py [--rounds 20] [--steps 4] [--trainer] [--trainer-steps 1200]
    python benchmarks/train_kernels.py --ablate [--rounds 15]
    python benchmarks/train_kernels.py --blocks [--rounds 20]
    python benchmarks/train_kernels.py --optimizer [--rounds 20]
    python benchmarks/train_kernels.py --products [--rounds 20]
    python benchmarks/train_kernels.py --fused [--rounds 20]
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        python benchmarks/train_kernels.py --floor

Benchmark one job at a time: two on two cores slow each other far more than 2x.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from rnn2gpt.config import ModelConfig
from rnn2gpt.hardware import cpu_capability, cpu_model
from rnn2gpt.models import build_model, native_blocks, native_ops
from rnn2gpt.models.base import fixed_structure, next_token_loss
from rnn2gpt.training.fused_step import FusedStep
from rnn2gpt.training.memory import hold_freed_memory
from rnn2gpt.training.native_adamw import NativeAdamW, clip_and_step

SHAPES = {
    "nanoGPT 4L/4H/128, batch 12 x 64": (dict(n_layer=4, n_head=4, n_embd=128), 12, 64),
    "preset 6L/6H/192, batch 16 x 128": (dict(n_layer=6, n_head=6, n_embd=192), 16, 128),
}
VOCAB = 65


def median_us(function, calls: int = 30) -> float:
    for _ in range(3):
        function()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def pytorch_attention(qkv: torch.Tensor, n_head: int) -> torch.Tensor:
    """The GPT's PyTorch path: one copy of q, k, v out of the packed projection, the flash
    kernel, and y re-assembled (models/gpt.py)."""
    batch, steps, width3 = qkv.shape
    width = width3 // 3
    q, k, v = (
        qkv.view(batch, steps, 3, n_head, width // n_head)
        .permute(2, 0, 3, 1, 4)
        .contiguous()
        .unbind(0)
    )
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return y.transpose(1, 2).reshape(batch, steps, width)


def kernels(shape: dict, batch: int, steps: int) -> dict[str, float]:
    width, heads = shape["n_embd"], shape["n_head"]
    qkv = torch.randn(batch, steps, 3 * width, requires_grad=True)
    dy = torch.randn(batch, steps, width)
    x = torch.randn(batch, steps, 4 * width, requires_grad=True)
    dx = torch.randn(batch, steps, 4 * width)

    def run(function, tensor, grad, *args):
        def once():
            function(tensor, *args).backward(grad)
            tensor.grad = None

        return once

    cases = {
        "attention C": run(native_ops.causal_attention, qkv, dy, heads),
        "attention PyTorch": run(pytorch_attention, qkv, dy, heads),
        "GELU C": run(native_ops.gelu, x, dx),
        "GELU PyTorch": run(F.gelu, x, dx),
    }
    return {name: round(median_us(case)) for name, case in cases.items()}


def fresh_gpt(shape: dict, steps: int, bias: bool = True, optimizer_class=None):
    """A fresh GPT (seed 0) in training mode and its optimizer: the trainer's NativeAdamW, or
    ``optimizer_class``."""
    torch.manual_seed(0)
    config = ModelConfig(
        arch="gpt", vocab_size=VOCAB, block_size=steps, dropout=0.0, bias=bias, **shape
    )
    model = build_model(config).train()
    optimizer = (optimizer_class or NativeAdamW)(
        model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1, fused=True
    )
    return model, optimizer


def training_step(shape: dict, batch: int, steps: int, bias: bool = True, optimizer_class=None):
    """One whole training step of a fresh GPT (forward, backward, clipping, AdamW: the
    trainer's NativeAdamW, or ``optimizer_class``) on a fixed random batch, as a closure."""
    model, optimizer = fresh_gpt(shape, steps, bias, optimizer_class)
    tokens = torch.randint(0, VOCAB, (batch, steps + 1))

    def step() -> None:
        logits, _ = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
        loss.backward()
        clip_and_step(optimizer, model.parameters(), 1.0)
        optimizer.zero_grad(set_to_none=True)

    return step


def alternate(step, modes: dict, rounds: int, per_round: int) -> dict[str, list[float]]:
    """ms per step under each mode (a name -> a function that switches to it), in blocks of
    ``per_round`` steps alternating round by round; the first step after a switch is dropped."""
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(3):
        step()
    for _ in range(rounds):
        for mode, switch in modes.items():
            switch()
            step()
            start = time.perf_counter()
            for _ in range(per_round):
                step()
            times[mode].append((time.perf_counter() - start) / per_round * 1e3)
    return times


def steps_side_by_side(shape: dict, batch: int, steps: int, rounds: int, per_round: int):
    """C kernels (fast paths auto, read on every call) against PyTorch's (off)."""
    modes = {
        mode: functools.partial(os.environ.__setitem__, "RNN2GPT_FASTPATHS", mode)
        for mode in ("auto", "off")
    }
    times = alternate(training_step(shape, batch, steps), modes, rounds, per_round)
    ratios = [off / auto for auto, off in zip(times["auto"], times["off"])]
    return {
        "C ms/step": round(statistics.median(times["auto"]), 2),
        "PyTorch ms/step": round(statistics.median(times["off"]), 2),
        "speedup": round(statistics.median(ratios), 3),
    }


def blocks_side_by_side(shape: dict, batch: int, steps: int, rounds: int, per_round: int):
    """The blocks as one autograd function (models/native_blocks.py) against the GPT's modules
    running the same C kernels, both without biases (as nanoGPT)."""
    real = native_blocks.plain_blocks
    chosen = {"blocks": True}

    def plain_blocks(*args):
        return real(*args) if chosen["blocks"] else None

    modes = {
        mode: functools.partial(chosen.__setitem__, "blocks", mode == "blocks")
        for mode in ("blocks", "modules")
    }
    native_blocks.plain_blocks = plain_blocks
    try:
        times = alternate(training_step(shape, batch, steps, bias=False), modes, rounds, per_round)
    finally:
        native_blocks.plain_blocks = real
    ratios = [m / b for b, m in zip(times["blocks"], times["modules"])]
    return {
        "blocks ms/step": round(statistics.median(times["blocks"]), 2),
        "modules ms/step": round(statistics.median(times["modules"]), 2),
        "blocks speedup": round(statistics.median(ratios), 3),
    }


def ablation(rounds: int, per_round: int) -> dict[str, float]:
    torch.manual_seed(0)
    shape, batch, steps = SHAPES["nanoGPT 4L/4H/128, batch 12 x 64"]
    config = ModelConfig(
        arch="gpt", vocab_size=VOCAB, block_size=steps, dropout=0.0, bias=False, **shape
    )
    model = build_model(config).train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1, fused=True
    )
    tokens = torch.randint(0, VOCAB, (batch, steps + 1))
    real = {
        "gelu": native_ops.gelu,
        "attention": native_ops.causal_attention,
        "layernorm": torch.nn.LayerNorm.forward,
    }
    left_out: dict[str, str | None] = {"part": None}

    def step() -> None:
        logits, _ = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
        loss.backward()
        if left_out["part"] != "clipping":
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if left_out["part"] != "AdamW":
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def leave_out(part: str | None) -> None:
        left_out["part"] = part
        native_ops.gelu = (lambda x: x * 1.0) if part == "GELU" else real["gelu"]
        native_ops.causal_attention = (
            (lambda qkv, heads: qkv[..., 2 * qkv.shape[-1] // 3 :] * 1.0)
            if part == "attention"
            else real["attention"]
        )
        torch.nn.LayerNorm.forward = (
            (lambda self, x: x * 1.0) if part == "LayerNorm" else real["layernorm"]
        )

    parts = [None, "attention", "AdamW", "GELU", "LayerNorm", "clipping"]
    times: dict[str | None, list[float]] = {part: [] for part in parts}
    real_plain_blocks = native_blocks.plain_blocks
    native_blocks.plain_blocks = lambda *args: None  # the parts are replaced in the modules
    try:
        for _ in range(3):
            step()
        for _ in range(rounds):
            for part in parts:
                leave_out(part)
                step()  # the first step after a switch is not counted
                start = time.perf_counter()
                for _ in range(per_round):
                    step()
                times[part].append((time.perf_counter() - start) / per_round * 1e3)
    finally:
        leave_out(None)
        native_blocks.plain_blocks = real_plain_blocks
    result = {"whole step ms": round(statistics.median(times[None]), 2)}
    for part in parts[1:]:
        saved = [whole - without for whole, without in zip(times[None], times[part])]
        result[f"saved without {part} ms"] = round(statistics.median(saved), 2)
    return result


def optimizer_side_by_side(shape: dict, batch: int, steps: int, rounds: int, per_round: int):
    """Whole steps of two copies of the GPT (the blocks function, no biases), one trained by
    NativeAdamW, the other by PyTorch's fused AdamW after ``clip_grad_norm_``, alternating."""
    ours = training_step(shape, batch, steps, bias=False)
    theirs = training_step(shape, batch, steps, bias=False, optimizer_class=torch.optim.AdamW)
    return two_steps({"C AdamW": ours, "PyTorch AdamW": theirs}, rounds, per_round)


def two_steps(steps: dict, rounds: int, per_round: int) -> dict[str, float]:
    """Two step functions (name -> step), alternating: each one's ms per step and the first's
    speedup over the second (the median of the per-round ratios)."""
    chosen = {"step": next(iter(steps.values()))}
    modes = {
        name: functools.partial(chosen.__setitem__, "step", step) for name, step in steps.items()
    }
    times = alternate(lambda: chosen["step"](), modes, rounds, per_round)
    (first, ours), (second, theirs) = times.items()
    row = {f"{name} ms/step": round(statistics.median(t), 2) for name, t in times.items()}
    row["speedup"] = round(statistics.median(t / o for o, t in zip(ours, theirs)), 3)
    return row


def products_side_by_side(shape: dict, batch: int, steps: int, rounds: int, per_round: int):
    """Whole steps (the blocks function, no biases) under each choice of the blocks' products:
    ours, PyTorch's, and timed (the first rounds of that mode run its trial)."""
    native_blocks.forget_product_choices()
    modes = {
        which: functools.partial(native_ops.use_products, which) for which in native_ops.PRODUCTS
    }
    times = alternate(training_step(shape, batch, steps, bias=False), modes, rounds, per_round)
    timed, ours, blas = (times[which] for which in native_ops.PRODUCTS)
    native_ops.use_products(native_ops.PRODUCTS[0])
    return {
        "steps ms (ours / PyTorch's / timed)": [
            round(statistics.median(t), 2) for t in (ours, blas, timed)
        ],
        "step speedup, ours over PyTorch's": round(
            statistics.median(b / o for o, b in zip(ours, blas, strict=True)), 3
        ),
        "step speedup, timed over PyTorch's": round(
            statistics.median(b / t for t, b in zip(timed, blas, strict=True)), 3
        ),
        "chosen": list(native_blocks.product_choices().values()),
    }


def fused_side_by_side(shape: dict, batch: int, steps: int, rounds: int, per_round: int):
    """Whole steps of two copies of the GPT (no biases), alternating: the trainer's autograd step
    (the loss with targets, ``backward()``, ``clip_and_step``) against the fused step without
    autograd (``training/fused_step.py``)."""
    tokens = torch.randint(0, VOCAB, (batch, steps + 1))
    batch_xy = (tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous())
    model, optimizer = fresh_gpt(shape, steps, bias=False)

    def autograd_step() -> None:
        loss, _ = next_token_loss(model, *batch_xy)
        loss.backward()
        clip_and_step(optimizer, model.parameters(), 1.0)
        optimizer.zero_grad(set_to_none=True)

    fused_model, fused_optimizer = fresh_gpt(shape, steps, bias=False)
    fused, compiler = (
        FusedStep(fused_model, fused_optimizer, 1.0),
        SimpleNamespace(module=fused_model),
    )

    def fused_step() -> None:
        if fused(batch_xy, compiler) is None:
            raise SystemExit("the fused step does not apply here")

    with fixed_structure(model):  # as the trainer's loop holds it
        return two_steps({"fused": fused_step, "autograd": autograd_step}, rounds, per_round)


def trainer_side_by_side(steps: int) -> dict[str, float]:
    import tempfile
    import threading

    from train_vs_peers import nanogpt_settings

    from rnn2gpt.cli import main as cli
    from rnn2gpt.training import trainer

    timed: list[tuple[str, float]] = []
    real_step = trainer.Trainer._step

    def step(self):
        mode, start = os.environ["RNN2GPT_FASTPATHS"], time.perf_counter()
        loss = real_step(self)
        loss.item()  # the step's work is done (it is on the CPU anyway)
        if os.environ["RNN2GPT_FASTPATHS"] == mode:
            timed.append((mode, time.perf_counter() - start))
        return loss

    done = threading.Event()

    def flip() -> None:
        while not done.wait(1.5):
            os.environ["RNN2GPT_FASTPATHS"] = (
                "off" if os.environ["RNN2GPT_FASTPATHS"] == "auto" else "auto"
            )

    settings = [s for s in nanogpt_settings() if not s.startswith("train.max_steps")]
    settings.append(f"train.max_steps={steps}")
    trainer.Trainer._step = step
    flipper = threading.Thread(target=flip, daemon=True)
    try:
        os.environ["RNN2GPT_FASTPATHS"] = "auto"
        flipper.start()
        with tempfile.TemporaryDirectory() as out:
            arguments = ["train", "--preset", "shakespeare-char-gpt", "--out", f"{out}/run"]
            cli([*arguments, *(word for s in settings for word in ("--set", s))])
    finally:
        done.set()
        flipper.join()
        trainer.Trainer._step = real_step
        os.environ["RNN2GPT_FASTPATHS"] = "auto"
    times = {m: [t * 1e3 for mode, t in timed[20:] if mode == m] for m in ("auto", "off")}
    return {
        "trainer C ms/step": round(statistics.median(times["auto"]), 2),
        "trainer PyTorch ms/step": round(statistics.median(times["off"]), 2),
        "trainer steps (C, PyTorch)": [len(times["auto"]), len(times["off"])],
        "trainer speedup": round(
            statistics.median(times["off"]) / statistics.median(times["auto"]), 3
        ),
    }


def pytorch_floor(shape: dict, batch: int, steps: int) -> dict[str, float]:
    """Milliseconds per training step of the step's matrix products alone, of its attention
    alone (both PyTorch's kernels, forward and backward), of its GELU, and of the whole step with
    the fast paths off (median over 30 calls each)."""
    rows, width, layers, heads = batch * steps, shape["n_embd"], shape["n_layer"], shape["n_head"]
    # (inputs, outputs, how many) of every linear layer: qkv, attention out, MLP in, MLP out, head
    linears = [(width, 3 * width, layers), (width, width, layers), (width, 4 * width, layers)]
    linears += [(4 * width, width, layers), (width, VOCAB, 1)]
    products = 0.0
    for fan_in, fan_out, count in linears:
        x, w = torch.randn(rows, fan_in), torch.randn(fan_out, fan_in)
        d_y = torch.randn(rows, fan_out)
        forward = median_us(lambda: torch.mm(x, w.t()))  # noqa: B023 (called here, not later)
        d_x = median_us(lambda: torch.mm(d_y, w))  # noqa: B023
        d_w = median_us(lambda: torch.mm(d_y.t(), x))  # noqa: B023
        products += count * (forward + d_x + d_w) / 1e3
    q, k, v = (
        torch.randn(batch, heads, steps, width // heads, requires_grad=True) for _ in range(3)
    )
    d_y = torch.randn(batch, heads, steps, width // heads)

    def attention() -> None:
        F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(d_y)

    attend = layers * median_us(attention) / 1e3
    h = torch.randn(rows, 4 * width, requires_grad=True)
    d_h = torch.randn(rows, 4 * width)
    gelu = layers * median_us(lambda: F.gelu(h).backward(d_h)) / 1e3
    os.environ["RNN2GPT_FASTPATHS"] = "off"
    try:
        whole = median_us(training_step(shape, batch, steps, bias=False)) / 1e3
    finally:
        os.environ["RNN2GPT_FASTPATHS"] = "auto"
    return {
        "products ms/step": round(products, 2),
        "attention ms/step": round(attend, 2),
        "floor ms/step": round(products + attend, 2),
        "GELU ms/step": round(gelu, 2),
        "whole step, fast paths off, ms": round(whole, 2),
        "floor s per 2,000 steps": round(2 * (products + attend), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=4, help="steps per round and mode")
    parser.add_argument("--trainer", action="store_true", help="also time rnn2gpt train itself")
    parser.add_argument("--trainer-steps", type=int, default=1200)
    parser.add_argument("--ablate", action="store_true", help="where the step goes, instead")
    parser.add_argument(
        "--blocks", action="store_true", help="the blocks function against the modules, instead"
    )
    parser.add_argument("--optimizer", action="store_true", help="C AdamW against PyTorch's")
    parser.add_argument("--products", action="store_true", help="our products against MKL's")
    parser.add_argument("--fused", action="store_true", help="the fused step against autograd's")
    parser.add_argument(
        "--floor", action="store_true", help="PyTorch's products and attention alone"
    )
    args = parser.parse_args()
    os.environ["RNN2GPT_FASTPATHS"] = "auto"
    hold_freed_memory()  # as the trainer does on a CPU: steps reuse freed memory
    if args.floor:  # PyTorch's kernels only: it needs none of ours
        print(f"{cpu_model()}, PyTorch at {cpu_capability()}, {torch.get_num_threads()} threads")
        for name, (shape, batch, steps) in SHAPES.items():
            print(json.dumps({"shape": name, **pytorch_floor(shape, batch, steps)}))
        return
    if native_ops.unavailable_reason() is not None:
        raise SystemExit(f"the C kernels do not run here: {native_ops.unavailable_reason()}")
    print(f"{cpu_model()}, PyTorch at {cpu_capability()}, {torch.get_num_threads()} threads, fp32")
    if args.ablate:
        print(json.dumps(ablation(args.rounds, args.steps)))
        return
    chosen = {
        "blocks": blocks_side_by_side,
        "optimizer": optimizer_side_by_side,
        "products": products_side_by_side,
        "fused": fused_side_by_side,
    }
    for flag, comparison in chosen.items():
        if getattr(args, flag):
            for name, (shape, batch, steps) in SHAPES.items():
                row = comparison(shape, batch, steps, args.rounds, args.steps)
                print(json.dumps({"shape": name, **row}))
            return
    for name, (shape, batch, steps) in SHAPES.items():
        row = {"shape": name, **kernels(shape, batch, steps)}
        row.update(steps_side_by_side(shape, batch, steps, args.rounds, args.steps))
        print(json.dumps(row))
    if args.trainer:
        print(
            json.dumps(
                {
                    "shape": "rnn2gpt train, nanoGPT configuration",
                    **trainer_side_by_side(args.trainer_steps),
                }
            )
        )


if __name__ == "__main__":
    main()
