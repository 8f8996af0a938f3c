"""The Python face of rnn2gpt: load a checkpoint and generate or stream text; train a model.

This layer only wires the parts together (checkpoint -> tokenizer + model -> decoding engine);
it holds no decoding or training logic of its own.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from .config import DEFAULT_PRESET, GenerationConfig, RunConfig, load_preset, parse_duration
from .errors import ConfigError, TokenizerError

logger = logging.getLogger(__name__)

_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


class TextGenerator:
    """A loaded checkpoint, ready to generate.

    Attributes:
        model: the ``nn.Module`` of the model contract (eval mode).
        tokenizer: the tokenizer saved with it.
        config: the :class:`~rnn2gpt.config.RunConfig` it was trained with.
        directory: where it was loaded from.
    """

    def __init__(self, checkpoint: Any) -> None:
        self.model = checkpoint.model
        self.tokenizer = checkpoint.tokenizer
        self.config: RunConfig = checkpoint.config
        self.directory = Path(checkpoint.directory)

    # ------------------------------------------------------------------ settings and prompts

    def generation_config(self, **settings: Any) -> GenerationConfig:
        """The checkpoint's generation defaults with ``settings`` applied and validated.

        ``num_samples`` is accepted as a synonym of ``num_return_sequences``.
        """
        if "num_samples" in settings:
            settings["num_return_sequences"] = settings.pop("num_samples")
        valid = {f.name for f in fields(GenerationConfig)}
        unknown = sorted(set(settings) - valid)
        if unknown:
            raise ConfigError(
                f"unknown generation setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}"
            )
        for key in ("stop", "bad_words"):
            if isinstance(settings.get(key), str):
                settings[key] = (settings[key],)
            elif settings.get(key) is not None:
                settings[key] = tuple(settings[key])
        config = replace(self.config.generate, **settings)
        config.validate()
        return config

    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids of ``prompt``; an empty prompt starts from the tokenizer's start token.

        Tokenizers without a start token (char) start from a newline when the vocabulary has one,
        as a fresh paragraph, else from id 0.
        """
        if prompt:
            return self.tokenizer.encode(prompt)
        for special in (self.tokenizer.bos_id, self.tokenizer.eos_id):
            if special is not None:
                return [special]
        try:
            return self.tokenizer.encode("\n")[-1:]
        except TokenizerError:
            return [0]

    # ------------------------------------------------------------------ decoding

    def complete(self, prompts: Sequence[str], *, logprobs: int | None = None, **settings: Any):
        """Generate for several prompts at once (batched); returns, per prompt, a list of
        :class:`~rnn2gpt.generation.Generation` (``num_return_sequences`` of them)."""
        from .generation import generate

        config = self.generation_config(**settings)
        ids = [self.encode_prompt(p) for p in prompts]
        return generate(
            self.model,
            ids,
            config,
            tokenizer=self.tokenizer,
            eos_id=self.tokenizer.eos_id,
            pad_id=self._pad_id(),
            logprobs=logprobs,
        )

    def generate(self, prompt: str | Sequence[str] = "", **settings: Any) -> str | list[str]:
        """Generated text (without the prompt). A list of prompts gives a list of texts; with
        ``num_return_sequences > 1`` each prompt gives a list."""
        single = isinstance(prompt, str)
        results = self.complete([prompt] if single else list(prompt), **settings)
        texts = [[g.text for g in per_prompt] for per_prompt in results]
        flat = [t[0] if len(t) == 1 else t for t in texts]
        return flat[0] if single else flat

    def stream(self, prompt: str = "", **settings: Any) -> Iterator[str]:
        """Yield text pieces as they are generated (never splitting a character)."""
        from .generation import stream

        config = self.generation_config(**settings)
        yield from stream(
            self.model,
            self.encode_prompt(prompt),
            config,
            tokenizer=self.tokenizer,
            eos_id=self.tokenizer.eos_id,
        )

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_id
        return 0 if pad is None else pad


