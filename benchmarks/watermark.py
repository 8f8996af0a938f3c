"""Watermark: detection power, false positives on human text, quality cost and speed cost; and the
memorization index on a 100 MB corpus.

For each trained run given (``--runs``; e.g. the Shakespeare char GPT, char LSTM and BPE GPT
presets), in one process, one job at a time:

- **true-positive rate** at z >= 4: ``--prompts`` held-out Tiny Shakespeare snippets (the last
  10%) as prompts, ``--max-tokens`` tokens sampled (temperature 1, seeded, in batches of 8) with
  the watermark at each delta, the text cut to its first 50/100/200/400/800 tokens, detected from the
  *text* with ``rnn2gpt.detect_watermark`` (re-encoded with the checkpoint's tokenizer, repeated
  (context, token) pairs scored once: what a user would run);
- **false-positive rate** at z >= 4 on human text: windows of 200 tokens of held-out Shakespeare
  and of Penn Treebank test sentences (a corpus none of the models saw);
- **quality cost**: the perplexity of the samples under the same model without the watermark;
- **speed cost** (first run only: the default Shakespeare GPT): decode tokens/s at batch 1 and 8
  with and without the watermark (delta 2), median of alternating rounds.

Then ``--memorization-mb`` MB of training text (Tiny Shakespeare repeated, so every k-gram is
common: the hard case) is indexed with ``CopyIndex`` and a sample with a planted 50-token copy is
looked up.

    python benchmarks/watermark.py --runs runs/char-gpt runs/char-lstm runs/bpe-gpt \
        --data ../shared/data
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from rnn2gpt import detect_watermark, load
from rnn2gpt.analysis.token_view import score_text
from rnn2gpt.data import bundled_corpus_path, read_text
from rnn2gpt.evaluation.memorization import CopyIndex
from rnn2gpt.generation.watermark import Watermark

KEY = "benchmark key"
CONTEXT = {"width": 1}  # --context: previous tokens that seed the green list (generate and detect)
LENGTHS = (50, 100, 200, 400, 800)
DELTAS = (1.0, 2.0, 4.0)


def held_out_shakespeare() -> str:
    text = read_text(bundled_corpus_path())
    return text[int(0.9 * len(text)) :]


def snippets(text: str, count: int, chars: int, seed: int) -> list[str]:
    """``count`` snippets of ``chars`` characters that start at a line start, fixed by seed."""
    rng = np.random.default_rng(seed)
    starts = [i + 1 for i, c in enumerate(text[:-chars]) if c == "\n"]
    return [text[s : s + chars] for s in rng.choice(starts, count, replace=False)]


def generate_marked(gen, prompts: list[str], tokens: int, delta: float | None) -> list[list[int]]:
    settings = dict(max_new_tokens=tokens, temperature=1.0, top_k=0, top_p=1.0, stop_at_eos=False)
    if delta is not None:
        settings.update(watermark=KEY, watermark_delta=delta, watermark_context=CONTEXT["width"])
    out = []
    batch = 8  # batched by 8 for speed, one seed per batch
    for start in range(0, len(prompts), batch):
        part = prompts[start : start + batch]
        results = gen.complete(part, seed=1000 + start, **settings)
        out += [per_prompt[0].token_ids for per_prompt in results]
    return out


def true_positive_rates(gen, prompts, ids_per_prompt) -> dict[int, float]:
    rates = {}
    for length in LENGTHS:
        hits = 0
        for prompt, ids in zip(prompts, ids_per_prompt, strict=True):
            text = gen.tokenizer.decode(ids[:length])
            verdict = detect_watermark(
                gen.tokenizer, text, KEY, prompt=prompt, context=CONTEXT["width"]
            )
            hits += verdict.detection.watermarked
        rates[length] = hits / len(prompts)
    return rates


def false_positive_rate(gen, text: str, windows: int, tokens: int = 200) -> tuple[float, float]:
    """(rate of z >= 4, largest z) over ``windows`` windows of ``tokens`` tokens of ``text``."""
    verdict = detect_watermark(gen.tokenizer, text, KEY)  # drops out-of-vocabulary characters
    ids = gen.tokenizer.encode("".join(verdict.pieces)) if verdict.dropped else None
    if ids is None:
        ids = gen.tokenizer.encode(text)
    rng = np.random.default_rng(0)
    starts = rng.choice(len(ids) - tokens, windows, replace=False)
    zs = []
    for s in starts:
        window = gen.tokenizer.decode(ids[s : s + tokens])
        found = detect_watermark(gen.tokenizer, window, KEY, context=CONTEXT["width"])
        zs.append(found.detection.z_score)
    return sum(z >= 4 for z in zs) / len(zs), max(zs)


def perplexity(gen, prompts, ids_per_prompt) -> float:
    """exp(mean NLL) of the generated tokens under the model without the watermark."""
    total = count = 0.0
    for prompt, ids in zip(prompts, ids_per_prompt, strict=True):
        scores = score_text(gen.model, gen.tokenizer, prompt + gen.tokenizer.decode(ids))
        prompt_len = len(gen.tokenizer.encode(prompt))
        for s in scores[prompt_len:]:
            total += -math.log(max(s.prob, 1e-12))
            count += 1
    return math.exp(total / count)


class ProcessorClock:
    """Time spent inside Watermark.__call__ (patched in for the measurement only)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.original = Watermark.__call__
        clock = self

        def timed(processor, input_ids, scores):
            start = time.perf_counter()
            out = clock.original(processor, input_ids, scores)
            clock.seconds += time.perf_counter() - start
            return out

        Watermark.__call__ = timed

    def close(self) -> None:
        Watermark.__call__ = self.original


