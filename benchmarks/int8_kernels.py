"""The int8 kernels side by side on this machine: per layer shape, and inside a decoding model.

1. Per shape (GPT-2 small's and the default Shakespeare GPT's layers, one row): microseconds per
   product for fp32 ``F.linear`` on the column-major weight and for each int8 kernel of
   ``rnn2gpt.models.quantized`` that runs here, every product over a ring of weight copies
   (weights streamed from memory, as a decode step reads them).
2. In a model: greedy decoding tokens/s of a GPT-2 small shape (random weights, batch 1, 32-token
   prompt, 32 new tokens) in fp32 and in int8 with each kernel forced, then with the timed
   choice; rounds alternate, medians reported.

    python benchmarks/int8_kernels.py [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from generate_speed import GPT_SHAPES  # noqa: E402

from rnn2gpt.config import GenerationConfig  # noqa: E402
from rnn2gpt.generation import generate  # noqa: E402
from rnn2gpt.hardware import cpu_capability, cpu_model, fastpaths_mode  # noqa: E402
from rnn2gpt.models import build_model, quantized  # noqa: E402
from rnn2gpt.models.avx2_int8 import unavailable_reason  # noqa: E402
from rnn2gpt.models.base import use_inference_layout  # noqa: E402
from rnn2gpt.models.quantized import KERNELS, kernel_agrees, quantize_model, quantize_weight  # noqa: E402

SHAPES = [(3072, 768), (768, 3072), (2304, 768), (768, 768), (50257, 768), (576, 192), (768, 192)]
RING_BYTES = 64 << 20


def _median_us(run, ring, repeats: int = 7) -> float:
    run(*ring[0])
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for args in ring:
            run(*args)
        samples.append((time.perf_counter() - start) / len(ring))
    return 1e6 * statistics.median(samples)


def per_shape() -> None:
    print("| out x in | fp32 F.linear | " + " | ".join(f"int8 {k}" for k in KERNELS) + " |")
    print("| --- | ---: |" + " ---: |" * len(KERNELS))
    for out_features, in_features in SHAPES:
        torch.manual_seed(0)
        copies = max(1, min(16, RING_BYTES // (4 * out_features * in_features)))
        weights = [torch.randn(out_features, in_features) for _ in range(copies)]
        x = torch.randn(1, in_features)
        bias = torch.randn(out_features)
        column_major = [(w.t().contiguous().t(),) for w in weights]
        cells = [f"{_median_us(lambda w, x=x, b=bias: F.linear(x, w, b), column_major):,.0f}"]
        int8 = [quantize_weight(w) for w in weights]
        for kernel in KERNELS:
            if kernel == "int8pack" and not quantized.int8pack_available():
                cells.append("-")
                continue
            if not kernel_agrees(kernel, x, *int8[0]):
                cells.append("unavailable")
                continue
            run = quantized._KERNEL_FUNCTIONS[kernel]
            timed = _median_us(lambda q, s, run=run, x=x, b=bias: run(x, q, s, b), int8)
            cells.append(f"{timed:,.0f}")
        print(f"| {out_features} x {in_features} | " + " | ".join(cells) + " |", flush=True)


def in_model(rounds: int) -> None:
    config = next(c for name, c in GPT_SHAPES.items() if name.startswith("b:"))
    torch.manual_seed(0)
    fp32 = build_model(config).eval()
    int8 = quantize_model(copy.deepcopy(fp32))  # the same weights, quantized
    fp32 = use_inference_layout(fp32)
    prompt = torch.randint(0, config.vocab_size, (32,)).tolist()
    settings = GenerationConfig(
        temperature=0.0, max_new_tokens=32, min_new_tokens=32, stop_at_eos=False
    )
    chosen = quantized.choose_int8_kernel
    x = torch.randn(1, 768)
    runnable = [
        k
        for k in KERNELS
        if (k != "int8pack" or quantized.int8pack_available())
        and kernel_agrees(k, x, *quantize_weight(torch.randn(64, 768)))
    ]
    runs = [("fp32", fp32, None), ("int8, timed choice", int8, None)] + [
        (f"int8, {k} forced", int8, k) for k in runnable
    ]

    def tokens_per_s(model, forced) -> float:
        quantized.choose_int8_kernel = chosen if forced is None else (lambda *a: forced)
        try:
            start = time.perf_counter()
            generate(model, [prompt], settings)
            return settings.max_new_tokens / (time.perf_counter() - start)
        finally:
            quantized.choose_int8_kernel = chosen

    for _, model, forced in runs:  # warm-up: compiles, timed choices
        tokens_per_s(model, forced)
    results: dict[str, list[float]] = {label: [] for label, _, _ in runs}
    for _ in range(rounds):
        for label, model, forced in runs:
            results[label].append(tokens_per_s(model, forced))
    print("\n| GPT-2 small shape, batch 1 | tokens/s (median) | runs |")
    print("| --- | ---: | --- |")
    for label, values in results.items():
        print(
            f"| {label} | {statistics.median(values):.1f} | "
            + ", ".join(f"{v:.1f}" for v in values)
            + " |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reason = unavailable_reason()
    print(
        f"# {cpu_model()}, ATen {cpu_capability()}, fast paths {fastpaths_mode()}, "
        f"{args.threads} threads; AVX2 int8 kernel: {reason or 'built'}\n"
    )
    per_shape()
    in_model(args.rounds)


if __name__ == "__main__":
    main()
