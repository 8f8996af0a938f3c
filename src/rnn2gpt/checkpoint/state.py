"""What a run needs besides weights to resume exactly: RNG states, and model states (the
carried RNN state) flattened to named tensors and rebuilt from a template."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def capture_rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Python, NumPy and torch RNG states: a JSON part and a tensor part."""
    version, internal, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    json_part = {
        "python": [version, list(internal), gauss],
        "numpy": [np_kind, np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
    }
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = cuda_state
    return json_part, tensors


def restore_rng_state(json_part: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
    """Inverse of :func:`capture_rng_state` (parts that are absent are left alone)."""
    if "python" in json_part:
        version, internal, gauss = json_part["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in json_part:
        kind, keys, pos, has_gauss, gauss = json_part["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"].to("cpu", torch.uint8))
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available():
        for i, cuda_state in enumerate(cuda_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.to("cpu", torch.uint8), i)


def state_to_tensors(state: Any, prefix: str = "state") -> dict[str, torch.Tensor]:
    """Flatten a model state (a dataclass / tuple / list / dict of tensors) to named tensors.

    Python numbers become 0-d tensors and ``None`` is skipped, as are dataclass fields marked
    ``metadata={"transient": True}`` (decoding bookkeeping, not state to resume);
    :func:`state_from_tensors` rebuilds the same structure from a template (e.g.
    ``model.new_state(batch_size)``).
    """
    out: dict[str, torch.Tensor] = {}

    def visit(value: Any, name: str) -> None:
        if value is None:
            return
        if isinstance(value, torch.Tensor):
            out[name] = value.detach()
        elif isinstance(value, bool | int | float):
            out[name] = torch.tensor(value)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                if not f.metadata.get("transient"):
                    visit(getattr(value, f.name), f"{name}.{f.name}")
        elif isinstance(value, tuple | list):
            for i, item in enumerate(value):
                visit(item, f"{name}.{i}")
        elif isinstance(value, Mapping):
            for key, item in value.items():
                visit(item, f"{name}.{key}")
        else:
            raise TypeError(f"cannot store a {type(value).__name__} at {name} in a checkpoint")

    visit(state, prefix)
    return out


def state_from_tensors(
    template: Any, tensors: Mapping[str, torch.Tensor], prefix: str = "state"
) -> Any:
    """Rebuild a state shaped like ``template`` from :func:`state_to_tensors` output.

    Each leaf of ``template`` is replaced by the stored tensor of the same name when present
    (moved to the template leaf's device, and cast to its dtype when both are floating point: a
    state carried under bf16 autocast resumes in a run that computes in fp32); a ``None`` leaf
    takes a stored tensor as is.
    """

    def build(value: Any, name: str) -> Any:
        if name in tensors:
            stored = tensors[name]
            if isinstance(value, torch.Tensor):
                if stored.is_floating_point() and value.is_floating_point():
                    return stored.to(device=value.device, dtype=value.dtype)
                return stored.to(value.device)
            if isinstance(value, bool | int | float):
                return type(value)(stored.item())
            return stored
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            changes = {
                f.name: build(getattr(value, f.name), f"{name}.{f.name}")
                for f in dataclasses.fields(value)
                if f.init and not f.metadata.get("transient")
            }
            return dataclasses.replace(value, **changes)
        if isinstance(value, tuple | list):
            return type(value)(build(item, f"{name}.{i}") for i, item in enumerate(value))
        if isinstance(value, Mapping):
            return {key: build(item, f"{name}.{key}") for key, item in value.items()}
        return value

    return build(template, prefix)


__all__ = ["capture_rng_state", "restore_rng_state", "state_from_tensors", "state_to_tensors"]
