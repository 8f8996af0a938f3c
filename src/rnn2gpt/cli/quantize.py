"""``rnn2gpt quantize``: write a checkpoint with int8 weights (see models.quantized)."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "quantize",
        help="write a checkpoint with int8 weights (a quarter of the linear layers' bytes)",
        description="Quantize every linear layer's weight to int8 with per-output-channel "
        "scales and save the result as a checkpoint that loads without the original.",
    )
    p.add_argument("checkpoint", metavar="DIR", help="checkpoint or run folder")
    p.add_argument("dest", metavar="OUT", help="folder for the quantized checkpoint")
    p.add_argument("--kind", choices=["int8"], default="int8", help="the quantization (int8)")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint in OUT")
    return p


def run(args: argparse.Namespace) -> int:
    from ..api import quantize_checkpoint

    path = quantize_checkpoint(args.checkpoint, args.dest, kind=args.kind, overwrite=args.overwrite)
    print(f"{args.kind} checkpoint written to {path}")
    return 0
