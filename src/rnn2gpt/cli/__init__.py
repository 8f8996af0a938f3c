"""The ``rnn2gpt`` command line: one module per command, each with ``register(subparsers)`` and
``run(args)``.

Every command has ``--help``. Mistakes a user can make (bad path, unknown setting, corrupt
checkpoint...) end with one line ``error: ...`` on stderr and exit status 2, never a traceback.
The commands only translate flags into calls of :mod:`rnn2gpt.api` (and the packages it fronts)
and print results; policy (defaults, checks) lives below.

May import every floor (it is the top one, beside ``server``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import Rnn2GptError
from . import (
    analyze,
    compare,
    detect,
    doctor,
    draft_corpus,
    eval,
    export_hf,
    finetune,
    generate,
    import_hf,
    info,
    merge_lora,
    presets,
    quantize,
    serve,
    summarize,
    train,
    translate,
)
from .common import EXIT_INTERRUPTED, EXIT_USER_ERROR

# In the order `rnn2gpt --help` lists them.
COMMANDS = (
    train,
    finetune,
    generate,
    draft_corpus,
    detect,
    eval,
    translate,
    summarize,
    info,
    merge_lora,
    quantize,
    import_hf,
    export_hf,
    presets,
    compare,
    analyze,
    doctor,
    serve,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnn2gpt",
        description="Neural text generation from RNN to GPT: train on your text, then generate.",
    )
    parser.add_argument("--version", action="version", version=f"rnn2gpt {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(subparsers).set_defaults(func=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO,
        format="%(message)s",
    )
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return args.func(args)
    except Rnn2GptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `rnn2gpt generate ... | head`
        return 0


__all__ = ["EXIT_INTERRUPTED", "EXIT_USER_ERROR", "build_parser", "main"]
