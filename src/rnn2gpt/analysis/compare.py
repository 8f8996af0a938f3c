"""From RNN to GPT, side by side: train each architecture under the same budget and compare.

:func:`run_comparison` builds one :class:`~rnn2gpt.config.RunConfig` per architecture from the
shipped presets ``shakespeare-char-{arch}`` (the only place an architecture's name is used), gives
them the same data, tokenizer, seed and budget (the same wall-clock time through
``train.max_time``, or the same number of training tokens through ``train.max_tokens``), resizes
them to a comparable parameter count, trains each with the one trainer
(:func:`rnn2gpt.training.train`), and measures:

- parameters; training tokens per second (the trainer's figure: evaluation time excluded);
- the best validation loss, its perplexity and bits per character (from ``metrics.jsonl``);
- generation speed: ``gen_tokens`` new tokens at batch 1 with :func:`rnn2gpt.generation.generate`
  (prompt prefill included, after a short warm-up), and the sample it produced;
- gradient flow through time: the norm of d loss / d input embedding against distance from the
  loss, on windows of the validation text (:func:`measure_gradient_flow`), drawn for all models
  on one plot (the vanishing gradient of the vanilla RNN against LSTM/GRU);
- peak memory: each training runs in its own Python process (``isolate=True``), which reports its
  RSS high-water mark (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) when training ends, and
  its RSS just before training started (Python + PyTorch + data: the baseline). A fresh process
  per model is the only way to get a per-model high-water mark: the mark never goes down within a
  process. With ``isolate=False`` (faster to start, used by tests) memory is not measured.

**Comparable sizes.** Unless sizes are given, each model's width (``model.n_embd``, and
``model.n_hidden`` in proportion when set) is searched so its parameter count lands as close as
possible to a target: by default the parameter count of the GPT configuration (the
``shakespeare-char-gpt`` preset with the user's overrides) at this data's vocabulary size. Depth
is kept from the preset (or ``--set model.n_layer=...``). A model whose ``model.n_embd`` or
``model.n_hidden`` the user sets is left as given. Parameters are counted on PyTorch's ``meta``
device, so the search allocates no memory.

**Overrides.** ``section.key=value`` applies to every model; ``ARCH:section.key=value`` (e.g.
``gpt:model.n_head=4``) to one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from ..config import ARCHITECTURES, ModelConfig, RunConfig, load_preset
from ..errors import ConfigError, Rnn2GptError, TrainingError

logger = logging.getLogger(__name__)

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

_PER_MODEL = re.compile(r"^(\w+):(\w+(?:\.\w+)?=.*)$")
_SIZE_KEYS = ("model.n_embd", "model.n_hidden")
_BARE_KEYS = {
    "n_embd": "model.n_embd",
    "n_hidden": "model.n_hidden",
    "eval_interval": "train.eval_interval",
}


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


# --------------------------------------------------------------------------- sizing


def count_model_parameters(config: ModelConfig) -> int:
    """Parameters of the model ``config`` describes (``vocab_size`` set), built on ``meta``."""
    from ..models import build_model

    with torch.device("meta"):
        model = build_model(config)
    return model.num_parameters()


def size_to_target(config: ModelConfig, target: int, *, max_width: int = 8192) -> ModelConfig:
    """``config`` with the width whose parameter count is closest to ``target``.

    The width ``n_embd`` moves in multiples of ``lcm(n_head, 2)`` (keeps a GPT's width divisible
    by its heads and even for sinusoidal positions; no cost to the others); a nonzero
    ``n_hidden`` keeps its ratio to ``n_embd``. The count grows with the width, so a bisection
    finds the first width at or above the target, then the closer of it and the one below wins.
    """
    if config.vocab_size < 1:
        raise ConfigError("model.vocab_size must be set before sizing a model")
    step = math.lcm(max(config.n_head, 1), 2)
    ratio = config.n_hidden / config.n_embd if config.n_hidden else 0.0

    def with_width(k: int) -> ModelConfig:
        width = k * step
        hidden = max(1, round(width * ratio)) if ratio else 0
        return replace(config, n_embd=width, n_hidden=hidden)

    cache: dict[int, int] = {}

    def params(k: int) -> int:
        if k not in cache:
            cache[k] = count_model_parameters(with_width(k))
        return cache[k]

    lo, hi = 1, max(1, max_width // step)
    if params(hi) < target:
        logger.warning(
            "no width up to %d reaches %s parameters; using the widest", max_width, f"{target:,}"
        )
        return with_width(hi)
    while lo < hi:  # first k with params(k) >= target
        mid = (lo + hi) // 2
        if params(mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    best = lo
    if lo > 1 and abs(params(lo - 1) - target) <= abs(params(lo) - target):
        best = lo - 1
    return with_width(best)


# --------------------------------------------------------------------------- configurations


def preset_for(arch: str) -> str:
    """The shipped preset an architecture starts from."""
    return PRESET_PATTERN.format(arch=arch)


def split_overrides(
    overrides: Sequence[str], models: Sequence[str]
) -> tuple[list[str], dict[str, list[str]]]:
    """Global overrides and per-model ones (``ARCH:section.key=value``)."""
    shared: list[str] = []
    per_model: dict[str, list[str]] = {m: [] for m in models}
    for item in overrides:
        match = _PER_MODEL.match(item)
        if not match:
            shared.append(item)
            continue
        name, rest = match.groups()
        if name not in per_model:
            raise ConfigError(
                f"override {item!r} names model {name!r}, which is not compared; "
                f"compared models: {', '.join(models)}"
            )
        per_model[name].append(rest)
    return shared, per_model


def build_configs(settings: CompareSettings) -> tuple[dict[str, RunConfig], int | None, int]:
    """One validated config per model, the parameter target used (None: sizes kept) and the
    vocabulary size of the data's tokenizer."""
    settings.validate()
    shared, per_model = split_overrides(settings.overrides, settings.models)
    configs = {
        name: _base_config(name, settings, shared + per_model[name]) for name in settings.models
    }
    vocab_sizes = _vocab_sizes(configs)
    configs = {
        name: c.with_values("model", vocab_size=vocab_sizes[name]) for name, c in configs.items()
    }

    target = None
    if settings.match_params:
        target = settings.target_params
        if target is None:
            reference = configs.get(REFERENCE_ARCH)
            if reference is None:
                reference = _base_config(REFERENCE_ARCH, settings, shared)
                reference = reference.with_values(
                    "model", vocab_size=next(iter(vocab_sizes.values()))
                )
            target = count_model_parameters(reference.model)
        for name, config in configs.items():
            fixed = _sets_size(shared + per_model[name])
            reference_kept = settings.target_params is None and name == REFERENCE_ARCH
            if not fixed and not reference_kept:
                configs[name] = replace(config, model=size_to_target(config.model, target))
    for name, config in configs.items():
        configs[name] = _with_eval_interval(config, settings, shared + per_model[name])
        configs[name].validate()
    return configs, target, next(iter(vocab_sizes.values()))


