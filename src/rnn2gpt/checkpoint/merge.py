"""Fold a LoRA checkpoint's adapters into its weights: a plain checkpoint anyone can load.

A LoRA checkpoint (see :mod:`rnn2gpt.checkpoint`) keeps the base weights and a small
``adapter.safetensors``. Merging computes ``W + (alpha / r) B A`` for every adapted layer and
saves the result as an ordinary checkpoint: same logits, no adapter file, no LoRA settings, and
loadable by tools that know nothing of LoRA (``export-hf``, older readers).
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

from ..errors import CheckpointError
from ..models.lora import has_lora, merge_lora
from .files import destination_in_use
from .format import load_checkpoint, read_config, save_checkpoint

logger = logging.getLogger(__name__)


def merge_lora_checkpoint(
    checkpoint_dir: str | os.PathLike[str],
    dest_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``checkpoint_dir`` (a LoRA checkpoint) with its adapters merged to ``dest_dir``.

    The merged checkpoint holds the model, tokenizer and run config (with ``train.lora_*``
    reset, so fine-tuning it again starts a full fine-tune unless asked otherwise); no optimizer
    or trainer state, since the merged model is not the one the optimizer was tracking.
    Returns the written path.

    Raises:
        CheckpointError: the source is not a LoRA checkpoint, or ``dest_dir`` exists and is not
            empty (without ``overwrite``), is not an rnn2gpt checkpoint, or is the source.
    """
    source = Path(checkpoint_dir).expanduser()
    dest = Path(dest_dir).expanduser()
    checkpoint = load_checkpoint(source)
    if not has_lora(checkpoint.model):
        raise CheckpointError(
            f"{source} has no LoRA adapter, so there is nothing to merge; it already is a plain "
            "checkpoint"
        )
    _check_destination(source, dest, overwrite)
    model = merge_lora(checkpoint.model)
    config = checkpoint.config
    config = replace(
        config,
        train=replace(config.train, lora_rank=0, lora_targets="", lora_dropout=0.0),
    )
    path = save_checkpoint(
        dest,
        model=model,
        tokenizer=checkpoint.tokenizer,
        config=config,
        source_tokenizer=checkpoint.source_tokenizer,  # kept when the run has separate ones
    )
    logger.info("merged the LoRA adapters of %s into %s", source, path)
    return path


def _check_destination(source: Path, dest: Path, overwrite: bool) -> None:
    """Refuse to write over the source, over a file, or over anything but a checkpoint."""
    if dest.exists() and source.resolve() == dest.resolve():
        raise CheckpointError(f"cannot merge {source} into itself; give another destination folder")
    if not destination_in_use(dest, overwrite):
        return
    try:
        read_config(dest)
    except CheckpointError:
        raise CheckpointError(
            f"{dest} is not an rnn2gpt checkpoint, so it is not replaced even with --overwrite; "
            "choose another folder"
        ) from None


__all__ = ["merge_lora_checkpoint"]
