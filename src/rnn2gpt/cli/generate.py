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
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    add_set_option(p, "--set typical_p=0.9 (any generation setting)")
    return p


def run(args: argparse.Namespace) -> int:
    from ..api import load

    gen = load(args.checkpoint, dtype=args.dtype)
    settings = generation_settings(args)
    config = gen.generation_config(**settings)  # every setting checked before anything prints
    prompts = read_prompts(args.batch_file) if args.batch_file else [args.prompt]
    for prompt in prompts:
        gen.encode_prompt(prompt)  # and every prompt
    streaming = (
        not args.json and args.logprobs is None and len(prompts) == 1 and config.num_beams == 1
    )
    if streaming:
        _stream(gen, prompts[0], settings, config.num_return_sequences, config.seed)
        return 0
    results = gen.complete(prompts, logprobs=args.logprobs, **settings)
    if args.json:
        _print_json(prompts, results, args.logprobs)
    else:
        _print_text(gen, prompts, results, args.logprobs)
    return 0


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


def _print_json(prompts: list[str], results: list, logprobs: int | None) -> None:
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
    print(json.dumps(records if len(records) != 1 else records[0], ensure_ascii=False, indent=1))


def _print_text(gen: Any, prompts: list[str], results: list, logprobs: int | None) -> None:
    for prompt, per_prompt in zip(prompts, results):
        for g in per_prompt:
            print(prompt + g.text)
            if logprobs is not None:
                for token_id, lp in zip(g.token_ids, g.logprobs or []):
                    print(f"  {gen.tokenizer.decode([token_id])!r:>12} {lp:8.4f}")
            print("-" * 40)
