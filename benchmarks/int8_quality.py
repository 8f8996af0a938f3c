"""int8 weights: the perplexity delta on held-out text, and the file size, for trained runs.

For each run (``--runs``), the held-out text (the last 10% of Tiny Shakespeare, or ``--text``)
is scored with the checkpoint as trained (fp32) and with int8 weights (``rnn2gpt.load(...,
quantize="int8")``), the same windows on both sides; and ``rnn2gpt quantize`` writes the int8
checkpoint, whose ``model.safetensors`` is compared with the original's.

    python benchmarks/int8_quality.py --runs runs/shakespeare-char-gpt runs/shakespeare-bpe-gpt
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
import torch

from rnn2gpt import load
from rnn2gpt.api import quantize_checkpoint
from rnn2gpt.checkpoint import resolve_checkpoint_dir
from rnn2gpt.data import bundled_corpus_path, read_text
from rnn2gpt.evaluation.metrics import evaluate_lm


def held_out() -> str:
    text = read_text(bundled_corpus_path())
    return text[int(0.9 * len(text)) :]


def score(gen, text: str) -> float:
    ids = np.asarray(gen.tokenizer.encode(text), dtype=np.int64)
    context = gen.model.max_context or 256
    stream = gen.model.max_context is None
    with torch.inference_mode():
        result = evaluate_lm(gen.model, ids, batch_size=8, seq_len=min(context, 256), stream=stream)
    return result["loss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True)
    parser.add_argument("--text", help="held-out text (default: Tiny Shakespeare's last 10%)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    text = read_text(args.text) if args.text else held_out()
    print(
        "| run | tokenizer | fp32 perplexity | int8 perplexity | delta | model file fp32 -> int8 |"
    )
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for run in args.runs:
        plain = load(run)
        int8 = load(run, quantize="int8")
        fp32_ppl = math.exp(score(plain, text))
        int8_ppl = math.exp(score(int8, text))
        with tempfile.TemporaryDirectory() as tmp:
            out = quantize_checkpoint(run, Path(tmp) / "q")
            before = (resolve_checkpoint_dir(run) / "model.safetensors").stat().st_size
            after = (out / "model.safetensors").stat().st_size
        print(
            f"| {Path(run).name} | {plain.tokenizer.kind} | {fp32_ppl:.3f} | {int8_ppl:.3f} | "
            f"{100 * (int8_ppl / fp32_ppl - 1):+.2f}% | {before / 2**20:.1f} MiB -> "
            f"{after / 2**20:.1f} MiB ({after / before:.2f}) |",
            flush=True,
        )


if __name__ == "__main__":
    main()