def decode_speed(gen, rounds: int = 5, tokens: int = 200) -> dict[str, float]:
    """Median tokens/s per (batch, plain | watermark), and per batch the share of the watermarked
    runs' wall time spent inside the processor (``share, batch B``): the direct measure of its
    cost, which the noise of a shared host does not blur the way a difference of two rates does."""
    prompt = "ROMEO:\n"
    timings: dict[str, list[float]] = {}
    shares: dict[str, list[float]] = {}
    for _ in range(rounds):
        for batch in (1, 8):
            for marked in (False, True):
                settings = dict(max_new_tokens=tokens, temperature=1.0, stop_at_eos=False, seed=1)
                if marked:
                    settings.update(watermark=KEY)
                clock = ProcessorClock()
                try:
                    start = time.perf_counter()
                    gen.complete([prompt] * batch, **settings)
                    elapsed = time.perf_counter() - start
                finally:
                    clock.close()
                label = f"batch {batch}, {'watermark' if marked else 'plain'}"
                timings.setdefault(label, []).append(batch * tokens / elapsed)
                if marked:
                    shares.setdefault(f"share, batch {batch}", []).append(clock.seconds / elapsed)
    return {label: statistics.median(v) for label, v in {**timings, **shares}.items()}


def report_speed(gen, name: str, rounds: int = 5) -> None:
    speed = decode_speed(gen, rounds)
    for batch in (1, 8):
        plain_rate = speed[f"batch {batch}, plain"]
        marked_rate = speed[f"batch {batch}, watermark"]
        print(
            f"{name}: decode batch {batch}: plain {plain_rate:.0f} tok/s, watermark "
            f"{marked_rate:.0f} tok/s (rates differ by {100 * (plain_rate / marked_rate - 1):.1f}%); "
            f"time inside the watermark processor {100 * speed[f'share, batch {batch}']:.2f}%",
            flush=True,
        )


def memorization(mb: int, gen) -> None:
    text = read_text(bundled_corpus_path())
    ids = np.asarray(gen.tokenizer.encode(text), dtype=np.int32)
    repeats = max(1, int(mb * 1e6 / len(text)))
    rng = np.random.default_rng(0)
    # Every copy but the first shuffled in 100-token blocks, so long spans are not all repeats.
    blocks = [ids] + [
        np.concatenate([ids[b : b + 100] for b in rng.permutation(np.arange(0, len(ids), 100))])
        for _ in range(repeats - 1)
    ]
    corpus = np.concatenate(blocks)
    start = time.perf_counter()
    index = CopyIndex(corpus)
    built = time.perf_counter() - start
    planted_at = len(corpus) // 2 + 12_345
    noise = rng.integers(0, gen.tokenizer.vocab_size, 100).astype(np.int32)
    sample = np.concatenate([noise, corpus[planted_at : planted_at + 50], noise[::-1]])
    start = time.perf_counter()
    span = index.longest_copy(sample)
    query = time.perf_counter() - start
    print(
        f"memorization: {len(corpus) / 1e6:.0f} M tokens ({gen.tokenizer.kind}), index built in "
        f"{built:.1f} s; planted 50-token copy -> longest copy {span.length} tokens at sample "
        f"{span.sample_start}, found in {1000 * query:.0f} ms",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True)
    parser.add_argument("--data", default="../shared/data", help="holds ptb/ptb.test.txt")
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--max-tokens", type=int, default=800)
    parser.add_argument("--windows", type=int, default=200)
    parser.add_argument("--memorization-mb", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--speed-only", action="store_true", help="only the decode speed of the first run"
    )
    parser.add_argument("--no-speed", action="store_true", help="skip the decode speed")
    parser.add_argument("--context", type=int, default=1, help="watermark context width")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    CONTEXT["width"] = args.context
    if args.speed_only:
        report_speed(load(args.runs[0]), Path(args.runs[0]).name, rounds=9)
        return
    held_out = held_out_shakespeare()
    ptb = read_text(Path(args.data) / "ptb" / "ptb.test.txt")
    prompts = snippets(held_out, args.prompts, 48, seed=1)
    for number, run in enumerate(args.runs):
        gen = load(run)
        name = f"{Path(run).name} ({gen.tokenizer.kind}, {gen.config.model.arch})"
        fpr_shakespeare = false_positive_rate(gen, held_out, args.windows)
        fpr_ptb = false_positive_rate(gen, ptb, args.windows)
        print(
            f"{name}: FPR at z>=4 on 200-token windows: held-out Shakespeare "
            f"{fpr_shakespeare[0]:.3f} (max z {fpr_shakespeare[1]:.2f}), PTB {fpr_ptb[0]:.3f} "
            f"(max z {fpr_ptb[1]:.2f})",
            flush=True,
        )
        plain = generate_marked(gen, prompts, args.max_tokens, None)
        print(
            f"{name}: delta 0: sample perplexity {perplexity(gen, prompts, plain):.2f}", flush=True
        )
        for delta in DELTAS:
            marked = generate_marked(gen, prompts, args.max_tokens, delta)
            rates = true_positive_rates(gen, prompts, marked)
            print(
                f"{name}: delta {delta:g}: TPR at z>=4 "
                + ", ".join(f"{n} tokens {rate:.2f}" for n, rate in rates.items())
                + f"; sample perplexity {perplexity(gen, prompts, marked):.2f}",
                flush=True,
            )
        if number == 0 and not args.no_speed:
            report_speed(gen, name)
    if args.memorization_mb:
        memorization(args.memorization_mb, load(args.runs[0]))


if __name__ == "__main__":
    main()
