"""What several commands share: exit codes, the ``--set`` option, reading input lines, printing a
training summary and a text table."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import Rnn2GptError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

# The command that uses a checkpoint of each task, for the hint after training.
_TASK_COMMANDS = {"lm": "generate", "translation": "translate", "summarization": "summarize"}


def add_set_option(parser: argparse.ArgumentParser, example: str) -> None:
    """``--set KEY=VALUE`` (repeatable): any setting, ``section.key=value``."""
    parser.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help=f"override any setting, e.g. {example}"
    )


def add_budget_options(parser: argparse.ArgumentParser) -> None:
    """``--max-steps N`` or ``--max-time T``, one or the other."""
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--max-steps", type=int, help="stop after N optimizer steps")
    budget.add_argument("--max-time", help="stop after this much training time, e.g. 90s, 10m, 1h")


def print_train_summary(result: Any, task: str = "lm") -> None:
    """The lines scripts read after ``train`` and ``finetune`` (``val perplexity N``...)."""
    out_dir = Path(result.out_dir)
    metrics = result.final_metrics or {}
    lines = [
        f"trained {result.steps} steps, {result.tokens:,} tokens in {result.elapsed:.0f} s "
        f"({result.tokens_per_sec:,.0f} tokens/s)",
    ]
    if result.best_val_loss is not None:
        lines.append(f"best validation loss {result.best_val_loss:.4f}")
    for key in ("val_loss", "val_perplexity", "val_bits_per_char", "test_loss", "test_perplexity"):
        if key in metrics and metrics[key] is not None:
            lines.append(f"{key.replace('_', ' ')} {metrics[key]:.4f}")
    if result.interrupted:
        lines.append(
            f"interrupted: saved {out_dir / 'last'}; continue with "
            f"`rnn2gpt train --resume {out_dir}`"
        )
    command = _TASK_COMMANDS.get(task, "generate")
    lines.append(f"checkpoints in {out_dir}; try `rnn2gpt {command} {out_dir}`")
    print("\n".join(lines))


def read_prompts(path: str) -> list[str]:
    """Non-empty lines of ``path`` ('-' = stdin), with ``\\n`` turned into newlines."""
    from ..data import read_text

    text = sys.stdin.read() if path == "-" else read_text(path)
    prompts = [line for line in text.split("\n") if line.strip()]
    if not prompts:
        raise Rnn2GptError(f"{path}: no prompts found (one prompt per line)")
    return [p.replace("\\n", "\n") for p in prompts]


def read_input_lines(path: str | None) -> Iterator[str]:
    """Lines of ``path``, or of stdin one at a time (so pipes stream)."""
    if path:
        from ..data.parallel import read_lines

        yield from read_lines(path)
        return
    for line in sys.stdin:
        yield line.rstrip("\n")


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; the first left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(headers, widths))]
    lines += [
        "  ".join(
            str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))
        )
        for r in rows
    ]
    return "\n".join(lines)


__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_USER_ERROR",
    "add_budget_options",
    "add_set_option",
    "print_train_summary",
    "read_input_lines",
    "read_prompts",
    "text_table",
]
