"""Hugging Face GPT-2 folders: import one as an rnn2gpt checkpoint, export a GPT checkpoint as one.

The command-level entry points of ``rnn2gpt import-hf`` / ``export-hf`` are :func:`import_hf`
and :func:`export_hf`. The weight and config mapping itself is :mod:`rnn2gpt.models.hf` (pure
functions); this module reads and writes the files: Hugging Face's ``config.json``, weights,
tokenizer and generation settings on one side, rnn2gpt checkpoints on the other.
``transformers`` itself is never needed: the files are plain JSON, safetensors and (for old
checkpoints) a weights-only ``torch.load``.

May import: ``errors``, ``config``, ``tokenizers``, ``models``, ``checkpoint``.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..checkpoint import load_checkpoint, save_checkpoint
from ..checkpoint.files import destination_in_use, swap_in
from ..config import GenerationConfig, RunConfig, TokenizerConfig, TrainConfig
from ..errors import CheckpointError, ConfigError
from ..models.gpt import GPT
from ..models.hf import (
    LM_HEAD_KEY,
    WTE_KEY,
    canonical_name,
    gpt2_config_to_model_config,
    gpt2_state_dict,
    load_gpt2_state_dict,
    model_config_to_gpt2_config,
)
from ..models.lora import has_lora, merge_lora
from ..tokenizers import BPETokenizer
from ..tokenizers.bpe import EOT_TOKEN

logger = logging.getLogger(__name__)

HF_CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
PYTORCH_BIN_FILE = "pytorch_model.bin"
GENERATION_CONFIG_FILE = "generation_config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
# Written instead of tokenizer.json when a char/word tokenizer is exported with weights_only:
# transformers cannot read our own format, and a tokenizer.json it cannot read would break
# AutoTokenizer, so the file keeps a name of its own.
RNN2GPT_TOKENIZER_FILE = "rnn2gpt_tokenizer.json"


def read_gpt2_weights(src_dir: str | os.PathLike[str]) -> tuple[dict[str, Tensor], Path]:
    """The tensors of a Hugging Face model directory and the file they came from.

    Reads ``model.safetensors``, a sharded ``model.safetensors.index.json``, or (old checkpoints)
    ``pytorch_model.bin`` with ``torch.load(weights_only=True)``, which runs no code.

    Raises:
        CheckpointError: no weights file, or a corrupt one.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    src = Path(src_dir)
    single, index, binary = (
        src / SAFETENSORS_FILE,
        src / SAFETENSORS_INDEX_FILE,
        src / PYTORCH_BIN_FILE,
    )
    try:
        if single.is_file():
            return load_file(str(single)), single
        if index.is_file():
            weight_map = _read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index} has no weight_map; the download is incomplete")
            tensors: dict[str, Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                shard_path = src / str(shard)
                if not shard_path.is_file():
                    raise CheckpointError(
                        f"{index} lists shard {shard} but {shard_path} is missing; download it"
                    )
                tensors.update(load_file(str(shard_path)))
            return tensors, index
        if binary.is_file():
            try:
                state = torch.load(binary, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError:
                raise CheckpointError(
                    f"{binary} holds Python objects beyond tensors, which a safe (weights-only) "
                    "load refuses to run; re-save the model with save_pretrained as safetensors"
                ) from None
            if not isinstance(state, dict) or not all(
                isinstance(v, Tensor) for v in state.values()
            ):
                raise CheckpointError(f"{binary} does not hold a plain state dict of tensors")
            return dict(state), binary
    except (SafetensorError, OSError, RuntimeError, ValueError, EOFError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(
            f"cannot read the weights in {src} ({exc}); the file is corrupt or truncated, "
            "download it again"
        ) from None
    raise CheckpointError(
        f"{src} has no weights: expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX_FILE} or "
        f"{PYTORCH_BIN_FILE}"
    )


def import_hf(
    src_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Convert a Hugging Face GPT-2 directory into an rnn2gpt checkpoint at ``out_dir``.

    ``src_dir`` needs ``config.json`` (``model_type`` "gpt2"), the weights (see
    :func:`read_gpt2_weights`) and the tokenizer (``tokenizer.json`` or ``vocab.json`` +
    ``merges.txt``). When the model's vocabulary is padded past the tokenizer's (e.g. 50304
    rows for 50257 tokens), the rows no token can produce are dropped, since a checkpoint's
    model and tokenizer must agree. An existing non-empty ``out_dir`` is replaced only with
    ``overwrite=True``, and only if it is an rnn2gpt checkpoint. Returns the checkpoint path.

    Raises:
        CheckpointError: a missing directory or file, a non-GPT-2 model, an unsupported GPT-2
            variant, or weights that do not match the config (the message names the tensor).
    """

    src = _existing_dir(src_dir, "Hugging Face model")
    out = Path(out_dir).expanduser()
    _check_destination(out, overwrite, kind="rnn2gpt")
    config_path = src / HF_CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(
            f"{src} has no {HF_CONFIG_FILE}; point to a Hugging Face model directory "
            "(the folder save_pretrained wrote)"
        )
    hf_config = _read_json(config_path)
    if hf_config.get("format") == "rnn2gpt":
        raise CheckpointError(f"{src} is already an rnn2gpt checkpoint; there is nothing to import")

    tokenizer = BPETokenizer.from_files(_tokenizer_source(src))
    tensors, weights_file = read_gpt2_weights(src)
    canonical = {canonical_name(k) for k in tensors}
    bias = "h.0.attn.c_attn.bias" in canonical or "ln_f.bias" in canonical
    try:
        model_config = gpt2_config_to_model_config(hf_config, bias=bias)
    except ConfigError as exc:
        raise CheckpointError(f"{config_path}: {exc}") from None

    if tokenizer.vocab_size > model_config.vocab_size:
        raise CheckpointError(
            f"the tokenizer in {src} has {tokenizer.vocab_size} tokens but the model only "
            f"{model_config.vocab_size}; the tokenizer files belong to another model"
        )
    if tokenizer.vocab_size < model_config.vocab_size:
        logger.warning(
            "the model has %d vocabulary rows but the tokenizer only %d tokens; dropping the "
            "%d rows no token can produce",
            model_config.vocab_size,
            tokenizer.vocab_size,
            model_config.vocab_size - tokenizer.vocab_size,
        )
        tensors = _truncate_vocab(tensors, model_config.vocab_size, tokenizer.vocab_size)
        model_config = replace(model_config, vocab_size=tokenizer.vocab_size)

    model = GPT(model_config)
    load_gpt2_state_dict(model, tensors, source=str(weights_file))
    model.eval()

    run_config = RunConfig(
        model=model_config,
        tokenizer=TokenizerConfig(kind="bpe", vocab_size=tokenizer.vocab_size),
        train=TrainConfig(seq_len=min(TrainConfig().seq_len, model_config.block_size)),
        generate=_generation_from_hf(src),
    )
    path = save_checkpoint(out, model=model, tokenizer=tokenizer, config=run_config)
    logger.info("imported %s (%d parameters) into %s", src, model.num_parameters(), path)
    return path


def _tokenizer_source(src: Path) -> Path:
    """The directory or file the tokenizer is read from, or a CheckpointError naming what lacks."""
    if (src / "tokenizer.json").is_file():
        return src / "tokenizer.json"
    has_vocab, has_merges = (src / "vocab.json").is_file(), (src / "merges.txt").is_file()
    if has_vocab and has_merges:
        return src
    found = [name for name, ok in (("vocab.json", has_vocab), ("merges.txt", has_merges)) if ok]
    extra = f" (found only {found[0]})" if found else ""
    raise CheckpointError(
        f"{src} has no tokenizer: it needs tokenizer.json, or vocab.json and merges.txt{extra}; "
        "copy the tokenizer files of this model into the directory"
    )


def _truncate_vocab(tensors: Mapping[str, Tensor], rows: int, keep: int) -> dict[str, Tensor]:
    """Drop vocabulary rows past ``keep`` from wte and lm_head (whatever their prefix)."""
    out = dict(tensors)
    for name, tensor in tensors.items():
        if (
            canonical_name(name) in (WTE_KEY, LM_HEAD_KEY)
            and tensor.dim() == 2
            and tensor.shape[0] == rows
        ):
            out[name] = tensor[:keep]
    return out


def _generation_from_hf(src: Path) -> GenerationConfig:
    """Our generation defaults, with the sampling settings of ``generation_config.json``."""
    path = src / GENERATION_CONFIG_FILE
    if not path.is_file():
        return GenerationConfig()
    data = _read_json(path)
    values: dict[str, Any] = {}
    if data.get("do_sample") is False:
        values["temperature"] = 0.0
    elif data.get("do_sample") is True:
        for key in ("temperature", "top_p", "typical_p"):
            if isinstance(data.get(key), (int, float)):
                values[key] = float(data[key])
        if isinstance(data.get("top_k"), int):
            values["top_k"] = data["top_k"]
        if isinstance(data.get("min_p"), (int, float)):
            values["min_p"] = float(data["min_p"])
    if isinstance(data.get("repetition_penalty"), (int, float)):
        values["repetition_penalty"] = float(data["repetition_penalty"])
    if isinstance(data.get("no_repeat_ngram_size"), int):
        values["no_repeat_ngram_size"] = data["no_repeat_ngram_size"]
    if isinstance(data.get("max_new_tokens"), int):
        values["max_new_tokens"] = data["max_new_tokens"]
    config = replace(GenerationConfig(), **values)
    try:
        config.validate()
    except ConfigError as exc:
        logger.warning("ignoring %s (%s); using rnn2gpt's generation defaults", path, exc)
        return GenerationConfig()
    return config


def export_hf(
    checkpoint_dir: str | os.PathLike[str],
    dest_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    weights_only: bool = False,
) -> Path:
    """Write a GPT checkpoint as a Hugging Face GPT-2 directory at ``dest_dir``.

    Writes ``config.json``, ``model.safetensors``, ``generation_config.json`` and, for a BPE
    tokenizer, ``tokenizer.json``, ``vocab.json``, ``merges.txt``, ``tokenizer_config.json`` and
    ``special_tokens_map.json``, so that ``AutoModelForCausalLM.from_pretrained(dest)`` and
    ``AutoTokenizer.from_pretrained(dest)`` work offline.

    A char or word tokenizer has no GPT-2 equivalent. By default that is an error; with
    ``weights_only=True`` the model is exported anyway and the tokenizer is kept as
    ``rnn2gpt_tokenizer.json`` (readable with ``rnn2gpt.tokenizers.load_tokenizer``), so the
    ids can still be produced and decoded. Writes are atomic; an existing non-empty
    ``dest_dir`` is replaced only with ``overwrite=True``, and only if it holds a GPT-2 export.
    Returns ``dest_dir``.

    Raises:
        CheckpointError: not a GPT checkpoint, a non-BPE tokenizer without ``weights_only``, or
            a destination that is not safe to write.
    """

    dest = Path(dest_dir).expanduser()

    checkpoint = load_checkpoint(checkpoint_dir)
    model, tokenizer, run_config = checkpoint.model, checkpoint.tokenizer, checkpoint.config
    if has_lora(model):  # a LoRA checkpoint exports as the adapted model, as plain weights
        model = merge_lora(model)
    if run_config.model.arch != "gpt":
        raise CheckpointError(
            f"only GPT checkpoints export to the GPT-2 format; {checkpoint.directory} holds a "
            f"{run_config.model.arch} model"
        )
    if run_config.model.adaptive_cutoffs:
        raise CheckpointError(
            f"{checkpoint.directory} has an adaptive softmax output (model.adaptive_cutoffs), "
            "which GPT-2 models do not have; only GPT checkpoints with a plain output export"
        )
    is_bpe = getattr(tokenizer, "kind", None) == "bpe"
    if not is_bpe and not weights_only:
        raise CheckpointError(
            f"{checkpoint.directory} uses a {tokenizer.kind} tokenizer, which has no Hugging Face "
            "equivalent; export the weights alone with weights_only (--weights-only), or train "
            "with tokenizer.kind=bpe"
        )
    _check_destination(dest, overwrite, kind="gpt2")
    eos = tokenizer.eos_id if is_bpe else None
    bos = tokenizer.bos_id if is_bpe else None

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        from safetensors.torch import save_file

        hf_config = model_config_to_gpt2_config(
            run_config.model, bos_token_id=bos, eos_token_id=eos
        )
        _write_json(tmp / HF_CONFIG_FILE, hf_config)
        save_file(gpt2_state_dict(model), str(tmp / SAFETENSORS_FILE), metadata={"format": "pt"})
        _write_json(tmp / GENERATION_CONFIG_FILE, _generation_to_hf(run_config.generate, bos, eos))
        if is_bpe:
            _write_bpe_files(tokenizer, tmp, run_config.model.block_size)
        else:
            # Saved through the contract's save(dir), then renamed out of transformers' way.
            tokenizer.save(tmp / ".tokenizer")
            (tmp / ".tokenizer" / "tokenizer.json").rename(tmp / RNN2GPT_TOKENIZER_FILE)
            (tmp / ".tokenizer").rmdir()
            logger.warning(
                "exported the weights only: the %s tokenizer is kept as %s and must be used "
                "through rnn2gpt (transformers cannot read it)",
                tokenizer.kind,
                RNN2GPT_TOKENIZER_FILE,
            )
        swap_in(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("exported %s to %s", checkpoint.directory, dest)
    return dest


def _write_bpe_files(tokenizer: Any, directory: Path, max_length: int) -> None:
    """tokenizer.json, vocab.json + merges.txt, and the two small transformers JSON files."""

    tokenizer.save(directory)
    tokenizer.save_gpt2_files(directory)
    specials: dict[str, str] = {}
    if tokenizer.eos_id is not None:
        # GPT-2's convention: <|endoftext|> is bos, eos and unk (it is never produced as unk,
        # byte-level BPE covers every string); pad too, as rnn2gpt uses it.
        specials = {
            name: EOT_TOKEN for name in ("bos_token", "eos_token", "unk_token", "pad_token")
        }
    _write_json(
        directory / TOKENIZER_CONFIG_FILE,
        {
            "tokenizer_class": "GPT2Tokenizer",
            "model_max_length": max_length,
            "add_prefix_space": False,
            "add_bos_token": False,
            # decode must give back the exact text, as rnn2gpt's decode does
            "clean_up_tokenization_spaces": False,
            **specials,
        },
    )
    _write_json(directory / SPECIAL_TOKENS_FILE, specials)


def _generation_to_hf(gen: GenerationConfig, bos: int | None, eos: int | None) -> dict[str, Any]:
    """``generation_config.json``: the special ids and the checkpoint's decoding defaults."""
    out: dict[str, Any] = {"bos_token_id": bos, "eos_token_id": eos}
    if eos is not None:
        out["pad_token_id"] = eos
    out["max_new_tokens"] = gen.max_new_tokens
    if gen.greedy:
        out["do_sample"] = False
    else:
        out.update(do_sample=True, temperature=gen.temperature, top_k=gen.top_k, top_p=gen.top_p)
        if gen.min_p > 0:
            out["min_p"] = gen.min_p
        if gen.typical_p < 1:
            out["typical_p"] = gen.typical_p
    if gen.repetition_penalty != 1.0:
        out["repetition_penalty"] = gen.repetition_penalty
    if gen.no_repeat_ngram_size:
        out["no_repeat_ngram_size"] = gen.no_repeat_ngram_size
    return out


def _existing_dir(path: str | os.PathLike[str], what: str) -> Path:
    src = Path(path).expanduser()
    if not src.exists():
        raise CheckpointError(f"no {what} at {src}: the directory does not exist")
    if not src.is_dir():
        raise CheckpointError(f"{src} is a file; give the {what} directory")
    return src


def _check_destination(dest: Path, overwrite: bool, *, kind: str) -> None:
    """Refuse to write where it could destroy something that is not ours to replace.

    ``kind`` is what ``dest`` may already hold to be replaced: "rnn2gpt" (a checkpoint) or
    "gpt2" (an export).
    """
    if not destination_in_use(dest, overwrite):
        return
    config = dest / HF_CONFIG_FILE
    data = _read_json(config) if config.is_file() else {}
    ours = (
        data.get("format") == "rnn2gpt" if kind == "rnn2gpt" else data.get("model_type") == "gpt2"
    )
    if not ours:
        what = "an rnn2gpt checkpoint" if kind == "rnn2gpt" else "a GPT-2 export"
        raise CheckpointError(
            f"{dest} is not {what}, so it is not replaced even with overwrite; choose a new "
            "directory"
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path} as JSON ({exc}); the file is damaged") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object; the file is damaged")
    return data


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


__all__ = ["export_hf", "import_hf", "read_gpt2_weights"]
