"""Checkpoints: self-describing directories, written atomically, loaded without running code.

A checkpoint directory holds::

    config.json               {"format": "rnn2gpt", "format_version": 1, "rnn2gpt_version": ...,
                               "model": {...}, "tokenizer": {...}, "data": ..., "train": ...,
                               "generate": ...}  (RunConfig.to_dict() sections)
    model.safetensors         the weights; a tied weight is stored once (see below)
    tokenizer.json            written by ``tokenizer.save(dir)``: the joint tokenizer, or the target
                              tokenizer of a seq2seq run with ``tokenizer.separate = true``
    source_tokenizer/tokenizer.json  (separate tokenizers only) the source tokenizer, written the
                              same way; its size is ``model.src_vocab_size``
    optimizer.safetensors     (to resume) optimizer state tensors named ``state.<param>.<key>``;
                              hyper-parameters of the param groups as JSON in the metadata
    trainer_state.json        (to resume) step, tokens, elapsed seconds, best metric, RNG states...
    trainer_state.safetensors (to resume) tensor state: torch RNG states, carried RNN state
    adapter.safetensors       (LoRA runs only) the adapters' A/B tensors, with their rank, alpha
                              and targets in the metadata; config.json then says
                              "adapter": "adapter.safetensors"

Nothing is pickled: safetensors and JSON only, so a checkpoint from a stranger loads safely.

**Tied weights.** A model that shares its embedding with its output layer has two state-dict
names for one tensor. Only the first name of each group of aliases is stored; loading fills every
alias from it (which name was kept does not matter: the model's own aliases are recomputed).

**LoRA checkpoints.** A model carrying LoRA adapters is saved as its *base* weights in
``model.safetensors`` (the names of the plain model) plus ``adapter.safetensors``;
:func:`load_checkpoint` re-applies the adapter, so generation and evaluation see the adapted
model, while the base file stays identical to the fine-tuning source and the adapter stays small.

**Atomic writes.** Everything is written into a fresh hidden directory beside the target and
fsynced; then the old checkpoint (if any) is renamed aside, the new one renamed into place and
the old one deleted. A crash at any point leaves either the old or the new checkpoint complete;
a crash between the two renames leaves the old one under ``.<name>.old-*``, which the next save
or load puts back.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .. import __version__
from ..config import RunConfig
from ..data.parallel import pick_source_tokenizer
from ..errors import CheckpointError, ConfigError, TokenizerError
from ..models.lora import (
    has_lora,
    is_adapter_tensor,
    load_lora_adapter,
    load_lora_state_dict,
    save_lora_adapter,
)

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
_HEADER_KEYS = ("format", "format_version", "rnn2gpt_version", ADAPTER_KEY)

# Optimizer settings that describe how this process runs the update, not what was learned:
# on load they keep the live optimizer's values (a fused-CPU checkpoint may resume elsewhere).
_RUNTIME_GROUP_KEYS = ("fused", "foreach", "capturable", "differentiable")


# --------------------------------------------------------------------------- loading


@dataclass
class Checkpoint:
    """A loaded checkpoint. ``model`` is built from ``config.model``, in eval mode.

    ``tokenizer`` is the joint tokenizer, or the target one of a run with separate tokenizers;
    ``source_tokenizer`` is the tokenizer that encodes sources: the checkpoint's own source
    tokenizer when it has one, else the same object as ``tokenizer``.
    """

    model: nn.Module
    tokenizer: Any
    config: RunConfig
    directory: Path
    trainer_state: dict[str, Any] | None = None
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    source_tokenizer: Any = None

    def __post_init__(self) -> None:
        self.source_tokenizer = pick_source_tokenizer(self.tokenizer, self.source_tokenizer)

    @property
    def separate_tokenizers(self) -> bool:
        """Whether sources have a tokenizer of their own (``tokenizer.separate = true``)."""
        return self.source_tokenizer is not self.tokenizer

    @property
    def has_optimizer_state(self) -> bool:
        return (self.directory / OPTIMIZER_FILE).is_file()

    @property
    def has_adapter(self) -> bool:
        """Whether ``model`` carries LoRA adapters (read from ``adapter.safetensors``)."""
        return has_lora(self.model)

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        """Restore ``optimizer`` (built over this model's parameters) from the checkpoint."""
        load_optimizer_state(self.directory, optimizer)


def load_checkpoint(directory: str | os.PathLike[str], map_location: Any = "cpu") -> Checkpoint:
    """Read a checkpoint directory: config, tokenizer, model weights, and any trainer state.

    Raises:
        CheckpointError: the directory is missing or not an rnn2gpt checkpoint, was written by a
            newer rnn2gpt, or has missing, corrupt or mismatched files (the message says which).
    """
    from ..models import build_model
    from ..tokenizers import load_tokenizer

    path = Path(directory).expanduser()
    _recover_interrupted_swap(path)
    config = read_config(path)
    for required in (MODEL_FILE, TOKENIZER_FILE):
        if not (path / required).is_file():
            raise CheckpointError(
                f"{path} has no {required}; the checkpoint is incomplete, save or copy it again"
            )
    try:
        tokenizer = load_tokenizer(path)
    except TokenizerError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if config.model.vocab_size != tokenizer.vocab_size:
        raise CheckpointError(
            f"{path}: config.json says vocab_size {config.model.vocab_size} but tokenizer.json "
            f"has {tokenizer.vocab_size} tokens; the files come from different runs"
        )
    source_tokenizer = _load_source_tokenizer(path, config)
    try:
        model = build_model(config.model)
    except ConfigError as exc:
        raise CheckpointError(f"{path / CONFIG_FILE}: {exc}") from None
    device = torch.device(map_location) if map_location is not None else torch.device("cpu")
    model.to(device)
    load_model_weights(model, path / MODEL_FILE, device)
    adapter = adapter_file(path)
    if adapter is not None:
        load_lora_adapter(model, adapter)  # CheckpointError when it is missing or does not fit
        model.to(device)
    model.eval()

    trainer_state = None
    if (path / TRAINER_STATE_FILE).is_file():
        trainer_state = _read_json(path / TRAINER_STATE_FILE)
    tensors: dict[str, torch.Tensor] = {}
    if (path / TRAINER_TENSORS_FILE).is_file():
        tensors = _load_tensors(path / TRAINER_TENSORS_FILE, "cpu")
    return Checkpoint(
        model, tokenizer, config, path, trainer_state, tensors, source_tokenizer=source_tokenizer
    )


def _load_source_tokenizer(path: Path, config: RunConfig) -> Any:
    """The separate source tokenizer of a ``tokenizer.separate`` checkpoint, else None (the
    joint tokenizer encodes sources); checked against ``model.src_vocab_size``."""
    from ..tokenizers import load_tokenizer

    src_size = config.model.src_vocab_size
    if not config.tokenizer.separate:
        if src_size:
            raise CheckpointError(
                f"{path}: config.json gives the encoder its own vocabulary (model.src_vocab_size="
                f"{src_size}) but no source tokenizer (tokenizer.separate is false); the "
                "checkpoint is damaged, save or copy it again"
            )
        return None
    folder = path / SOURCE_TOKENIZER_DIR
    if not (folder / TOKENIZER_FILE).is_file():
        raise CheckpointError(
            f"{path} was trained with separate source and target tokenizers but has no "
            f"{SOURCE_TOKENIZER_DIR}/{TOKENIZER_FILE}; the checkpoint is incomplete, save or copy "
            "it again"
        )
    try:
        source_tokenizer = load_tokenizer(folder)
    except TokenizerError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if src_size != source_tokenizer.vocab_size:
        raise CheckpointError(
            f"{path}: config.json says src_vocab_size {src_size} but "
            f"{SOURCE_TOKENIZER_DIR}/{TOKENIZER_FILE} has {source_tokenizer.vocab_size} tokens; "
            "the files come from different runs"
        )
    return source_tokenizer


def read_config(directory: str | os.PathLike[str]) -> RunConfig:
    """The :class:`RunConfig` stored in ``directory/config.json`` (checked, not yet validated)."""
    path = Path(directory).expanduser()
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: the directory does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{path} is a file; a checkpoint is a directory (e.g. runs/x/best)")
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(
            f"{path} is not an rnn2gpt checkpoint (no {CONFIG_FILE}); point to a checkpoint "
            "directory such as runs/<name>/best"
        )
    data = _read_json(config_path)
    if data.get("format") != FORMAT:
        if "model_type" in data:
            raise CheckpointError(
                f"{path} holds a Hugging Face model ({data['model_type']!r}); convert it first "
                f"with `rnn2gpt import-hf {path} OUT_DIR`"
            )
        raise CheckpointError(
            f'{config_path} is not an rnn2gpt checkpoint config (no "format": "rnn2gpt")'
        )
    version = data.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{config_path}: invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by rnn2gpt {data.get('rnn2gpt_version', '?')} (checkpoint format "
            f"{version}); this rnn2gpt {__version__} reads format {FORMAT_VERSION} at most: "
            "upgrade rnn2gpt (pip install -U rnn2gpt)"
        )
    sections = {k: v for k, v in data.items() if k not in _HEADER_KEYS}
    try:
        return RunConfig.from_dict(sections, source=str(config_path))
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None


def adapter_file(directory: str | os.PathLike[str]) -> Path | None:
    """The LoRA adapter file a checkpoint's config.json names, or None for a plain checkpoint.

    Raises:
        CheckpointError: config.json names an adapter file that is not there.
    """
    path = Path(directory).expanduser()
    name = _read_json(path / CONFIG_FILE).get(ADAPTER_KEY)
    if not name:
        return None
    file = path / Path(str(name)).name  # a bare file name inside the checkpoint, never a path
    if not file.is_file():
        raise CheckpointError(
            f"{path} is a LoRA checkpoint but has no {file.name}; the checkpoint is incomplete, "
            "save or copy it again"
        )
    return file


def load_weights(model: nn.Module, directory: str | os.PathLike[str], device: Any = "cpu") -> None:
    """Load a checkpoint's weights into a model already built (and, for a LoRA checkpoint,
    already adapted with the same targets and rank): base weights, then adapter tensors."""
    path = Path(directory).expanduser()
    load_model_weights(model, path / MODEL_FILE, device)
    adapter = adapter_file(path)
    if adapter is not None and has_lora(model):
        load_lora_state_dict(model, _load_tensors(adapter, device))


def load_model_weights(model: nn.Module, file: Path, device: torch.device | str = "cpu") -> None:
    """Load ``file`` into ``model``, filling tied aliases; clear errors for any mismatch.

    A model carrying LoRA adapters takes its base weights from ``file`` and keeps its adapter
    tensors (they live in ``adapter.safetensors``; see :func:`load_weights`).
    """
    stored = _load_tensors(file, device)
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
        problems.append(f"missing tensors {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors {_names(unexpected)}")
    if shapes:
        problems.append("mis-shaped tensors " + _names(shapes))
    if problems:
        raise CheckpointError(
            f"{file} does not match the model described by config.json: {'; '.join(problems)}; "
            "the weights and config come from different models"
        )
    # Every base tensor was checked above; only the adapters (if any) are left out here.
    model.load_state_dict(full, strict=not has_lora(model))


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
    tensors = _load_tensors(file, "cpu")
    meta = _read_metadata(file)
    kind = meta.get("optimizer")
    if kind != type(optimizer).__name__:
        raise CheckpointError(
            f"{file} holds {kind} state but the run uses {type(optimizer).__name__}; keep "
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


# --------------------------------------------------------------------------- saving


def save_checkpoint(
    directory: str | os.PathLike[str],
    *,
    model: nn.Module,
    tokenizer: Any,
    config: RunConfig,
    optimizer: torch.optim.Optimizer | None = None,
    trainer_state: Mapping[str, Any] | None = None,
    tensors: Mapping[str, torch.Tensor] | None = None,
    source_tokenizer: Any = None,
) -> Path:
    """Write a checkpoint to ``directory`` atomically (replacing any checkpoint there).

    ``model`` may be wrapped (DDP, ``torch.compile``); the plain module's weights are stored.
    ``trainer_state`` must be JSON-serialisable; ``tensors`` are extra tensors for resuming.
    ``source_tokenizer`` is written to ``source_tokenizer/`` when ``config.tokenizer.separate``
    (then it is required), and ignored otherwise (``tokenizer`` then encodes both sides).
    Returns the checkpoint path.
    """
    separate = config.tokenizer.separate
    if separate and (source_tokenizer is None or source_tokenizer is tokenizer):
        raise CheckpointError(
            "config says tokenizer.separate=true, so the checkpoint needs the source tokenizer: "
            "pass source_tokenizer= to save_checkpoint"
        )
    target = Path(directory).expanduser()
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"cannot save a checkpoint to {target}: a file of that name exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    _recover_interrupted_swap(target)
    _remove_stale_temps(target)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}"
    os.mkdir(tmp)
    plain = unwrap_model(model)
    adapted = has_lora(plain)
    try:
        header = {ADAPTER_KEY: ADAPTER_FILE} if adapted else {}
        _write_json(tmp / CONFIG_FILE, {**_config_json(config), **header})
        save_model_weights(plain, tmp / MODEL_FILE)
        if adapted:
            save_lora_adapter(plain, tmp / ADAPTER_FILE)
        tokenizer.save(tmp)
        if separate:
            os.mkdir(tmp / SOURCE_TOKENIZER_DIR)
            source_tokenizer.save(tmp / SOURCE_TOKENIZER_DIR)
        if optimizer is not None:
            save_optimizer_state(optimizer, tmp / OPTIMIZER_FILE)
        if trainer_state is not None:
            _write_json(tmp / TRAINER_STATE_FILE, dict(trainer_state))
        if tensors:
            save_file(_cpu_contiguous(dict(tensors)), str(tmp / TRAINER_TENSORS_FILE))
        # Deepest first, so each folder is flushed after what it holds.
        for file in sorted(tmp.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            _fsync_path(file)
        _fsync_path(tmp)
        _swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.debug("saved checkpoint %s", target)
    return target


def save_model_weights(model: nn.Module, file: Path) -> None:
    """Store ``model.state_dict()`` with each group of tied aliases stored once.

    LoRA adapter tensors are left out: the file holds the base model, under its plain names.
    """
    state = {k: v for k, v in model.state_dict().items() if not is_adapter_tensor(k)}
    kept = {group[0]: state[group[0]] for group in alias_groups(state)}
    tied = {alias: group[0] for group in alias_groups(state) for alias in group[1:]}
    metadata = {"format": "pt", "tied": json.dumps(tied)}
    save_file(_cpu_contiguous(kept), str(file), metadata=metadata)


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
        "optimizer": type(optimizer).__name__,
        "param_groups": json.dumps(state_dict["param_groups"], default=_json_default),
        "state_extra": json.dumps(extra, default=_json_default),
    }
    save_file(_cpu_contiguous(tensors), str(file), metadata=metadata)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


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


# --------------------------------------------------------------------------- resume helpers


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

    Python numbers become 0-d tensors and ``None`` is skipped; :func:`state_from_tensors`
    rebuilds the same structure from a template (e.g. ``model.new_state(batch_size)``).
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
                if f.init
            }
            return dataclasses.replace(value, **changes)
        if isinstance(value, tuple | list):
            return type(value)(build(item, f"{name}.{i}") for i, item in enumerate(value))
        if isinstance(value, Mapping):
            return {key: build(item, f"{name}.{key}") for key, item in value.items()}
        return value

    return build(template, prefix)