def _base_config(arch: str, settings: CompareSettings, overrides: Sequence[str]) -> RunConfig:
    """Preset < data/tokenizer/budget/seed of the comparison < the user's overrides."""
    config = load_preset(preset_for(arch))
    if settings.data is not None:
        # A new corpus replaces the preset's whole data section (its validation/test files).
        config = config.with_values("data", path=settings.data, val_path="", test_path="")
    if settings.tokenizer is not None:
        config = config.with_values("tokenizer", kind=settings.tokenizer)
    if settings.budget_tokens is not None:
        budget = {"max_tokens": int(settings.budget_tokens), "max_time": 0.0}
    else:
        budget = {"max_time": float(settings.seconds), "max_tokens": 0}
    config = config.with_values("train", max_steps=HUGE_STEPS, **budget)
    if settings.seed is not None:
        config = config.with_values("train", seed=int(settings.seed))
    return config.with_overrides(list(overrides))


def _override_keys(overrides: Sequence[str]) -> set[str]:
    """The keys set, as ``section.key`` (a bare ``key=value`` is owned by one section)."""
    keys = set()
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        keys.add(key if "." in key else _BARE_KEYS.get(key, key))
    return keys


def _sets_size(overrides: Sequence[str]) -> bool:
    return bool(_override_keys(overrides) & set(_SIZE_KEYS))


