"""Everything a run needs before its first step, put together once: the configuration (a new
run's, a resumed run's or a fine-tune's), the task and its data, the tokenizers, the model (with
the source's weights and any LoRA adapters), the precision and the optimizer.

Order matters for exact resume and reproducibility: the RNGs are seeded first, the tokenizers
come before the model (its vocabulary size), the model is initialised from ``train.seed`` right
before it is built, and ranks of a DDP run reseed (``seed + rank``) only afterwards.
"""

from __future__ import annotations

import logging
import random
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoint import BEST, LAST, Checkpoint, adapter_file, load_checkpoint, resume_dir
from ..config import RunConfig
from ..errors import CheckpointError, ConfigError
from ..models import build_model
from ..models.lora import apply_lora, has_lora, load_lora_adapter, merge_lora
from ..tasks import Task, TaskContext, task_kind
from ..tokenizers import load_tokenizer, train_tokenizer
from .distributed import DistContext, barrier
from .memory import hold_freed_memory
from .optim import build_optimizer
from .precision import PrecisionChoice, precision_choice

logger = logging.getLogger(__name__)


@dataclass
class RunParts:
    """What :func:`prepare_run` put together."""

    config: RunConfig  # as the run will use it (vocabulary sizes filled in, validated)
    model: nn.Module  # on the run's device, in training mode
    task: Task
    tokenizer: Any  # the joint tokenizer, or the targets' one with tokenizer.separate
    source_tokenizer: Any  # encodes sources: the same object unless separate
    optimizer: torch.optim.Optimizer
    precision: PrecisionChoice
    lora_layers: list[str]  # names of the layers carrying adapters ([] without LoRA)
    resumed: Checkpoint | None  # the ``last`` checkpoint a resumed run continues from


def prepare_run(
    config: RunConfig,
    out_dir: Path,
    ctx: DistContext,
    *,
    resume: bool = False,
    init_from: str | None = None,
    overwrite: bool = False,
) -> RunParts:
    """Set up a run (see the module docstring); every user mistake fails here, before step 1.

    Raises:
        ConfigError, CheckpointError, DataError, TokenizerError: unusable inputs.
    """
    config.validate()
    tc = config.train
    if tc.lora_rank > 0 and not resume and not init_from:
        raise ConfigError(
            f"train.lora_rank={tc.lora_rank} needs a model to adapt: fine-tune a checkpoint "
            "(rnn2gpt finetune DIR --lora-rank R, or init_from=DIR), or set train.lora_rank=0 "
            "to train from scratch"
        )
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
    if ctx.device.type == "cpu":
        hold_freed_memory()  # each step reuses the last one's memory instead of faulting it in
    _seed_everything(tc.seed)
    _check_out_dir(out_dir, resume, overwrite, ctx)

    resumed: Checkpoint | None = None
    source: Checkpoint | None = None
    if resume:
        resumed = _load_resume_checkpoint(out_dir, ctx.device)
        if init_from:
            logger.info("resuming %s; init_from=%s is ignored", out_dir / LAST, init_from)
        config = resume_config(config, resumed.config)
        source = resumed
    elif init_from:
        source = load_checkpoint(init_from, map_location=ctx.device)
        config = finetune_config(config, source.config)
        logger.info("fine-tuning from %s", init_from)

    kind = task_kind(config.train.task)
    corpus = kind.load_corpus(config.data)
    logger.info("data: %s", corpus.description)
    if source is not None:
        tokenizer, source_tokenizer = source.tokenizer, source.source_tokenizer
    else:
        tokenizer, source_tokenizer = _train_tokenizers(corpus, config, out_dir, ctx)
    separate = source_tokenizer is not tokenizer
    model_config = replace(
        config.model,
        vocab_size=tokenizer.vocab_size,
        src_vocab_size=source_tokenizer.vocab_size if separate else 0,
    )
    config = replace(config, model=model_config).validate()

    torch.manual_seed(config.train.seed)
    model = build_model(model_config)
    lora_layers = _load_source(model, source, resumed, config)
    if ctx.enabled:
        torch.manual_seed(config.train.seed + ctx.rank)  # same weights, other dropout masks
    model = model.to(ctx.device)
    model.train()

    context = TaskContext(
        rank=ctx.rank,
        world_size=ctx.world_size,
        barrier=lambda: barrier(ctx),
        finetuning=source is not None and resumed is None,
    )
    task = kind.build(config, corpus, tokenizer, source_tokenizer, model, context)
    task.check()
    precision = precision_choice(config.train.precision, ctx.device)
    optimizer = build_optimizer(model, config.train, ctx.device)
    logger.info(
        "model: %s, %s parameters on %s; %s",
        model_config.arch,
        f"{model.num_parameters():,}",
        ctx.device,
        task.description,
    )
    return RunParts(
        config, model, task, tokenizer, source_tokenizer, optimizer, precision, lora_layers, resumed
    )


# --------------------------------------------------------------------------- configurations


def resume_config(asked: RunConfig, saved: RunConfig) -> RunConfig:
    """Resume keeps the checkpoint's model and tokenizer; training settings come from ``asked``."""
    sizes = {"vocab_size": saved.model.vocab_size, "src_vocab_size": saved.model.src_vocab_size}
    if replace(asked.model, **sizes) != saved.model:
        logger.warning(
            "resuming keeps the checkpoint's model settings; the model settings given are ignored"
        )
    if (
        asked.train.batch_size != saved.train.batch_size
        or asked.train.seq_len != saved.train.seq_len
    ):
        logger.warning(
            "resuming with another batch shape: the batches will differ from the original run"
        )
    return _keep_lora_settings(replace(asked, model=saved.model, tokenizer=saved.tokenizer), saved)