# --------------------------------------------------------------------------- file helpers


def _config_json(config: RunConfig) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "rnn2gpt_version": __version__,
        **config.to_dict(),
    }


def _load_tensors(file: Path, device: Any) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{file} is corrupt or truncated ({exc}); save or copy the checkpoint again"
        ) from None


def _read_metadata(file: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{file} is corrupt or truncated ({exc})") from None


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{file} cannot be read as JSON ({exc}); the checkpoint is damaged"
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file} must hold a JSON object; the checkpoint is damaged")
    return data


def _write_json(file: Path, data: Mapping[str, Any]) -> None:
    file.write_text(json.dumps(data, indent=1, default=_json_default) + "\n", encoding="utf-8")


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _cpu_contiguous(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _fsync_path(path: Path) -> None:
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


def _swap_in(tmp: Path, target: Path) -> None:
    """Replace ``target`` by ``tmp`` with renames only (each of which is atomic)."""
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:12]}"
        os.rename(target, old)
        os.rename(tmp, target)
        _fsync_path(target.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, target)
        _fsync_path(target.parent)


def _recover_interrupted_swap(target: Path) -> None:
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


def _remove_stale_temps(target: Path) -> None:
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


__all__ = [
    "ADAPTER_FILE",
    "SOURCE_TOKENIZER_DIR",
    "Checkpoint",
    "CheckpointError",
    "adapter_file",
    "alias_groups",
    "capture_rng_state",
    "load_checkpoint",
    "load_model_weights",
    "load_weights",
    "load_optimizer_state",
    "read_config",
    "restore_rng_state",
    "save_checkpoint",
    "save_model_weights",
    "save_optimizer_state",
    "state_from_tensors",
    "state_to_tensors",
    "unwrap_model",
]
