"""``rnn2gpt generate``: text from a checkpoint, streamed to stdout (or as JSON)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .common import add_set_option, read_prompts
from .generation_flags import add_generation_flags, generation_settings


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "generate",
        help="generate text from a checkpoint (streams to stdout)",
        description="Generate text from a checkpoint; streams as it is produced. Decoding "
        "settings default to the checkpoint's own.",
    )
    p.add_argument("checkpoint", metavar="DIR", help="checkpoint or run folder")
    p.add_argument("--prompt", default="", help="text to continue (default: start fresh)")
    p.add_argument(
        "--batch-file",
        metavar="FILE",
        help="one prompt per line ('-' = stdin); generated as one batch",
    )
    add_generation_flags(p)
    p.add_argument("--greedy", action="store_true", help="same as --temperature 0")
    p.add_argument(
        "--logprobs",
        type=int,
        metavar="N",
        nargs="?",
        const=0,
        help="print each token's log-probability (and N alternatives)",
    )
    p.add_argument("--json", action="store_true", help="print JSON results")
    p.add_argument(
        "--report",
        action="store_true",
        help="after the samples: distinct-n, repetition rate and the longest span copied from "
        "the training text",
    )
    p.add_argument(
        "--train-text",
        metavar="FILE",
        help="--report: the text to look for copies in (default: the run's training text)",
    )
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--quantize", choices=["int8"], help="int8 weights, per-output-channel scales")
    p.add_argument(
        "--draft",
        metavar="DRAFT_DIR",
        help="speculative decoding: a small model over the same tokenizer drafts --draft-tokens "
        "tokens, this model checks them in one step (greedy output unchanged)",
    )
    add_set_option(p, "--set typical_p=0.9 (any generation setting)")
    return p


def run(args: argparse.Namespace) -> int:
    from ..api import load

    gen = load(args.checkpoint, dtype=args.dtype, quantize=args.quantize, draft=args.draft)
    settings = generation_settings(args)
    config = gen.generation_config(**settings)  # every setting checked before anything prints
    prompts = read_prompts(args.batch_file) if args.batch_file else [args.prompt]
    for prompt in prompts:
        gen.encode_prompt(prompt)  # and every prompt
    train_text = None
    if args.train_text:
        from ..data import read_text

        train_text = read_text(args.train_text)  # a wrong path fails before generating
    streaming = (
        not args.json
        and not args.report
        and args.logprobs is None
        and len(prompts) == 1
        and config.num_beams == 1
    )
    if streaming:
        _stream(gen, prompts[0], settings, config.num_return_sequences, config.seed)
        return 0
    results = gen.complete(prompts, logprobs=args.logprobs, **settings)
    report = None
    if args.report:
        from ..api import sample_report

        texts = [g.text for per_prompt in results for g in per_prompt]
        report = sample_report(gen, texts, train_text)
    speculation = None if gen.speculation is None else gen.speculation.to_dict()
    if args.json:
        _print_json(prompts, results, args.logprobs, report, speculation)
    else:
        _print_text(gen, prompts, results, args.logprobs)
        if report is not None:
            _print_report(report)
        if speculation is not None:
            print(
                f"speculative decoding: {speculation['accepted']} of {speculation['drafted']} "
                f"drafted tokens accepted ({speculation['acceptance_rate']:.1%}) in "
                f"{speculation['rounds']} rounds",
                file=sys.stderr,
            )
    return 0


def _print_report(report: dict[str, Any]) -> None:
    print("-" * 40)
    print(
        f"distinct-1 {report['distinct_1']:.3f}, distinct-2 {report['distinct_2']:.3f}, "
        f"{report['repetition_n']}-gram repetition rate {report['repetition_rate']:.3f} "
        f"(over {report['units']} words)"
    )
    for index, copy in enumerate(report["longest_copy"]):
        if copy["tokens"]:
            print(
                f"sample {index}: longest span copied from the training text: {copy['tokens']} "
                f"tokens ({copy['chars']} characters): {copy['text']!r}"
            )
        else:
            print(
                f"sample {index}: no span of {report['copy_min_tokens']} tokens or more copied "
                "from the training text"
            )


def _stream(gen: Any, prompt: str, settings: dict[str, Any], count: int, seed: int | None) -> None:
    """``count`` samples one after the other, each streamed as it is generated."""
    settings = {k: v for k, v in settings.items() if k not in ("num_return_sequences", "seed")}
    for i in range(count):
        if i:
            print("\n" + "-" * 40)
        sys.stdout.write(prompt)
        for piece in gen.stream(prompt, seed=None if seed is None else seed + i, **settings):
            sys.stdout.write(piece)
            sys.stdout.flush()
    sys.stdout.write("\n")


def _print_json(
    prompts: list[str],
    results: list,
    logprobs: int | None,
    report: dict | None = None,
    speculation: dict | None = None,
) -> None:
    records = []
    for prompt, per_prompt in zip(prompts, results):
        for index, g in enumerate(per_prompt):
            record = {
                "prompt": prompt,
                "index": index,
                "text": g.text,
                "finish_reason": g.finish_reason,
                "token_ids": list(g.token_ids),
            }
            if logprobs is not None:
                record["logprobs"] = g.logprobs
                record["top_logprobs"] = [
                    {str(k): v for k, v in alt.items()} for alt in (g.top_logprobs or [])
                ]
            records.append(record)
    out: Any = records if len(records) != 1 else records[0]
    if report is not None or speculation is not None:
        out = {"samples": records}
        if report is not None:
            out["report"] = report
        if speculation is not None:
            out.update(speculation)
    print(json.dumps(out, ensure_ascii=False, indent=1))


def _print_text(gen: Any, prompts: list[str], results: list, logprobs: int | None) -> None:
    for prompt, per_prompt in zip(prompts, results):
        for g in per_prompt:
            print(prompt + g.text)
            if logprobs is not None:
                for token_id, lp in zip(g.token_ids, g.logprobs or []):
                    print(f"  {gen.tokenizer.decode([token_id])!r:>12} {lp:8.4f}")
            print("-" * 40)
