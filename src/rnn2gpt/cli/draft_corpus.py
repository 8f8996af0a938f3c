"""``rnn2gpt draft-corpus``: the target's own greedy continuations, to distill a drafter on
(see generation.draft_corpus)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "draft-corpus",
        help="write a target model's own continuations, to fine-tune a drafter on",
        description="Write the text a drafter for speculative decoding (generate --draft) is "
        "best fine-tuned on: the target's greedy continuations of prompts cut evenly from a "
        "text, each prompt followed by its continuation. A drafter fine-tuned on it guesses "
        "more of the target's tokens. Then: rnn2gpt finetune DRAFT --data OUT, and "
        "rnn2gpt generate TARGET --draft <the fine-tuned drafter>.",
    )
    p.add_argument("target", metavar="TARGET", help="the target's checkpoint or run folder")
    p.add_argument("--out", required=True, help="text file to write")
    p.add_argument(
        "--data",
        help="text to cut prompts from (default: the training part of the target's own "
        "training text)",
    )
    p.add_argument("--prompts", type=int, default=4000, help="how many prompts (4000)")
    p.add_argument(
        "--prompt-length", type=int, default=48, metavar="CHARS", help="characters a prompt (48)"
    )
    p.add_argument(
        "--new-tokens", type=int, default=160, help="tokens the target writes a prompt (160)"
    )
    p.add_argument("--batch-size", type=int, default=64, help="prompts decoded together (64)")
    p.add_argument("--overwrite", action="store_true", help="replace the file at --out")
    return p


def run(args: argparse.Namespace) -> int:
    from ..api import write_draft_corpus

    def progress(done: int, total: int) -> None:
        print(f"\r{done}/{total} prompts", end="", file=sys.stderr, flush=True)

    written = write_draft_corpus(
        args.target,
        args.out,
        data=args.data,
        prompts=args.prompts,
        prompt_length=args.prompt_length,
        new_tokens=args.new_tokens,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        progress=progress,
    )
    print(file=sys.stderr)
    skipped = f"; {written.skipped} prompts skipped (characters the tokenizer lacks)"
    print(
        f"{written.documents} documents, {written.characters:,} characters "
        f"({written.generated:,} tokens generated) written to {written.path}"
        + (skipped if written.skipped else "")
    )
    print(f"next: rnn2gpt finetune DRAFT --data {written.path}")
    return 0
