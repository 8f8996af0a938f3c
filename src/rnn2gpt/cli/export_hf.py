"""``rnn2gpt export-hf``: a GPT checkpoint as a Hugging Face GPT-2 folder."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export-hf",
        help="write a GPT checkpoint as a Hugging Face GPT-2 folder",
        description="Write a GPT checkpoint as a Hugging Face GPT-2 folder that "
        "transformers' AutoModelForCausalLM / AutoTokenizer.from_pretrained can load. LoRA "
        "checkpoints are exported with their adapters merged.",
    )
    p.add_argument("checkpoint", metavar="DIR", help="GPT checkpoint or run folder")
    p.add_argument("dest", metavar="DEST", help="folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace a GPT-2 export in DEST")
    p.add_argument(
        "--weights-only",
        action="store_true",
        help="export a char/word-tokenizer model anyway (its tokenizer stays rnn2gpt's own)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    from ..api import export_hf

    path = export_hf(
        args.checkpoint, args.dest, overwrite=args.overwrite, weights_only=args.weights_only
    )
    print(f"exported to {path}; load it with AutoModelForCausalLM.from_pretrained({str(path)!r})")
    return 0
