"""``rnn2gpt compare``: every architecture trained under the same budget, then a report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..config import TOKENIZER_KINDS
from ..errors import ConfigError
from .common import text_table


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "compare",
        help="train every architecture under the same budget and write a comparison report",
        description="Train RNN, LSTM, GRU and GPT (presets shakespeare-char-*) under the same "
        "budget with comparable parameter counts, then write OUT/report.md and OUT/report.html "
        "(table, validation curves, samples).",
    )
    p.add_argument("--data", help="training text (default: the bundled Tiny Shakespeare)")
    p.add_argument("--tokenizer", choices=TOKENIZER_KINDS, help="tokenizer for all models")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget", help="training time per model, e.g. 90s, 10m (default 5m)")
    budget.add_argument(
        "--budget-tokens",
        type=int,
        metavar="N",
        help="training tokens per model instead of a time budget",
    )
    p.add_argument("--models", default="rnn,lstm,gru,gpt", help="comma-separated architectures")
    p.add_argument("--out", default="runs/compare", help="output folder (default runs/compare)")
    p.add_argument("--prompt", default="", help="prompt of every model's sample")
    p.add_argument("--seed", type=int, help="training and sampling seed")
    p.add_argument(
        "--target-params",
        type=int,
        metavar="N",
        help="size every model near N parameters (default: the GPT preset's count)",
    )
    p.add_argument(
        "--keep-sizes",
        action="store_true",
        help="keep the presets' sizes instead of matching parameter counts",
    )
    p.add_argument(
        "--gen-tokens",
        type=int,
        default=200,
        help="tokens generated to time decoding and for each sample (default 200)",
    )
    p.add_argument(
        "--in-process",
        action="store_true",
        help="train in this process (starts faster; peak memory is not measured)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace runs already in --out")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: rewrite the report of the comparison in --out from its saved "
        "results and checkpoints",
    )
    p.add_argument(
        "--retime",
        action="store_true",
        help="with --report-only: time every model's generation again",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a setting for every model (model.n_layer=2) or one (gpt:model.n_head=4)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    from ..config import parse_duration
    from ..experiments.compare import (
        TABLE_COLUMNS,
        CompareSettings,
        refresh_comparison,
        results_rows,
        run_comparison,
    )

    if args.retime and not args.report_only:
        raise ConfigError("--retime times a finished comparison again; add --report-only")
    if args.report_only:
        comparison = refresh_comparison(args.out, retime=args.retime)
    else:
        settings = CompareSettings(
            data=args.data,
            tokenizer=args.tokenizer,
            models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
            budget_seconds=parse_duration(args.budget) if args.budget else None,
            budget_tokens=args.budget_tokens,
            overrides=tuple(args.set or ()),
            prompt=args.prompt.replace("\\n", "\n"),
            seed=args.seed,
            match_params=not args.keep_sizes,
            target_params=args.target_params,
            gen_tokens=args.gen_tokens,
            isolate=not args.in_process,
            overwrite=args.overwrite,
        )
        comparison = run_comparison(settings, args.out)
    print(text_table(TABLE_COLUMNS, results_rows(comparison)))
    out = Path(args.out)
    print(f"report: {out / 'report.md'} and {out / 'report.html'}")
    return 0
