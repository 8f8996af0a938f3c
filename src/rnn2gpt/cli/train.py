"""``rnn2gpt train``: train a model (no arguments: the default GPT on Tiny Shakespeare)."""

from __future__ import annotations

import argparse
from typing import Any

from ..config import ARCHITECTURES, SEQ2SEQ_ARCHITECTURES, TASKS, TOKENIZER_KINDS
from .common import EXIT_INTERRUPTED, add_budget_options, add_set_option, print_train_summary


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="train a model (no arguments: the default GPT on Tiny Shakespeare)",
        description="Train a language model. With no arguments, trains the default "
        "character GPT on the bundled Tiny Shakespeare.",
    )
    p.add_argument("--preset", help="preset name (see `rnn2gpt presets`) or a .toml file")
    p.add_argument("--data", help="training text: a file, a .gz file or a directory")
    p.add_argument("--val-data", help="separate validation file (default: last 10%% of --data)")
    p.add_argument("--data-dir", help="folder the preset's relative data paths are read from")
    p.add_argument("--model", choices=ARCHITECTURES + SEQ2SEQ_ARCHITECTURES, help="architecture")
    p.add_argument("--tokenizer", choices=TOKENIZER_KINDS, help="tokenizer kind")
    p.add_argument("--out", help="output folder (default runs/PRESET)")
    add_budget_options(p)
    p.add_argument("--seed", type=int, help="random seed (runs are reproducible from it)")
    p.add_argument(
        "--resume",
        metavar="DIR",
        help="continue an interrupted run (train or finetune) in DIR exactly: same weights, "
        "optimizer, schedule and data position (to start a new run from a checkpoint, use "
        "`rnn2gpt finetune`)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="let a new run replace the checkpoints already in --out",
    )
    add_set_option(p, "--set train.lr=3e-4 --set model.n_layer=6")
    p.add_argument(
        "--task", choices=TASKS, help="what to train (default: the preset's; lm = language model)"
    )
    p.add_argument("--source", help="seq2seq: training sources, one per line (plain or .gz)")
    p.add_argument("--target", help="seq2seq: training targets, line-aligned with --source")
    p.add_argument("--val-source", help="seq2seq: validation sources")
    p.add_argument("--val-target", help="seq2seq: validation targets")
    p.add_argument(
        "--separate-tokenizers",
        action="store_true",
        help="seq2seq: train one tokenizer on the sources and another on the targets instead of "
        "one joint tokenizer (tokenizer.separate=true)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    from ..api import train
    from ..errors import Rnn2GptError

    if args.resume and args.out and args.out != args.resume:
        raise Rnn2GptError("give either --resume DIR or --out DIR, not two different folders")
    result = train(
        args.preset,
        out=args.resume or args.out,
        resume=bool(args.resume),
        overwrite=args.overwrite,
        data=args.data,
        val_data=args.val_data,
        data_dir=args.data_dir,
        model=args.model,
        tokenizer=args.tokenizer,
        max_steps=args.max_steps,
        max_time=args.max_time,
        seed=args.seed,
        overrides=tuple(args.set or ()),
        task=args.task,
        source=args.source,
        target=args.target,
        val_source=args.val_source,
        val_target=args.val_target,
        separate_tokenizers=args.separate_tokenizers,
    )
    print_train_summary(result, result.task)
    return EXIT_INTERRUPTED if result.interrupted else 0