def _with_eval_interval(
    config: RunConfig, settings: CompareSettings, overrides: Sequence[str]
) -> RunConfig:
    """About :data:`CURVE_POINTS` evaluations per run (the curves need points), unless the user
    set ``train.eval_interval`` or ``train.eval_interval_seconds``: with a token budget every
    budget/10 tokens, with a time budget every budget/10 seconds of training."""
    keys = _override_keys(overrides)
    if keys & {"train.eval_interval", "train.eval_interval_seconds"}:
        return config
    if settings.budget_tokens is None:
        return config.with_values(
            "train",
            eval_interval=HUGE_STEPS,
            eval_interval_seconds=settings.seconds / CURVE_POINTS,
        )
    tc = config.train
    steps = max(1, settings.budget_tokens // (tc.batch_size * tc.seq_len * tc.grad_accum))
    interval = max(1, steps // CURVE_POINTS)
    return config.with_values(
        "train", eval_interval=interval, log_interval=min(tc.log_interval, interval)
    )


def _vocab_sizes(configs: dict[str, RunConfig]) -> dict[str, int]:
    """Each config's vocabulary size, training each distinct tokenizer once (as the trainer
    will: the same text and settings give the same tokenizer)."""
    from ..data import load_corpus
    from ..tokenizers import train_tokenizer

    cache: dict[tuple[Any, Any], int] = {}
    sizes = {}
    for name, config in configs.items():
        key = (config.data, config.tokenizer)
        if key not in cache:
            corpus = load_corpus(config.data)
            cache[key] = train_tokenizer(corpus.train_text, config.tokenizer).vocab_size
        sizes[name] = cache[key]
    return sizes


# --------------------------------------------------------------------------- one model


def run_model(
    name: str,
    config: RunConfig,
    run_dir: str | os.PathLike[str],
    *,
    prompt: str = "",
    seed: int = 0,
    gen_tokens: int = 200,
    overwrite: bool = False,
    measure_memory: bool = False,
) -> ModelRun:
    """Train ``config`` into ``run_dir``, then time a generation from its best checkpoint.

    ``measure_memory`` reads this process's RSS before and its high-water mark after training;
    it is only meaningful in a fresh process (as :func:`run_comparison` runs it).
    """
    from ..training import train

    base_rss = current_rss_mib() if measure_memory else None
    result = train(config, run_dir, overwrite=overwrite)
    if result.interrupted:
        raise TrainingError(f"training of {name} was interrupted; the comparison is incomplete")
    peak_rss = peak_rss_mib() if measure_memory else None
    best = _best_eval(Path(run_dir) / "metrics.jsonl")
    gen_seconds, new_tokens, sample = _time_generation(
        Path(run_dir) / "best",
        prompt=prompt,
        seed=seed,
        gen_tokens=gen_tokens,
        threads=config.train.threads,
    )
    flow = measure_gradient_flow(Path(run_dir) / "best", seed=seed, threads=config.train.threads)
    return ModelRun(
        name=name,
        arch=config.model.arch,
        preset=preset_for(config.model.arch),
        parameters=count_model_parameters(config.model),
        n_layer=config.model.n_layer,
        n_embd=config.model.n_embd,
        n_hidden=config.model.n_hidden,
        steps=result.steps,
        train_tokens=result.tokens,
        train_seconds=result.elapsed,
        tokens_per_sec=result.tokens_per_sec,
        best_val_loss=best.get("val_loss", result.best_val_loss),
        val_perplexity=best.get("val_perplexity"),
        val_bits_per_char=best.get("val_bits_per_char"),
        gen_tokens=new_tokens,
        gen_seconds=gen_seconds,
        gen_tokens_per_sec=new_tokens / gen_seconds if gen_seconds > 0 else 0.0,
        sample=sample,
        run_dir=str(run_dir),
        stop_reason=result.stop_reason,
        peak_rss_mib=peak_rss,
        base_rss_mib=base_rss,
        gradient_flow=flow,
    )


def measure_gradient_flow(
    checkpoint: str | os.PathLike[str], *, seed: int = 0, threads: int = 0
) -> dict[str, Any]:
    """Gradient flow of a checkpoint on its own validation text -> ``GradientFlow.to_dict()``.

    4 batches of 8 windows of :data:`GRADIENT_FLOW_WINDOW` tokens (fewer where the model's
    context or the text is shorter), in fp32, the windows fixed by ``seed``.
    """
    from ..checkpoint import load_checkpoint
    from ..data import load_corpus
    from .gradient_flow import gradient_flow

    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        loaded = load_checkpoint(checkpoint)
        text = load_corpus(loaded.config.data).val_text
        ids = loaded.tokenizer.encode_array(text)
        flow = gradient_flow(
            loaded.model.float(),
            ids,
            seq_len=GRADIENT_FLOW_WINDOW,
            batch_size=8,
            batches=4,
            seed=seed,
        )
    finally:
        torch.set_num_threads(before)
    return flow.to_dict()


def _best_eval(metrics_path: Path) -> dict[str, Any]:
    """The evaluation event with the lowest validation loss ({} when there is none)."""
    from .plots import read_metrics

    if not metrics_path.is_file():
        return {}
    evals = [e for e in read_metrics(metrics_path) if e.get("event") == "eval"]
    evals = [e for e in evals if isinstance(e.get("val_loss"), int | float)]
    return min(evals, key=lambda e: e["val_loss"]) if evals else {}


def _time_generation(
    checkpoint: Path, *, prompt: str, seed: int, gen_tokens: int, threads: int
) -> tuple[float, int, str]:
    """(seconds, new tokens, prompt + sample) for ``gen_tokens`` tokens at batch 1: the median
    of :data:`GENERATION_REPEATS` runs of the same seeded generation, with the model prepared as
    :func:`rnn2gpt.load` prepares it."""
    from ..checkpoint import load_checkpoint
    from ..generation import generate
    from ..models.base import use_inference_layout
    from ..tokenizers.base import encode_prompt

    ckpt = load_checkpoint(checkpoint)
    model, tokenizer = use_inference_layout(ckpt.model.eval()), ckpt.tokenizer
    ids = encode_prompt(tokenizer, prompt)
    config = replace(
        ckpt.config.generate,
        max_new_tokens=gen_tokens,
        min_new_tokens=0,
        seed=seed,
        stop_at_eos=False,  # the same number of tokens for every model
        stop=(),
        num_beams=1,
        num_return_sequences=1,
    )
    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
        # Warm-up: first calls pay for lazy initialisation that is no part of decoding speed.
        generate(model, [ids], replace(config, max_new_tokens=4), tokenizer=tokenizer, pad_id=pad)
        timings = []
        for _ in range(GENERATION_REPEATS):
            start = time.perf_counter()
            (result,) = generate(model, [ids], config, tokenizer=tokenizer, pad_id=pad)
            timings.append(time.perf_counter() - start)
        seconds = statistics.median(timings)
    finally:
        torch.set_num_threads(before)
    generation = result[0]
    return seconds, len(generation.token_ids), prompt + generation.text


def current_rss_mib() -> float | None:
    """This process's resident set size now, in MiB (None where /proc is unavailable)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            pages = int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return peak_rss_mib()
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float | None:
    """This process's RSS high-water mark in MiB (None where ``resource`` is unavailable)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


# --------------------------------------------------------------------------- the comparison


def run_comparison(settings: CompareSettings, out_dir: str | os.PathLike[str]) -> Comparison:
    """Train and measure every model; write ``comparison.json``, the curves and the report.

    Runs go to ``out_dir/runs/NAME``; the report to ``out_dir/report.md`` and
    ``out_dir/report.html``.
    """
    from .compare_report import write_comparison_report

    settings = settings.validate()
    out = Path(out_dir).expanduser()
    configs, target, vocab_size = build_configs(settings)
    seed = settings.seed if settings.seed is not None else 0
    runs = []
    for name, config in configs.items():
        logger.info(
            "training %s (%s parameters) for %s",
            name,
            f"{count_model_parameters(config.model):,}",
            settings.budget_text(),
        )
        run_dir = out / "runs" / name
        kwargs = {
            "prompt": settings.prompt,
            "seed": seed,
            "gen_tokens": settings.gen_tokens,
            "overwrite": settings.overwrite,
        }
        if settings.isolate:
            run = _run_in_subprocess(name, config, run_dir, **kwargs)
        else:
            run = run_model(name, config, run_dir, **kwargs)
        logger.info(
            "%s: best validation loss %s, %.0f training tokens/s",
            name,
            "n/a" if run.best_val_loss is None else f"{run.best_val_loss:.4f}",
            run.tokens_per_sec,
        )
        runs.append(run)
    first = next(iter(configs.values()))
    comparison = Comparison(
        runs=runs,
        data=first.data.path or "bundled Tiny Shakespeare",
        tokenizer=first.tokenizer.kind,
        vocab_size=vocab_size,
        budget=settings.budget_text(),
        target_params=target,
        prompt=settings.prompt,
        seed=seed,
        environment=_environment(first),
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULTS_FILE).write_text(json.dumps(comparison.to_dict(), indent=1), encoding="utf-8")
    write_comparison_report(comparison, out)
    return comparison


def refresh_comparison(out_dir: str | os.PathLike[str], *, retime: bool = False) -> Comparison:
    """Rewrite a finished comparison's report without training: read ``comparison.json``,
    measure what it lacks from the saved checkpoints (gradient flow, for comparisons made before
    it was measured), with ``retime`` time every model's generation again (on a quieter
    machine, say), save the JSON and write the report again."""
    from .compare_report import write_comparison_report

    out = Path(out_dir).expanduser()
    results = out / RESULTS_FILE
    if not results.is_file():
        raise ConfigError(f"{results} does not exist; run `rnn2gpt compare --out {out}` first")
    try:
        comparison = Comparison.from_dict(json.loads(results.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError, KeyError, AttributeError) as exc:
        raise ConfigError(
            f"{results} is not a comparison written by `rnn2gpt compare` ({exc}); run the "
            "comparison again"
        ) from None
    threads = int(comparison.environment.get("train_threads") or 0)
    for run in comparison.runs:
        run_dir = out / "runs" / run.name  # where compare put it, even if OUT moved since
        if not run_dir.is_dir():
            run_dir = Path(run.run_dir)
        if run.gradient_flow is None:
            logger.info("measuring the gradient flow of %s", run.name)
            run.gradient_flow = measure_gradient_flow(
                run_dir / "best", seed=comparison.seed, threads=threads
            )
        if retime:
            logger.info("timing the generation of %s", run.name)
            run.gen_seconds, run.gen_tokens, run.sample = _time_generation(
                run_dir / "best",
                prompt=comparison.prompt,
                seed=comparison.seed,
                gen_tokens=run.gen_tokens,
                threads=threads,
            )
            run.gen_tokens_per_sec = run.gen_tokens / run.gen_seconds if run.gen_seconds else 0.0
    results.write_text(json.dumps(comparison.to_dict(), indent=1), encoding="utf-8")
    write_comparison_report(comparison, out)
    return comparison


def _run_in_subprocess(name: str, config: RunConfig, run_dir: Path, **kwargs: Any) -> ModelRun:
    """:func:`run_model` in a fresh ``python -m rnn2gpt.analysis.compare_worker`` process."""
    run_dir.mkdir(parents=True, exist_ok=True)
    job = run_dir / "compare_job.json"
    result_file = run_dir / "compare_result.json"
    result_file.unlink(missing_ok=True)
    job.write_text(
        json.dumps(
            {
                "name": name,
                "config": config.to_dict(),
                "run_dir": str(run_dir),
                "result": str(result_file),
                "log_level": logging.getLogger("rnn2gpt").getEffectiveLevel(),
                **kwargs,
            },
            indent=1,
        ),
        encoding="utf-8",
    )
    env = dict(os.environ)
    # The child must import this very copy of the package (a source checkout included).
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    completed = subprocess.run(
        [sys.executable, "-m", "rnn2gpt.analysis.compare_worker", str(job)], env=env, check=False
    )
    data: dict[str, Any] = {}
    if result_file.is_file():
        data = json.loads(result_file.read_text(encoding="utf-8"))
    if "error" in data:
        raise Rnn2GptError(f"{name}: {data['error']}")
    if completed.returncode != 0 or not data:
        raise TrainingError(
            f"training {name} failed in its worker process (exit status {completed.returncode}); "
            "see the messages above, or rerun with --in-process to see the traceback"
        )
    return ModelRun.from_dict(data)


def _environment(config: RunConfig) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "train_threads": config.train.threads or torch.get_num_threads(),
    }


__all__ = [
    "TABLE_COLUMNS",
    "CompareSettings",
    "Comparison",
    "ModelRun",
    "build_configs",
    "count_model_parameters",
    "current_rss_mib",
    "peak_rss_mib",
    "preset_for",
    "run_comparison",
    "run_model",
    "size_to_target",
    "split_overrides",
]
