"""The comparison's types: what was asked (:class:`CompareSettings`), what each model measured
(:class:`ModelRun`) and the whole (:class:`Comparison`, saved as ``comparison.json``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ...config import ARCHITECTURES
from ...errors import ConfigError

PRESET_PATTERN = "shakespeare-char-{arch}"
REFERENCE_ARCH = "gpt"  # the default parameter target is this preset's size
RESULTS_FILE = "comparison.json"
CURVES_FILE = "val_loss.png"
DEFAULT_BUDGET_SECONDS = 300.0
GENERATION_REPEATS = 3  # generation timings per model (median): one is at the mercy of the host
CURVE_POINTS = 10  # evaluations per run, for the validation curves
GRADIENT_FLOW_WINDOW = 128  # tokens back from the loss (capped at a model's context)
HUGE_STEPS = 10**9  # "no step limit": the time or token budget decides

TABLE_COLUMNS = (
    "architecture",
    "parameters",
    "training tokens/s",
    "best validation loss",
    "perplexity",
    "bits per character",
    "generation tokens/s",
    "peak memory (MiB)",
)

# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class CompareSettings:
    """What to compare and how.

    Attributes:
        data: training text (file, .gz or folder); None = the presets' (bundled Shakespeare).
        tokenizer: char | word | bpe for every model; None = the presets' (char).
        models: the architectures, in report order (names from ``config.ARCHITECTURES``).
        budget_seconds / budget_tokens: the budget each model gets (give at most one; neither
            means :data:`DEFAULT_BUDGET_SECONDS`).
        overrides: ``section.key=value`` for all models, ``ARCH:section.key=value`` for one.
        prompt: prompt of every sample ("" = a fresh start).
        seed: training and sampling seed; None = the presets' training seed, sampling seed 0.
        match_params: resize models to ``target_params`` (see the module docstring).
        target_params: the parameter target; None = the reference GPT configuration's count.
        gen_tokens: tokens generated for the speed measurement and the sample.
        isolate: train each model in its own process (needed to measure peak memory).
        overwrite: replace runs already in the output folder.
    """

    data: str | None = None
    tokenizer: str | None = None
    models: tuple[str, ...] = ARCHITECTURES
    budget_seconds: float | None = None
    budget_tokens: int | None = None
    overrides: tuple[str, ...] = ()
    prompt: str = ""
    seed: int | None = None
    match_params: bool = True
    target_params: int | None = None
    gen_tokens: int = 200
    isolate: bool = True
    overwrite: bool = False

    def validate(self) -> CompareSettings:
        if not self.models:
            raise ConfigError("give at least one model to compare, e.g. --models rnn,gpt")
        unknown = [m for m in self.models if m not in ARCHITECTURES]
        if unknown:
            raise ConfigError(
                f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(ARCHITECTURES)}"
            )
        if len(set(self.models)) != len(self.models):
            raise ConfigError("each model may be named only once in --models")
        if self.budget_seconds is not None and self.budget_tokens is not None:
            raise ConfigError("give one budget: a time (--budget 10m) or tokens (--budget-tokens)")
        if self.budget_seconds is not None and self.budget_seconds <= 0:
            raise ConfigError(f"the time budget must be positive (got {self.budget_seconds} s)")
        if self.budget_tokens is not None and self.budget_tokens < 1:
            raise ConfigError(f"the token budget must be positive (got {self.budget_tokens})")
        if self.target_params is not None and self.target_params < 1:
            raise ConfigError(f"the parameter target must be positive (got {self.target_params})")
        if self.gen_tokens < 1:
            raise ConfigError(f"gen_tokens must be at least 1 (got {self.gen_tokens})")
        return self

    def budget_text(self) -> str:
        if self.budget_tokens is not None:
            return f"{self.budget_tokens:,} training tokens per model"
        return f"{self.seconds:g} s of training per model"

    @property
    def seconds(self) -> float:
        return DEFAULT_BUDGET_SECONDS if self.budget_seconds is None else self.budget_seconds


@dataclass
class ModelRun:
    """The measurements of one trained architecture (see the module docstring for each)."""

    name: str
    arch: str
    preset: str
    parameters: int
    n_layer: int
    n_embd: int
    n_hidden: int
    steps: int
    train_tokens: int
    train_seconds: float  # wall-clock, evaluation included
    tokens_per_sec: float  # training tokens per second of training (evaluation excluded)
    best_val_loss: float | None
    val_perplexity: float | None
    val_bits_per_char: float | None
    gen_tokens: int
    gen_seconds: float
    gen_tokens_per_sec: float
    sample: str
    run_dir: str
    stop_reason: str = ""
    peak_rss_mib: float | None = None
    base_rss_mib: float | None = None
    gradient_flow: dict[str, Any] | None = None  # GradientFlow.to_dict() on validation text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelRun:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Comparison:
    """Everything the report shows: the settings used and one :class:`ModelRun` per model."""

    runs: list[ModelRun]
    data: str
    tokenizer: str
    vocab_size: int
    budget: str
    target_params: int | None
    prompt: str
    seed: int
    environment: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["runs"] = [r.to_dict() for r in self.runs]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Comparison:
        values = dict(data)
        values["runs"] = [ModelRun.from_dict(r) for r in data.get("runs", [])]
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


__all__ = [
    "CURVES_FILE",
    "RESULTS_FILE",
    "TABLE_COLUMNS",
    "CompareSettings",
    "Comparison",
    "ModelRun",
]
