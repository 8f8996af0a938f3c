"""The GPT decoding forward in C (``models/native_step.py``) against the plan's PyTorch path, in
one process, alternating call by call so that the host's drift hits both alike.

For each GPT shape (random weights: speed only), rows and tokens per row: the median ms per call
of each path over ``--calls`` alternating pairs, each call continuing a 32-token prompt, and the
thread count the timed choice picks for C.

    python benchmarks/gpt_step.py [--threads 2] [--calls 200] [--int8]

Benchmark one job at a time: two on two cores slow each other far more than 2x.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch

from rnn2gpt.config import ModelConfig
from rnn2gpt.hardware import cpu_capability, cpu_model, fastpaths_mode
from rnn2gpt.models import build_model, decode_plan
from rnn2gpt.models.base import use_inference_layout
from rnn2gpt.models.native_step import unavailable_reason
from rnn2gpt.models.quantized import quantize_model

NANOGPT = ModelConfig(
    arch="gpt", vocab_size=65, n_layer=4, n_head=4, n_embd=128, block_size=256, dropout=0.0
)
SHAPES = {
    "nanoGPT 4L/128": NANOGPT,
    "default GPT 6L/192": replace(NANOGPT, n_layer=6, n_head=6, n_embd=192),
    "6L/384 (speculation target)": replace(NANOGPT, n_layer=6, n_head=6, n_embd=384),
}
CASES = ((1, 1), (1, 5), (4, 1), (8, 1))  # (rows, tokens per row): a step, a 4-draft check, batches
PROMPT = 32


def time_paths(model, rows: int, steps: int, calls: int) -> tuple[float, float, int]:
    """(C ms, PyTorch ms, the timed choice: C's threads or 0 for PyTorch): medians over
    alternating calls (C runs on the chosen threads, or on all where PyTorch was chosen)."""
    prompt = torch.zeros(rows, PROMPT, dtype=torch.long)
    tokens = torch.ones(rows, steps, dtype=torch.long)
    with torch.inference_mode():
        state = model.new_state(rows)
        model(prompt, state)
        plan = model._decode_plan
        choice = decode_plan.native_threads(plan, rows, steps)
        threads = choice or torch.get_num_threads()
        pytorch_plan = plan._replace(native=None)
        times: dict[str, list[float]] = {"C": [], "PyTorch": []}
        for _ in range(calls):
            for name in times:
                state.length = PROMPT  # every call continues the same prompt
                start = time.perf_counter()
                if name == "C":
                    plan.native(tokens, state, threads)
                else:
                    decode_plan.planned_forward(pytorch_plan, tokens, state)
                times[name].append(time.perf_counter() - start)
    return statistics.median(times["C"]) * 1e3, statistics.median(times["PyTorch"]) * 1e3, choice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--int8", action="store_true", help="int8 weights (--quantize int8)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reason = unavailable_reason()
    if reason is not None:
        raise SystemExit(f"the C step cannot run here: {reason}")
    print(
        f"# {cpu_model()}, ATen {cpu_capability()}, fast paths {fastpaths_mode()}; "
        f"torch {torch.__version__}; {args.threads} threads; "
        f"{'int8' if args.int8 else 'fp32'} weights; medians of {args.calls} alternating calls\n"
    )
    print("| model | rows x tokens | PyTorch ms | C ms | speedup | C tokens/s | timed choice |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for name, config in SHAPES.items():
        torch.manual_seed(0)
        model = build_model(config).eval()
        model = quantize_model(model) if args.int8 else use_inference_layout(model)
        for rows, steps in CASES:
            c_ms, torch_ms, choice = time_paths(model, rows, steps, args.calls)
            chosen = f"C on {choice} thread(s)" if choice else "PyTorch"
            print(
                f"| {name} | {rows} x {steps} | {torch_ms:.3f} | {c_ms:.3f} | "
                f"{torch_ms / c_ms:.2f}x | {rows * steps * 1e3 / c_ms:,.0f} | {chosen} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
