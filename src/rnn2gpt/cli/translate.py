"""``rnn2gpt translate``: each input line translated by an encoder-decoder checkpoint."""

from __future__ import annotations

import argparse
from typing import Any

from .seq2seq_lines import register_seq2seq_command, run_seq2seq_lines


def register(subparsers: Any) -> argparse.ArgumentParser:
    return register_seq2seq_command(subparsers, "translate", "translation")


def run(args: argparse.Namespace) -> int:
    return run_seq2seq_lines(args, "translation")
