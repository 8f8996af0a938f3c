"""Checkpoints: self-describing directories, written atomically, loaded without running code.

Its own floor, just above ``models`` and ``tokenizers`` (and beside ``data``): everything that
reads or writes a checkpoint (the trainer, interop, the API, the server) imports it from here.

- format.py: :class:`Checkpoint`, :func:`load_checkpoint`, :func:`save_checkpoint`,
  :func:`read_config`, :func:`resolve_checkpoint_dir`, :func:`resume_dir` (what a checkpoint
  directory holds; see its docstring)
- files.py: file names, JSON and safetensors helpers, the atomic swap
- weights.py: model weights (tied aliases stored once) and optimizer state
- state.py: RNG states and carried model states, for exact resume
- merge.py: :func:`merge_lora_checkpoint`, adapters folded into a plain checkpoint

May import: ``errors``, ``config``, ``tokenizers``, ``models``.
"""

from .files import ADAPTER_FILE, SOURCE_TOKENIZER_DIR
from .format import (
    BEST,
    LAST,
    Checkpoint,
    adapter_file,
    load_checkpoint,
    load_weights,
    read_config,
    read_tokenizer,
    resolve_checkpoint_dir,
    resume_dir,
    save_checkpoint,
)
from .merge import merge_lora_checkpoint
from .state import capture_rng_state, restore_rng_state, state_from_tensors, state_to_tensors
from .weights import (
    alias_groups,
    load_model_weights,
    load_optimizer_state,
    save_model_weights,
    save_optimizer_state,
    unwrap_model,
)

__all__ = [
    "ADAPTER_FILE",
    "BEST",
    "LAST",
    "SOURCE_TOKENIZER_DIR",
    "Checkpoint",
    "adapter_file",
    "alias_groups",
    "capture_rng_state",
    "load_checkpoint",
    "load_model_weights",
    "load_optimizer_state",
    "load_weights",
    "merge_lora_checkpoint",
    "read_config",
    "read_tokenizer",
    "resolve_checkpoint_dir",
    "restore_rng_state",
    "resume_dir",
    "save_checkpoint",
    "save_model_weights",
    "save_optimizer_state",
    "state_from_tensors",
    "state_to_tensors",
    "unwrap_model",
]
