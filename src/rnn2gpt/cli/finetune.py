"""``rnn2gpt finetune``: the same trainer started from a checkpoint (full or LoRA)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import EXIT_INTERRUPTED, add_budget_options, add_set_option, print_train_summary


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a checkpoint on new text (full or LoRA)",
        description="Fine-tune a trained checkpoint on new text: the same trainer, started from "
        "the checkpoint's weights and tokenizer with a fresh optimizer and learning-rate "
        "schedule; other settings come from the checkpoint's config (change them with --set). "
        "The new text is encoded with the checkpoint's tokenizer. An interrupted fine-tune is "
        "continued exactly with `rnn2gpt train --resume OUT`; running finetune again starts over.",
    )
    p.add_argument("checkpoint", metavar="DIR", help="checkpoint or run folder to start from")
    p.add_argument("--data", required=True, help="new training text: a file, .gz or directory")
    p.add_argument("--val-data", help="separate validation file (default: last 10%% of --data)")
    p.add_argument("--out", help="output folder (default runs/<name of DIR>-finetuned)")
    add_budget_options(p)
    p.add_argument(
        "--lora-rank",
        type=int,
        default=0,
        metavar="R",
        help="train rank-R LoRA adapters only (base weights frozen); 0 = full fine-tuning",
    )
    p.add_argument("--lora-alpha", type=float, metavar="A", help="adapter scale alpha (16)")
    p.add_argument(
        "--lora-targets",
        metavar="A,B",
        help="layers to adapt, by name suffix, e.g. attn.c_attn,mlp.c_fc (default: the model's "
        "block linears; recurrent models: decoder)",
    )
    p.add_argument("--lora-dropout", type=float, metavar="P", help="dropout on the adapters' input")
    p.add_argument(
        "--merge",
        action="store_true",
        help="after a LoRA run, also write OUT/merged: the best checkpoint with the adapters "
        "folded into the weights",
    )
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    add_set_option(p, "--set train.lr=1e-4 --set train.batch_size=8")
    return p


def run(args: argparse.Namespace) -> int:
    from ..api import finetune

    result = finetune(
        args.checkpoint,
        data=args.data,
        val_data=args.val_data,
        out=args.out,
        max_steps=args.max_steps,
        max_time=args.max_time,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        lora_targets=args.lora_targets,
        lora_dropout=args.lora_dropout,
        merge=args.merge,
        seed=args.seed,
        overrides=tuple(args.set or ()),
        overwrite=args.overwrite,
    )
    print_train_summary(result)
    if result.merged_dir is not None:
        print(f"merged checkpoint (adapters folded in) in {result.merged_dir}")
    elif args.merge and result.interrupted:
        print(
            "not merged (interrupted); after resuming, run `rnn2gpt merge-lora "
            f"{result.out_dir} {Path(result.out_dir) / 'merged'}`"
        )
    return EXIT_INTERRUPTED if result.interrupted else 0
