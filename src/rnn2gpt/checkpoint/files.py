"""The files of a checkpoint and how they are read and written: names, JSON, safetensors, and the
atomic swap that replaces a checkpoint directory (fsync, then renames only).

A crash at any point of a save leaves either the old or the new checkpoint complete; a crash
between the two renames leaves the old one under ``.<name>.old-*``, which the next save or load
puts back (:func:`recover_interrupted_swap`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import CheckpointError

logger = logging.getLogger(__name__)

FORMAT = "rnn2gpt"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
SOURCE_TOKENIZER_DIR = "source_tokenizer"  # holds tokenizer.json of a separate source tokenizer
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"
TRAINER_TENSORS_FILE = "trainer_state.safetensors"
ADAPTER_FILE = "adapter.safetensors"
ADAPTER_KEY = "adapter"  # config.json key naming the adapter file of a LoRA checkpoint
HEADER_KEYS = ("format", "format_version", "rnn2gpt_version", ADAPTER_KEY)


def load_tensors(file: Path, device: Any) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{file} is corrupt or truncated ({exc}); save or copy the checkpoint again"
        ) from None


def read_metadata(file: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{file} is corrupt or truncated ({exc})") from None


def read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{file} cannot be read as JSON ({exc}); the checkpoint is damaged"
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file} must hold a JSON object; the checkpoint is damaged")
    return data


def write_json(file: Path, data: Mapping[str, Any]) -> None:
    file.write_text(json.dumps(data, indent=1, default=json_default) + "\n", encoding="utf-8")


def json_default(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def cpu_contiguous(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached contiguous CPU copies that share no memory (as ``save_file`` requires)."""
    out = {}
    seen: set[int] = set()
    for name, tensor in tensors.items():
        tensor = tensor.detach().to("cpu").contiguous()
        if tensor.numel() and tensor.untyped_storage().data_ptr() in seen:
            tensor = tensor.clone()
        if tensor.numel():
            seen.add(tensor.untyped_storage().data_ptr())
        out[name] = tensor
    return out


def names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def destination_in_use(dest: Path, overwrite: bool) -> bool:
    """Whether writing to ``dest`` would replace something: False for a missing or empty folder;
    True for a non-empty folder with ``overwrite`` (the caller then checks that it is of a kind
    it may replace). CheckpointError for a file, or a non-empty folder without ``overwrite``."""
    if dest.exists() and not dest.is_dir():
        raise CheckpointError(f"cannot write to {dest}: a file of that name exists")
    if not dest.is_dir() or not any(dest.iterdir()):
        return False
    if not overwrite:
        raise CheckpointError(
            f"{dest} already exists and is not empty; choose another folder or pass --overwrite"
        )
    return True


def fsync_path(path: Path) -> None:
    """Flush a file's or directory's contents to disk (directories: best effort)."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # pragma: no cover - platforms that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def swap_in(tmp: Path, target: Path) -> None:
    """Replace ``target`` by ``tmp`` with renames only (each of which is atomic)."""
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:12]}"
        os.rename(target, old)
        os.rename(tmp, target)
        fsync_path(target.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, target)
        fsync_path(target.parent)


def recover_interrupted_swap(target: Path) -> None:
    """Put back a checkpoint left aside by a save that crashed between its two renames."""
    if target.exists() or not target.parent.is_dir():
        return
    backups = [
        p
        for p in target.parent.glob(f".{target.name}.old-*")
        if p.is_dir() and (p / CONFIG_FILE).is_file()
    ]
    if not backups:
        return
    latest = max(backups, key=lambda p: p.stat().st_mtime)
    logger.warning("restoring %s from %s, left by an interrupted save", target, latest.name)
    os.rename(latest, target)


def remove_stale_temps(target: Path) -> None:
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


__all__ = [
    "ADAPTER_FILE",
    "ADAPTER_KEY",
    "CONFIG_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "HEADER_KEYS",
    "MODEL_FILE",
    "OPTIMIZER_FILE",
    "SOURCE_TOKENIZER_DIR",
    "TOKENIZER_FILE",
    "TRAINER_STATE_FILE",
    "TRAINER_TENSORS_FILE",
    "cpu_contiguous",
    "fsync_path",
    "json_default",
    "load_tensors",
    "names",
    "read_json",
    "read_metadata",
    "recover_interrupted_swap",
    "remove_stale_temps",
    "swap_in",
    "write_json",
]
