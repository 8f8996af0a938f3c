"""Running a comparison: each model trained by the one trainer (in its own process, for its own
peak memory), then measured (validation, generation speed, gradient flow), then the report."""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ...config import RunConfig
from ...errors import ConfigError, Rnn2GptError, TrainingError
from .configs import build_configs, count_model_parameters, preset_for
from .types import (
    GENERATION_REPEATS,
    GRADIENT_FLOW_WINDOW,
    RESULTS_FILE,
    CompareSettings,
    Comparison,
    ModelRun,
)

logger = logging.getLogger(__name__)


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
    from ...training import train

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
    from ...analysis.gradient_flow import gradient_flow
    from ...checkpoint import load_checkpoint
    from ...data import load_corpus

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
    from ...analysis.plots import read_metrics

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
    from ...checkpoint import load_checkpoint
    from ...generation import generate
    from ...models.base import use_inference_layout
    from ...tokenizers.base import encode_prompt

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


def run_comparison(settings: CompareSettings, out_dir: str | os.PathLike[str]) -> Comparison:
    """Train and measure every model; write ``comparison.json``, the curves and the report.

    Runs go to ``out_dir/runs/NAME``; the report to ``out_dir/report.md`` and
    ``out_dir/report.html``.
    """
    from .report import write_comparison_report

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
    from .report import write_comparison_report

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
    """:func:`run_model` in a fresh ``python -m rnn2gpt.experiments.compare.worker`` process."""
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
    package_root = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    completed = subprocess.run(
        [sys.executable, "-m", "rnn2gpt.experiments.compare.worker", str(job)], env=env, check=False
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
    "current_rss_mib",
    "measure_gradient_flow",
    "peak_rss_mib",
    "refresh_comparison",
    "run_comparison",
    "run_model",
]