_LORA_KEYS = ("lora_rank", "lora_alpha", "lora_targets", "lora_dropout")


def _keep_lora_settings(asked: RunConfig, saved: RunConfig) -> RunConfig:
    """A resumed run keeps its LoRA settings: its adapters already exist in the checkpoint."""
    kept = {key: getattr(saved.train, key) for key in _LORA_KEYS}
    if any(getattr(asked.train, key) != value for key, value in kept.items()):
        logger.warning("resuming keeps the run's LoRA settings; the train.lora_* given are ignored")
    return replace(asked, train=replace(asked.train, **kept))


def finetune_config(asked: RunConfig, saved: RunConfig) -> RunConfig:
    """Fine-tuning keeps the source's architecture and tokenizer (dropout may change)."""
    model = replace(saved.model, dropout=asked.model.dropout)
    sizes = {"vocab_size": saved.model.vocab_size, "src_vocab_size": saved.model.src_vocab_size}
    if replace(asked.model, **sizes, dropout=asked.model.dropout) != model:
        logger.info("fine-tuning keeps the source checkpoint's model shape (%s)", saved.model.arch)
    return replace(asked, model=model, tokenizer=saved.tokenizer)


# --------------------------------------------------------------------------- helpers


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _check_out_dir(out_dir: Path, resume: bool, overwrite: bool, ctx: DistContext) -> None:
    """A new run never replaces checkpoints by accident."""
    if resume or not any((out_dir / name).is_dir() for name in (BEST, LAST)):
        return
    if not overwrite:
        raise ConfigError(
            f"{out_dir} already holds a training run; continue it with --resume {out_dir}, "
            "choose another --out folder, or pass --overwrite to replace it"
        )
    if ctx.is_main:
        logger.warning("%s already holds checkpoints; this new run replaces them", out_dir)


def _load_resume_checkpoint(out_dir: Path, device: torch.device) -> Checkpoint:
    last = resume_dir(out_dir)
    ckpt = load_checkpoint(last, map_location=device)
    if ckpt.trainer_state is None or not ckpt.has_optimizer_state:
        raise CheckpointError(
            f"cannot resume from {last}: it has no optimizer/trainer state; use it as "
            "init_from to fine-tune instead"
        )
    return ckpt


def _train_tokenizers(
    corpus: Any, config: RunConfig, out_dir: Path, ctx: DistContext
) -> tuple[Any, Any]:
    """(tokenizer, source tokenizer) of a new run: one joint tokenizer (returned twice), or
    with ``tokenizer.separate`` one trained on the targets and one on the sources."""
    if not config.tokenizer.separate:
        joint = _train_tokenizer(corpus.train_text, config, out_dir / ".tokenizer", ctx)
        return joint, joint
    target = _train_tokenizer(corpus.target_text, config, out_dir / ".tokenizer", ctx)
    source = _train_tokenizer(corpus.source_text, config, out_dir / ".tokenizer-source", ctx)
    logger.info(
        "separate tokenizers: %d source tokens, %d target tokens",
        source.vocab_size,
        target.vocab_size,
    )
    return target, source


def _train_tokenizer(text: str, config: RunConfig, shared: Path, ctx: DistContext) -> Any:
    if not ctx.enabled:
        return train_tokenizer(text, config.tokenizer)
    # Rank 0 trains; the others read its files, so every rank has the very same vocabulary.
    if ctx.is_main:
        shared.mkdir(parents=True, exist_ok=True)
        train_tokenizer(text, config.tokenizer).save(shared)
    barrier(ctx)
    tokenizer = load_tokenizer(shared)
    barrier(ctx)  # everyone has read it: the shared copy can go
    if ctx.is_main:
        shutil.rmtree(shared, ignore_errors=True)
    return tokenizer


def _load_source(
    model: nn.Module, source: Checkpoint | None, resumed: Checkpoint | None, config: RunConfig
) -> list[str]:
    """Copy the source checkpoint's weights into ``model`` (fresh from ``build_model``) and
    add LoRA adapters when the run asks for them; returns the adapted layers' names."""
    if source is None:
        return []
    if resumed is not None:
        # Same adapters as the interrupted run (rank, alpha, targets from its adapter file).
        adapter = adapter_file(resumed.directory)
        layers = load_lora_adapter(model, adapter) if adapter is not None else []
        model.load_state_dict(resumed.model.state_dict())
        return layers
    if has_lora(source.model):
        merge_lora(source.model)  # fine-tuning a LoRA checkpoint starts from its adapted weights
    model.load_state_dict(source.model.state_dict())
    tc = config.train
    if tc.lora_rank <= 0:
        return []
    try:
        layers = apply_lora(
            model, tc.lora_rank, tc.lora_alpha, tc.lora_targets or None, tc.lora_dropout
        )
    except ConfigError as exc:
        raise ConfigError(f"cannot add LoRA adapters to the source model: {exc}") from None
    logger.info(
        "LoRA rank %d on %d layers: %s of %s parameters train",
        tc.lora_rank,
        len(layers),
        f"{model.num_parameters(trainable_only=True):,}",
        f"{model.num_parameters():,}",
    )
    return layers


__all__ = ["RunParts", "finetune_config", "prepare_run", "resume_config"]
