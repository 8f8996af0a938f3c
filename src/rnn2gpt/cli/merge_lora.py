"""``rnn2gpt merge-lora``: fold a LoRA checkpoint's adapters into a plain checkpoint."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "merge-lora",
        help="fold a LoRA checkpoint's adapters into a plain checkpoint",
        description="Fold the LoRA adapters of a fine-tuned checkpoint into its weights and save "
        "a plain checkpoint (same outputs, no adapter file).",
    )
    p.add_argument("checkpoint", metavar="DIR", help="LoRA checkpoint or run folder")
    p.add_argument("dest", metavar="DEST", help="folder for the merged checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint in DEST")
    return p


def run(args: argparse.Namespace) -> int:
    from ..api import merge_lora_checkpoint

    path = merge_lora_checkpoint(args.checkpoint, args.dest, overwrite=args.overwrite)
    print(f"merged checkpoint written to {path}")
    return 0
