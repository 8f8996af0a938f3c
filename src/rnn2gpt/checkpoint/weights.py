"""Model and optimizer tensors in safetensors files: tied weights stored once, LoRA adapters
apart, optimizer state as named tensors plus JSON metadata.

**Tied weights.** A model that shares its embedding with its output layer has two state-dict
names for one tensor. Only the first name of each group of aliases is stored; loading fills every
alias from it (which name was kept does not matter: the model's own aliases are recomputed).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ..errors import CheckpointError
from ..models.base import unwrap_model
from ..models.lora import has_lora, is_adapter_tensor
from ..models.quantized import is_quantized, quantize_model
from .files import OPTIMIZER_FILE, cpu_contiguous, json_default, load_tensors, names, read_metadata

# Optimizer settings that describe how this process runs the update, not what was learned:
# on load they keep the live optimizer's values (a fused-CPU checkpoint may resume elsewhere).
_RUNTIME_GROUP_KEYS = ("fused", "foreach", "capturable", "differentiable")


def alias_groups(state: Mapping[str, torch.Tensor]) -> list[list[str]]:
    """State-dict names grouped by the tensor they view (tied weights share a group).

    Two names alias when they view the same memory with the same offset, shape and strides.
    Groups keep state-dict order, so the first name of each group is the canonical one.
    """
    groups: dict[tuple, list[str]] = {}
    for name, tensor in state.items():
        if tensor.device.type == "meta" or tensor.numel() == 0:
            key: tuple = ("unique", name)
        else:
            key = (
                tensor.device.type,
                tensor.untyped_storage().data_ptr(),
                tensor.storage_offset(),
                tuple(tensor.shape),
                tuple(tensor.stride()),
                tensor.dtype,
            )
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def save_model_weights(model: nn.Module, file: Path) -> None:
    """Store ``model.state_dict()`` with each group of tied aliases stored once.

    LoRA adapter tensors are left out: the file holds the base model, under its plain names.
    """
    state = {k: v for k, v in model.state_dict().items() if not is_adapter_tensor(k)}
    kept = {group[0]: state[group[0]] for group in alias_groups(state)}
    tied = {alias: group[0] for group in alias_groups(state) for alias in group[1:]}
    metadata = {"format": "pt", "tied": json.dumps(tied)}
    save_file(cpu_contiguous(kept), str(file), metadata=metadata)


def load_model_weights(model: nn.Module, file: Path, device: torch.device | str = "cpu") -> None:
    """Load ``file`` into ``model``, filling tied aliases; clear errors for any mismatch.

    A model carrying LoRA adapters takes its base weights from ``file`` and keeps its adapter
    tensors (they live in ``adapter.safetensors``; see :func:`load_weights`).
    """
    stored = load_tensors(file, device)
    if any(name.endswith(".qweight") for name in stored) and not is_quantized(model):
        quantize_model(model)  # an int8 checkpoint (rnn2gpt quantize): int8 layers to fill
    expected = {k: v for k, v in model.state_dict().items() if not is_adapter_tensor(k)}
    groups = alias_groups(expected)
    full: dict[str, torch.Tensor] = {}
    missing, shapes = [], []
    for group in groups:
        present = [name for name in group if name in stored]
        if not present:
            missing.append(group[0])
            continue
        tensor, want = stored[present[0]], expected[group[0]].shape
        if tensor.shape != want:
            shapes.append(f"{present[0]} {tuple(tensor.shape)} (model expects {tuple(want)})")
        for name in group:
            full[name] = tensor
    unexpected = sorted(set(stored) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing tensors {names(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors {names(unexpected)}")
    if shapes:
        problems.append("mis-shaped tensors " + names(shapes))
    if problems:
        raise CheckpointError(
            f"{file} does not match the model described by config.json: {'; '.join(problems)}; "
            "the weights and config come from different models"
        )
    # Every base tensor was checked above; only the adapters (if any) are left out here.
    model.load_state_dict(full, strict=not has_lora(model))


def optimizer_kind(optimizer: torch.optim.Optimizer) -> str:
    """The algorithm's name as PyTorch calls it ("AdamW", "SGD"): that of the first PyTorch class
    among the optimizer's classes, so that a subclass (rnn2gpt's NativeAdamW) writes and reads
    the same state as PyTorch's own."""
    for cls in type(optimizer).__mro__:
        if cls.__module__.startswith("torch.optim"):
            return cls.__name__
    return type(optimizer).__name__


def save_optimizer_state(optimizer: torch.optim.Optimizer, file: Path) -> None:
    """Tensors of ``optimizer.state_dict()['state']`` as ``state.<index>.<key>``; the rest JSON."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    extra: dict[str, dict[str, Any]] = {}
    for index, values in state_dict["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value
            else:
                extra.setdefault(str(index), {})[key] = value
    metadata = {
        "optimizer": optimizer_kind(optimizer),
        "param_groups": json.dumps(state_dict["param_groups"], default=json_default),
        "state_extra": json.dumps(extra, default=json_default),
    }
    save_file(cpu_contiguous(tensors), str(file), metadata=metadata)


def load_optimizer_state(
    directory: str | os.PathLike[str], optimizer: torch.optim.Optimizer
) -> None:
    """Restore ``optimizer`` from ``directory/optimizer.safetensors``.

    Raises:
        CheckpointError: no optimizer file, another optimizer type, or parameter groups that do
            not match (the model changed).
    """
    file = Path(directory) / OPTIMIZER_FILE
    if not file.is_file():
        raise CheckpointError(
            f"{file.parent} has no {OPTIMIZER_FILE}, so training cannot resume from it; start a "
            "new run (use it as init_from to fine-tune)"
        )
    tensors = load_tensors(file, "cpu")
    meta = read_metadata(file)
    kind = meta.get("optimizer")
    if kind != optimizer_kind(optimizer):
        raise CheckpointError(
            f"{file} holds {kind} state but the run uses {optimizer_kind(optimizer)}; keep "
            "train.optimizer as it was, or start a new run"
        )
    try:
        saved_groups = json.loads(meta["param_groups"])
        extra = json.loads(meta.get("state_extra", "{}"))
    except (KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{file}: damaged metadata ({exc}); start a new run") from None
    live_groups = optimizer.param_groups
    if len(saved_groups) != len(live_groups) or any(
        len(s["params"]) != len(g["params"]) for s, g in zip(saved_groups, live_groups)
    ):
        raise CheckpointError(
            f"{file}: the optimizer's parameter groups do not match the model "
            f"({[len(s['params']) for s in saved_groups]} vs "
            f"{[len(g['params']) for g in live_groups]} parameters); start a new run"
        )
    for saved, live in zip(saved_groups, live_groups):
        if isinstance(saved.get("betas"), list):
            saved["betas"] = tuple(saved["betas"])
        for key in _RUNTIME_GROUP_KEYS:
            if key in live:
                saved[key] = live[key]
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = tensor
    for index, values in extra.items():
        state.setdefault(int(index), {}).update(values)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": saved_groups})
    except (ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(
            f"{file} does not fit this optimizer ({exc}); start a new run"
        ) from None


__all__ = [
    "alias_groups",
    "load_model_weights",
    "load_optimizer_state",
    "save_model_weights",
    "save_optimizer_state",
    "unwrap_model",
]
