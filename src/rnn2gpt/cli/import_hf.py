"""``rnn2gpt import-hf``: a Hugging Face GPT-2 folder as an rnn2gpt checkpoint."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "import-hf",
        help="convert a Hugging Face GPT-2 folder into a checkpoint",
        description="Convert a Hugging Face GPT-2 model folder (what save_pretrained writes: "
        "config.json, weights, vocab.json + merges.txt or tokenizer.json) into an rnn2gpt "
        "checkpoint. Nothing is downloaded.",
    )
    p.add_argument("src", metavar="SRC", help="Hugging Face model folder")
    p.add_argument("dest", metavar="DIR", help="folder for the new checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint in DIR")
    return p


def run(args: argparse.Namespace) -> int:
    from ..api import import_hf

    path = import_hf(args.src, args.dest, overwrite=args.overwrite)
    print(f"imported {args.src} into {path}; try `rnn2gpt generate {path}`")
    return 0
