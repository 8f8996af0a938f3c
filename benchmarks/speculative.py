"""Speculative decoding: wall speedup, acceptance and exactness, beside plain decoding and
``transformers``' assisted and prompt-lookup generation, on the same weights in one run.

Sections (each prints a Markdown table):

- ``drafters``: a trained character GPT target (e.g. 6L/384 on Tiny Shakespeare) drafted for by
  an LSTM and by a small GPT of the same character tokenizer, K in --ks; batch 1, greedy, on
  --prompts held-out Shakespeare prompts. Every output is compared with plain greedy decoding:
  identical, differing at a floating-point tie (the target's two best tokens within 1e-4 in
  log-probability at the first difference), or differing otherwise (a bug).
- ``hf``: the same target and GPT drafter exported to ``GPT2LMHeadModel``: plain greedy,
  ``assistant_model=`` and ``prompt_lookup_num_tokens=``; the peer for speculation.
- ``seq2seq``: prompt lookup (drafts copied from the source) on Multi30k and SciTLDR test
  inputs with the project's own encoder-decoders, greedy, batch 1.

    python benchmarks/speculative.py --target T --lstm L --gpt G [--drafter LABEL=DIR ...] \\
        [--multi30k M --scitldr S --data ../shared/data]

A drafter distilled on the target's own greedy outputs: ``rnn2gpt draft-corpus T --out C``, then
``rnn2gpt finetune D --data C --out D2``, then ``--drafter "distilled=D2"``.

Benchmark one job at a time: two on two cores slow each other far more than 2x.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from generate_speed import theirs, to_hf  # noqa: E402

import rnn2gpt  # noqa: E402
from rnn2gpt.config import GenerationConfig  # noqa: E402
from rnn2gpt.generation import generate  # noqa: E402
from rnn2gpt.generation.speculative import (  # noqa: E402
    PromptLookup,
    SpeculationStats,
)
from rnn2gpt.hardware import cpu_capability, cpu_model, fastpaths_mode  # noqa: E402

TIE = 1e-4


def shakespeare_prompts(path: Path, count: int, length: int = 48) -> list[str]:
    """``count`` prompts from the held-out last 10% of Tiny Shakespeare, each starting a line."""
    text = path.read_text(encoding="utf-8")
    held_out = text[int(len(text) * 0.9) :]
    starts = [i + 1 for i, ch in enumerate(held_out[:-length]) if ch == "\n"]
    step = max(1, len(starts) // count)
    return [held_out[s : s + length] for s in starts[::step][:count]]


def greedy(new_tokens: int, **extra) -> GenerationConfig:
    return GenerationConfig(
        temperature=0.0,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        stop_at_eos=False,
        **extra,
    )


def decode_all(model, prompts: list[list[int]], config, draft=None):
    """Each prompt alone (batch 1): (outputs, seconds, stats)."""
    stats = SpeculationStats()
    total = SpeculationStats()
    outputs = []
    start = time.perf_counter()
    for prompt in prompts:
        [[g]] = generate(model, [prompt], config, draft=draft, speculation=stats)
        outputs.append(g.token_ids)
        total.drafted += stats.drafted
        total.accepted += stats.accepted
        total.rounds += stats.rounds
    return outputs, time.perf_counter() - start, total


def classify(model, prompts, plain, spec) -> tuple[int, int, int]:
    """(identical, tie flips, other differences) of ``spec`` against ``plain``."""
    same = ties = other = 0
    for prompt, a, b in zip(prompts, plain, spec):
        if a == b:
            same += 1
            continue
        first = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
        with torch.inference_mode():
            logits, _ = model(torch.tensor([prompt + a[:first]]), None)
        top2 = logits[0, -1].float().log_softmax(-1).topk(2).values
        if float(top2[0] - top2[1]) < TIE:
            ties += 1
        else:
            other += 1
    return same, ties, other


def per_token_ms(model, prompts, new_tokens: int) -> float:
    _, seconds, _ = decode_all(model, prompts, greedy(new_tokens))
    return 1000 * seconds / (len(prompts) * new_tokens)


def bench_drafters(args, target, drafters, prompts) -> dict:
    """Plain greedy and every (drafter, K), interleaved prompt by prompt: the host's speed drifts
    (by up to 40% within minutes here), and interleaving spreads the drift over every row."""
    new = args.new_tokens
    decode_all(target.model, prompts[:3], greedy(new))  # warm-up
    print(f"\n### Draft models (batch 1, greedy, {len(prompts)} prompts x {new} tokens)\n")
    costs = {"target": per_token_ms(target.model, prompts[:10], new)}
    for name, gen in drafters.items():
        costs[name] = per_token_ms(gen.model, prompts[:10], new)
    print("| model | parameters | ms per token (plain greedy) | target / model |")
    print("| --- | ---: | ---: | ---: |")
    for name, ms in costs.items():
        model = target.model if name == "target" else drafters[name].model
        print(f"| {name} | {model.num_parameters():,} | {ms:.3f} | {costs['target'] / ms:.1f}x |")

    runs = [("none (plain greedy)", None, None)]
    runs += [(name, drafters[name].model, k) for name in drafters for k in args.ks]
    runs += [("prompt lookup (n=3)", None, k) for k in args.ks]
    configs = []
    for _name, draft, k in runs:
        extra = {} if k is None else {"draft_tokens": k}
        if k is not None and draft is None:
            extra["prompt_lookup"] = 3
        configs.append(greedy(new, **extra))
    outputs = [[] for _ in runs]
    seconds = [0.0] * len(runs)
    stats = [SpeculationStats() for _ in runs]
    for prompt in prompts:
        for i, ((_, draft, _), config) in enumerate(zip(runs, configs)):
            out, spent, counts = decode_all(target.model, [prompt], config, draft)
            outputs[i].extend(out)
            seconds[i] += spent
            for key in ("drafted", "accepted", "rounds"):
                setattr(stats[i], key, getattr(stats[i], key) + getattr(counts, key))
    plain, plain_s = outputs[0], seconds[0]

    print(
        "\n| drafter | K | wall s | tokens/s | speedup vs plain | acceptance | identical | "
        "tie flips | other differences |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    total = len(prompts) * new
    print(
        f"| none (plain greedy) | - | {plain_s:.2f} | {total / plain_s:.0f} | 1.00x | - | - | - | - |"
    )
    for i, (name, _, k) in enumerate(runs[1:], start=1):
        same, ties, other = classify(target.model, prompts, plain, outputs[i])
        print(
            f"| {name} | {k} | {seconds[i]:.2f} | {total / seconds[i]:.0f} | "
            f"**{plain_s / seconds[i]:.2f}x** | {stats[i].acceptance_rate:.1%} | "
            f"{same}/{len(prompts)} | {ties} | {other} |",
            flush=True,
        )
    return {"plain_s": plain_s, "plain": plain}


def bench_hf(args, target, gpt_draft, prompts, ours_plain) -> None:
    new = args.new_tokens
    hf = to_hf(target.model)
    hf_draft = to_hf(gpt_draft.model)

    def run(subset=prompts, **extra):
        outputs = []
        start = time.perf_counter()
        with torch.inference_mode():
            for prompt in subset:
                out = theirs(hf, torch.tensor([prompt]), new, **extra)
                outputs.append(out[0, len(prompt) :].tolist())
        return outputs, time.perf_counter() - start

    run(prompts[:3])  # warm-up
    plain, plain_s = run()
    print(f"\n### transformers on the same weights ({len(prompts)} prompts x {new} tokens)\n")
    print("| transformers | wall s | speedup vs its plain | identical to rnn2gpt plain greedy |")
    print("| --- | ---: | ---: | ---: |")
    same = sum(a == b for a, b in zip(plain, ours_plain))
    print(f"| plain greedy | {plain_s:.2f} | 1.00x | {same}/{len(prompts)} |")
    for label, extra in (
        ("assistant_model (the GPT drafter)", {"assistant_model": hf_draft}),
        ("prompt_lookup_num_tokens=4", {"prompt_lookup_num_tokens": 4}),
    ):
        outputs, seconds = run(**extra)
        same = sum(a == b for a, b in zip(outputs, ours_plain))
        print(
            f"| {label} | {seconds:.2f} | {plain_s / seconds:.2f}x | {same}/{len(prompts)} |",
            flush=True,
        )
    print(f"\nrnn2gpt plain greedy vs transformers plain greedy: see wall s (theirs {plain_s:.2f})")


def seq2seq_sources(name: str, data: Path, count: int) -> list[str]:
    if name == "multi30k":
        with gzip.open(data / "multi30k" / "test_2016_flickr.de.gz", "rt", encoding="utf-8") as f:
            return [line.strip() for line in f][:count]
    sources = []
    with gzip.open(data / "scitldr" / "test.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            src = record["source"]
            sources.append(" ".join(src) if isinstance(src, list) else str(src))
    return sources[:count]


def bench_seq2seq(args) -> None:
    from rnn2gpt.tasks import load_seq2seq
    from rnn2gpt.tasks.decoding import encode_sources, source_limit, special_ids

    print(
        "\n### Prompt lookup on encoder-decoders (greedy, batch 1, drafts copied from the source)\n"
    )
    print(
        "| task (model) | inputs | new tokens | plain s | lookup s | speedup | acceptance | "
        "identical | tie flips | other |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, directory in (("multi30k", args.multi30k), ("scitldr", args.scitldr)):
        if not directory:
            continue
        runner = load_seq2seq(directory)
        model, tokenizer = runner.model, runner.tokenizer
        bos, eos, pad = special_ids(tokenizer)
        texts = seq2seq_sources(name, Path(args.data), args.seq2seq_inputs)
        sources = encode_sources(runner.source_tokenizer, texts, source_limit(model))
        max_new = runner.generation.max_new_tokens if name == "scitldr" else 80
        results = {}
        for label, lookup in (("plain", None), ("lookup", args.lookup_ngram)):
            config = GenerationConfig(
                temperature=0.0,
                max_new_tokens=max_new,
                prompt_lookup=lookup or 0,
                draft_tokens=args.lookup_k,
            )
            outputs, total = [], SpeculationStats()
            start = time.perf_counter()
            for source in sources:
                bound = model.bind(torch.tensor([source]))
                draft = None if lookup is None else PromptLookup(lookup, sources=[source[:-1]])
                stats = SpeculationStats()
                [[g]] = generate(
                    bound, [[bos]], config, eos_id=eos, pad_id=pad, draft=draft, speculation=stats
                )
                outputs.append(g.token_ids)
                total.drafted += stats.drafted
                total.accepted += stats.accepted
            results[label] = (outputs, time.perf_counter() - start, total)
        plain, plain_s, _ = results["plain"]
        spec, spec_s, stats = results["lookup"]
        same = ties = other = 0
        for source, a, b in zip(sources, plain, spec):
            if a == b:
                same += 1
                continue
            first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            with torch.inference_mode():
                logits, _ = model.bind(torch.tensor([source]))(torch.tensor([[bos] + a[:first]]))
            top2 = logits[0, -1].float().log_softmax(-1).topk(2).values
            if float(top2[0] - top2[1]) < TIE:
                ties += 1
            else:
                other += 1
        tokens = sum(len(o) for o in plain)
        print(
            f"| {name} ({Path(directory).name}) | {len(sources)} | {tokens} | {plain_s:.2f} | "
            f"{spec_s:.2f} | **{plain_s / spec_s:.2f}x** | {stats.acceptance_rate:.1%} | "
            f"{same}/{len(sources)} | {ties} | {other} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", help="trained char GPT checkpoint (the target)")
    parser.add_argument("--lstm", help="LSTM drafter (same tokenizer)")
    parser.add_argument("--gpt", help="small GPT drafter (same tokenizer)")
    parser.add_argument(
        "--drafter",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="another drafter (same tokenizer), e.g. one distilled on the target's outputs",
    )
    parser.add_argument("--multi30k", help="a Multi30k translation checkpoint")
    parser.add_argument("--scitldr", help="a SciTLDR summarization checkpoint")
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--ks", type=lambda s: [int(x) for x in s.split(",")], default=[2, 4, 6])
    parser.add_argument("--seq2seq-inputs", type=int, default=100)
    parser.add_argument("--lookup-ngram", type=int, default=2)
    parser.add_argument("--lookup-k", type=int, default=4)
    parser.add_argument("--no-hf", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"# {cpu_model()}, ATen {cpu_capability()}, fast paths {fastpaths_mode()}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    if args.target:
        target = rnn2gpt.load(args.target)
        drafters = {}
        if args.lstm:
            drafters["LSTM"] = rnn2gpt.load(args.lstm)
        if args.gpt:
            drafters["small GPT"] = rnn2gpt.load(args.gpt)
        for spec in args.drafter:
            label, _, directory = spec.partition("=")
            if not directory:
                parser.error(f"--drafter takes LABEL=DIR, got {spec!r}")
            drafters[label] = rnn2gpt.load(directory)
        for gen in drafters.values():
            target.use_draft(gen)  # the tokenizer check of `generate --draft`
        target.use_draft(None)
        path = Path(args.data) / "tinyshakespeare" / "input.txt"
        texts = shakespeare_prompts(path, args.prompts)
        prompts = [target.encode_prompt(t) for t in texts]
        result = bench_drafters(args, target, drafters, prompts)
        if args.gpt and not args.no_hf:
            bench_hf(args, target, drafters["small GPT"], prompts, result["plain"])
    if args.multi30k or args.scitldr:
        bench_seq2seq(args)


if __name__ == "__main__":
    main()
