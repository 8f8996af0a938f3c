"""``rnn2gpt detect``: does a text carry the watermark of a key? (see generation.watermark)"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import Rnn2GptError

KEY_VARIABLE = "RNN2GPT_WATERMARK_KEY"


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "detect",
        help="score a text for the watermark of a key (generate --watermark KEY)",
        description="Count the green tokens of a text for a key, with the checkpoint's tokenizer, "
        "and say whether it was watermarked: z-score, one-sided p-value, verdict.",
    )
    p.add_argument("checkpoint", metavar="DIR", help="the checkpoint (only its tokenizer is read)")
    p.add_argument(
        "--key", help=f"the secret key (default: the {KEY_VARIABLE} environment variable)"
    )
    p.add_argument("--input", required=True, metavar="FILE", help="the text to judge; - = stdin")
    p.add_argument("--prompt", default="", metavar="TEXT", help="the prompt (context only)")
    p.add_argument("--threshold", type=float, default=4.0, help="z-score of the verdict (4)")
    p.add_argument("--gamma", type=float, default=0.25, help="green fraction written with (0.25)")
    p.add_argument("--context", type=int, default=1, help="context width written with (1)")
    p.add_argument(
        "--count-repeats",
        action="store_true",
        help="count repeated (context, token) pairs each time (inflates z on repetitive text)",
    )
    p.add_argument("--html", metavar="FILE", help="write a per-token view (green/red) here")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def run(args: argparse.Namespace) -> int:
    from ..api import detect_watermark
    from ..data import read_text

    key = args.key or os.environ.get(KEY_VARIABLE)
    if not key:
        raise Rnn2GptError(f"give the secret with --key KEY or the {KEY_VARIABLE} variable")
    text = sys.stdin.read() if args.input == "-" else read_text(args.input)
    prompt = args.prompt  # as generate --prompt takes it: literally (no escapes; any Unicode)
    if prompt and text.startswith(prompt):
        text = text[len(prompt) :]  # the file holds prompt + completion: judge the completion
    verdict = detect_watermark(
        args.checkpoint,
        text,
        key,
        prompt=prompt,
        gamma=args.gamma,
        context=args.context,
        threshold=args.threshold,
        count_repeats=args.count_repeats,
    )
    if args.html:
        Path(args.html).write_text(verdict.html(), encoding="utf-8")
    found = verdict.detection
    if args.json:
        print(json.dumps({**found.summary(), "threshold": args.threshold}))
        return 0
    print(
        f"{found.green} green of {found.tokens} scored tokens (expected {args.gamma:g}); "
        f"z = {found.z_score:.2f}, p = {found.p_value:.3g}"
    )
    print(
        f"{'watermarked' if found.watermarked else 'not watermarked'} (threshold z >= "
        f"{args.threshold:g})"
    )
    if verdict.dropped:
        print(f"note: {verdict.dropped} characters outside the vocabulary were left out")
    if found.tokens < 50:
        print("note: under 50 scored tokens; a verdict needs more text to be reliable")
    return 0