def load(directory: str | Path, *, dtype: str = "fp32", device: str = "cpu") -> TextGenerator:
    """Load a checkpoint directory for generation.

    Args:
        directory: a checkpoint (e.g. ``runs/x/best``) or a run directory holding ``best/``.
        dtype: ``fp32`` or ``bf16`` (weights converted; faster on CPUs with bf16 units).
        device: ``cpu``, ``cuda``...
    """
    from .training.checkpoint import load_checkpoint

    if dtype not in _DTYPES:
        raise ConfigError(f"dtype must be one of fp32, bf16 (got {dtype!r})")
    checkpoint = load_checkpoint(resolve_checkpoint_dir(directory), map_location=device)
    checkpoint.model.to(device=device, dtype=_DTYPES[dtype]).eval()
    return TextGenerator(checkpoint)


def resolve_checkpoint_dir(directory: str | Path) -> Path:
    """Accept a run directory too: prefer its ``best/``, then ``last/`` checkpoint."""
    path = Path(directory)
    if not (path / "config.json").exists():
        for sub in ("best", "last"):
            if (path / sub / "config.json").exists():
                return path / sub
    return path


# ---------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainRequest:
    """What a user asks of ``rnn2gpt train``, before it becomes a :class:`RunConfig`."""

    preset: str | None = None
    data: str | None = None
    val_data: str | None = None
    data_dir: str | None = None
    model: str | None = None
    tokenizer: str | None = None
    max_steps: int | None = None
    max_time: str | float | None = None
    seed: int | None = None
    overrides: tuple[str, ...] = ()

    def run_config(self) -> RunConfig:
        """Defaults < preset < named options < ``--set`` overrides; validated."""
        config = load_preset(self.preset or DEFAULT_PRESET)
        data_values = {
            k: v
            for k, v in (
                ("path", self.data),
                ("val_path", self.val_data),
                ("data_dir", self.data_dir),
            )
            if v is not None
        }
        if self.data is not None and self.val_data is None:
            # A new corpus replaces the preset's whole data section (its validation/test files).
            data_values.update(val_path="", test_path="")
        if data_values:
            config = config.with_values("data", **data_values)
        if self.model is not None:
            config = config.with_values("model", arch=self.model)
        if self.tokenizer is not None:
            config = config.with_values("tokenizer", kind=self.tokenizer)
        train_values: dict[str, Any] = {}
        if self.max_steps is not None:
            train_values["max_steps"] = int(self.max_steps)
            if self.max_time is None:
                train_values["max_time"] = 0.0  # an explicit step budget replaces the preset's time
        if self.max_time is not None:
            train_values["max_time"] = parse_duration(self.max_time)
            if self.max_steps is None:
                train_values["max_steps"] = 10**9
        if self.seed is not None:
            train_values["seed"] = int(self.seed)
        if train_values:
            config = config.with_values("train", **train_values)
        return config.with_overrides(list(self.overrides)).validate()


def train(
    preset: str | None = None,
    *,
    out: str | Path | None = None,
    resume: bool = False,
    init_from: str | Path | None = None,
    config: RunConfig | None = None,
    **options: Any,
):
    """Train a model; mirrors ``rnn2gpt train``. Returns the trainer's ``TrainResult``.

    Options: ``data``, ``val_data``, ``data_dir``, ``model`` (rnn|lstm|gru|gpt), ``tokenizer``
    (char|word|bpe), ``max_steps``, ``max_time`` ("10m"), ``seed``, ``overrides``
    (["train.lr=3e-4", ...]). Pass ``config`` to give a complete :class:`RunConfig` instead.
    """
    from .training import train as run_training

    valid = {f.name for f in dataclasses.fields(TrainRequest)} - {"preset"}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}"
        )
    if "overrides" in options:
        options["overrides"] = tuple(options["overrides"])
    if config is None:
        config = TrainRequest(preset=preset, **options).run_config()
    out_dir = Path(out) if out is not None else Path("runs") / (preset or DEFAULT_PRESET)
    return run_training(
        config, out_dir, resume=resume, init_from=str(init_from) if init_from else None
    )
