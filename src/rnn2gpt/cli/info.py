"""``rnn2gpt info``: describe a checkpoint."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "info", help="describe a checkpoint", description="Describe a checkpoint."
    )
    p.add_argument("checkpoint", metavar="DIR")
    p.add_argument("--json", action="store_true")
    return p


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_checkpoint, resolve_checkpoint_dir

    directory = resolve_checkpoint_dir(args.checkpoint)
    ckpt = load_checkpoint(directory)
    model = ckpt.model
    info: dict[str, Any] = {
        "checkpoint": str(directory),
        "architecture": ckpt.config.model.arch,
        "parameters": model.num_parameters(),
        "tokenizer": f"{ckpt.tokenizer.kind} ({ckpt.tokenizer.vocab_size} tokens)",
        "context": model.max_context if model.max_context is not None else "unbounded (recurrent)",
    }
    if ckpt.separate_tokenizers:
        source = ckpt.source_tokenizer
        info["tokenizer"] += " for targets"
        info["src tokenizer"] = f"{source.kind} ({source.vocab_size} tokens)"
    if ckpt.has_adapter:
        train = ckpt.config.train
        info["adapter"] = (
            f"LoRA rank {train.lora_rank}, alpha {train.lora_alpha:g} (base + adapter)"
        )
    if ckpt.trainer_state:
        for key in ("step", "tokens", "best_val_loss", "trainable_parameters"):
            if key in ckpt.trainer_state:
                info[key] = ckpt.trainer_state[key]
    if args.json:
        print(json.dumps({**info, "config": ckpt.config.to_dict()}, indent=1))
        return 0
    for key, value in info.items():
        print(f"{key:>14}  {value}")
    print("\nmodel settings:")
    for key, value in ckpt.config.to_dict()["model"].items():
        print(f"  model.{key} = {value}")
    return 0
