"""``rnn2gpt presets``: the shipped presets, one line each."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> argparse.ArgumentParser:
    return subparsers.add_parser(
        "presets",
        help="list the shipped presets",
        description="List the shipped presets, one line each.",
    )


def run(args: argparse.Namespace) -> int:
    from ..config import DEFAULT_PRESET, list_presets

    presets = list_presets()
    width = max(len(name) for name in presets)
    for name, description in presets.items():
        mark = " (default)" if name == DEFAULT_PRESET else ""
        print(f"{name:<{width}}  {description}{mark}")
    return 0
