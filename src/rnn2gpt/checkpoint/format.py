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

import logging
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from .. import __version__
from ..config import RunConfig
from ..errors import CheckpointError, ConfigError, TokenizerError
from ..models.lora import has_lora, load_lora_adapter, load_lora_state_dict, save_lora_adapter
from ..tokenizers.base import pick_source_tokenizer
from .files import (
    ADAPTER_FILE,
    ADAPTER_KEY,
    CONFIG_FILE,
    FORMAT,
    FORMAT_VERSION,
    HEADER_KEYS,
    MODEL_FILE,
    OPTIMIZER_FILE,
    SOURCE_TOKENIZER_DIR,
    TOKENIZER_FILE,
    TRAINER_STATE_FILE,
    TRAINER_TENSORS_FILE,
    cpu_contiguous,
    fsync_path,
    load_tensors,
    read_json,
    recover_interrupted_swap,
    remove_stale_temps,
    swap_in,
    write_json,
)
from .weights import (
    load_model_weights,
    load_optimizer_state,
    save_model_weights,
    save_optimizer_state,
    unwrap_model,
)

logger = logging.getLogger(__name__)


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

    path = Path(directory).expanduser()
    recover_interrupted_swap(path)
    config = read_config(path)
    for required in (MODEL_FILE, TOKENIZER_FILE):
        if not (path / required).is_file():
            raise CheckpointError(
                f"{path} has no {required}; the checkpoint is incomplete, save or copy it again"
            )
    tokenizer = read_tokenizer(path)
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
        trainer_state = read_json(path / TRAINER_STATE_FILE)
    tensors: dict[str, torch.Tensor] = {}
    if (path / TRAINER_TENSORS_FILE).is_file():
        tensors = load_tensors(path / TRAINER_TENSORS_FILE, "cpu")
    return Checkpoint(
        model, tokenizer, config, path, trainer_state, tensors, source_tokenizer=source_tokenizer
    )


def read_tokenizer(directory: str | os.PathLike[str]) -> Any:
    """The tokenizer of a checkpoint directory alone (no weights read); CheckpointError if it is
    missing or unreadable."""
    from ..tokenizers import load_tokenizer

    path = Path(directory).expanduser()
    if not (path / TOKENIZER_FILE).is_file():
        raise CheckpointError(
            f"{path} has no {TOKENIZER_FILE}; give a checkpoint folder (or its run folder)"
        )
    try:
        return load_tokenizer(path)
    except TokenizerError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


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
    data = read_json(config_path)
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
    sections = {k: v for k, v in data.items() if k not in HEADER_KEYS}
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
    name = read_json(path / CONFIG_FILE).get(ADAPTER_KEY)
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
        load_lora_state_dict(model, load_tensors(adapter, device))


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
    recover_interrupted_swap(target)
    remove_stale_temps(target)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}"
    os.mkdir(tmp)
    plain = unwrap_model(model)
    adapted = has_lora(plain)
    try:
        header = {ADAPTER_KEY: ADAPTER_FILE} if adapted else {}
        write_json(tmp / CONFIG_FILE, {**_config_json(config), **header})
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
            write_json(tmp / TRAINER_STATE_FILE, dict(trainer_state))
        if tensors:
            save_file(cpu_contiguous(dict(tensors)), str(tmp / TRAINER_TENSORS_FILE))
        # Deepest first, so each folder is flushed after what it holds.
        for file in sorted(tmp.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            fsync_path(file)
        fsync_path(tmp)
        swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.debug("saved checkpoint %s", target)
    return target


def _config_json(config: RunConfig) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "rnn2gpt_version": __version__,
        **config.to_dict(),
    }


# --------------------------------------------------------------------------- finding checkpoints

BEST, LAST = "best", "last"


def resolve_checkpoint_dir(directory: str | os.PathLike[str]) -> Path:
    """Accept a run directory too: prefer its ``best/``, then its ``last/`` checkpoint."""
    path = Path(directory).expanduser()
    if not (path / CONFIG_FILE).exists():
        for sub in (BEST, LAST):
            if (path / sub / CONFIG_FILE).exists():
                return path / sub
    return path


def resume_dir(run_dir: str | os.PathLike[str]) -> Path:
    """The checkpoint a run in ``run_dir`` resumes from (``run_dir/last``).

    Raises:
        CheckpointError: there is none (a save interrupted between its renames is restored).
    """
    last = Path(run_dir).expanduser() / LAST
    recover_interrupted_swap(last)
    if not last.is_dir():
        raise CheckpointError(
            f"cannot resume: {last} does not exist; start a new run without --resume"
        )
    return last


__all__ = [
    "BEST",
    "LAST",
    "Checkpoint",
    "adapter_file",
    "load_checkpoint",
    "load_weights",
    "read_config",
    "resolve_checkpoint_dir",
    "resume_dir",
    "save_checkpoint",
]
