"""Per-token cost of batch-1 greedy decoding, split into the model's own forward and the rest.

For the 1M-parameter character RNN, LSTM and GRU (2 x 256), the nanoGPT CPU size (4L/128) and
the default Shakespeare GPT (6L/192), random weights (speed only): ms per token of
``generate`` (128 new tokens after a 32-token prompt), ms per token of the bare forward steps
(``model(token, state)`` in a loop, nothing else), at 1 thread and at --threads, and
``transformers`` on the GPTs' weights.

    python benchmarks/decode_overhead.py [--threads 2] [--repeats 5] [--int8] [--only NAME]

``--int8`` quantizes rnn2gpt's linear layers (``transformers`` keeps the fp32 weights); ``--only``
runs the shapes whose name contains NAME.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from generate_speed import GPT_SHAPES, theirs, to_hf  # noqa: E402

from rnn2gpt.config import GenerationConfig, ModelConfig  # noqa: E402
from rnn2gpt.generation import generate  # noqa: E402
from rnn2gpt.hardware import cpu_capability, cpu_model, fastpaths_mode  # noqa: E402
from rnn2gpt.models import build_model  # noqa: E402
from rnn2gpt.models.base import use_inference_layout  # noqa: E402
from rnn2gpt.models.quantized import quantize_model  # noqa: E402

PROMPT, NEW = 32, 128
NANOGPT = next(config for name, config in GPT_SHAPES.items() if name.startswith("a:"))
SHAPES = {
    **{
        f"{arch.upper()} 2x256": ModelConfig(arch=arch, vocab_size=65, n_layer=2, n_embd=256)
        for arch in ("rnn", "lstm", "gru")
    },
    "nanoGPT 4L/128": NANOGPT,
    "default GPT 6L/192": replace(NANOGPT, n_layer=6, n_head=6, n_embd=192),
}


def best_of(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def generate_ms(model, prompt, repeats) -> float:
    config = GenerationConfig(
        temperature=0.0, max_new_tokens=NEW, min_new_tokens=NEW, stop_at_eos=False
    )
    return 1000 * best_of(lambda: generate(model, [prompt], config), repeats) / NEW


def forward_ms(model, prompt, repeats) -> float:
    """The bare forward steps: prefill, then NEW single-token calls carrying the state."""
    x = torch.tensor([prompt])
    capacity = None if model.max_context is None else PROMPT + NEW

    def run():
        with torch.inference_mode():
            state = model.new_state(1, capacity=capacity)
            logits, state = model(x, state)
            token = logits[:, -1].argmax(-1, keepdim=True)
            for _ in range(NEW - 1):
                logits, state = model(token, state)
                token = logits[:, -1].argmax(-1, keepdim=True)

    return 1000 * best_of(run, repeats) / NEW


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-hf", action="store_true")
    parser.add_argument("--int8", action="store_true", help="int8 weights on rnn2gpt's side")
    parser.add_argument("--only", default="", help="run the shapes whose name contains this")
    args = parser.parse_args()
    print(
        f"# {cpu_model()}, ATen {cpu_capability()}, fast paths {fastpaths_mode()}; "
        f"torch {torch.__version__}; batch 1, {PROMPT}-token prompt, {NEW} new tokens"
        f"{'; rnn2gpt int8 (transformers fp32)' if args.int8 else ''}\n"
    )
    print(
        "| model | threads | generate ms/token | tokens/s | bare forward ms/token | "
        "loop overhead | transformers ms/token | rnn2gpt vs transformers |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, config in SHAPES.items():
        if args.only not in name:
            continue
        torch.manual_seed(0)
        model = build_model(config).eval()
        hf = None if args.no_hf or config.arch != "gpt" else to_hf(model)  # the same weights
        model = use_inference_layout(quantize_model(model) if args.int8 else model)
        prompt = torch.randint(0, config.vocab_size, (PROMPT,)).tolist()
        for threads in sorted({1, args.threads}):
            torch.set_num_threads(threads)
            ours = generate_ms(model, prompt, args.repeats)
            bare = forward_ms(model, prompt, args.repeats)
            peer = ratio = "-"
            if hf is not None:
                x = torch.tensor([prompt])
                peer_run = functools.partial(theirs, hf, x)
                peer_ms = 1000 * best_of(peer_run, args.repeats) / NEW
                peer, ratio = f"{peer_ms:.3f}", f"**{peer_ms / ours:.2f}x**"
            print(
                f"| {name} | {threads} | {ours:.3f} | {1000 / ours:,.0f} | {bare:.3f} | "
                f"{ours - bare:+.3f} | {peer} | {ratio} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
