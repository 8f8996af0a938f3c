"""The decoding flags of ``generate``, made from :class:`~rnn2gpt.config.GenerationConfig`'s fields.

A field with ``metadata={"flag": ..., "help": ..., "metavar": ...}`` gets that flag, typed by the
field (int, float, str; a tuple field is a repeatable flag); fields without a flag are still
reachable with ``--set generate.KEY=VALUE``. So a new decoding setting needs no CLI code.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any, get_type_hints

from ..config import GenerationConfig, RunConfig

_TYPES = {int: int, float: float, str: str}


def add_generation_flags(parser: argparse.ArgumentParser) -> None:
    """One option per flagged field of GenerationConfig (default None = the checkpoint's)."""
    hints = get_type_hints(GenerationConfig)
    for f in fields(GenerationConfig):
        flag = f.metadata.get("flag")
        if flag is None:
            continue
        hint = hints[f.name]
        options: dict[str, Any] = {"dest": f"gen_{f.name}", "help": f.metadata.get("help")}
        if f.metadata.get("metavar"):
            options["metavar"] = f.metadata["metavar"]
        if str(hint).startswith("tuple"):
            options["action"] = "append"
        else:
            base = next((t for t in _TYPES if hint is t or str(hint).startswith(t.__name__)), str)
            options["type"] = _TYPES[base]
        parser.add_argument(flag, **options)


def generation_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The decoding settings the flags (and ``--set``) name: field name -> value, only those
    given; the checkpoint's own settings fill in the rest."""
    settings: dict[str, Any] = {}
    for f in fields(GenerationConfig):
        value = getattr(args, f"gen_{f.name}", None)
        if value is None:
            continue
        if f.name == "stop":  # typed on a command line: \n means a newline
            value = tuple(s.encode().decode("unicode_escape") for s in value)
        settings[f.name] = tuple(value) if isinstance(value, list) else value
    if getattr(args, "greedy", False):
        settings["temperature"] = 0.0
    overrides = getattr(args, "set", None) or []
    if overrides:
        keys = [item if item.startswith("generate.") else f"generate.{item}" for item in overrides]
        overridden = RunConfig().with_overrides(keys).generate
        for item in keys:
            key = item.split("=", 1)[0].removeprefix("generate.")
            settings[key] = getattr(overridden, key)
    return settings


__all__ = ["add_generation_flags", "generation_settings"]
