"""What ``translate`` and ``summarize`` share: one output line per input line (a file, or stdin
streamed line by line), each task with its own defaults (:data:`~rnn2gpt.tasks.runner.TASK_DEFAULTS`),
and an optional cross-attention heatmap of the first line."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .common import read_input_lines


def register_seq2seq_command(subparsers: Any, name: str, task: str) -> argparse.ArgumentParser:
    from ..tasks.runner import TASK_DEFAULTS

    beams, longest = TASK_DEFAULTS[task]
    what = name.capitalize()
    p = subparsers.add_parser(
        name,
        help=f"{name} lines of text with an encoder-decoder checkpoint",
        description=f"{what} each input line (stdin or --input) with an encoder-decoder "
        "checkpoint; one output line per input line.",
    )
    p.add_argument("checkpoint", metavar="DIR")
    p.add_argument("--input", help="file of input lines (default: stdin, line by line)")
    p.add_argument("--num-beams", type=int, help=f"beam search width (default {beams}; 1 = greedy)")
    limit = "from the source's length" if longest is None else str(longest)
    p.add_argument("--max-new-tokens", type=int, help=f"longest output in tokens (default {limit})")
    p.add_argument(
        "--prompt-lookup",
        type=int,
        metavar="N",
        help="greedy only: draft tokens by copying what followed the last N output tokens in "
        "the source (speculative decoding: the same output, faster where it copies)",
    )
    p.add_argument(
        "--plot-attention",
        metavar="PNG",
        help="write the cross-attention heatmap of the first line to this PNG",
    )
    return p


def run_seq2seq_lines(args: argparse.Namespace, task: str) -> int:
    from ..analysis.attention import plot_cross_attention
    from ..tasks import load_seq2seq, run_seq2seq

    runner = load_seq2seq(args.checkpoint)
    options = {
        "task": task,
        "num_beams": args.num_beams,
        "max_new_tokens": args.max_new_tokens,
        "prompt_lookup": args.prompt_lookup,
    }
    first = None
    lines = read_input_lines(args.input)
    if args.input:  # a file: one batch
        lines = list(lines)
        outputs = run_seq2seq(runner, lines, **options)
        for out in outputs:
            print(out)
        first = (lines[0], outputs[0]) if lines else None
    else:  # stdin: one line at a time, so a pipe gets each output as soon as it is ready
        for line in lines:
            out = run_seq2seq(runner, [line], **options)[0]
            print(out, flush=True)
            first = first or (line, out)
    if args.plot_attention and first is not None:
        png = plot_cross_attention(runner, first[0], args.plot_attention, output=first[1])
        if png is not None:
            print(f"attention plot: {png}", file=sys.stderr)
    return 0
