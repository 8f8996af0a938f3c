"""Look inside one trained model: gradient flow, attention, gates, per-token view, diversity.

:func:`analyze_model` runs the analyses asked for on a loaded checkpoint and a text, writes each
figure and view into ``out_dir``, and gathers everything in ``analysis.md`` / ``analysis.html``
(images embedded) and the numbers in ``analysis.json``. An analysis the model cannot give (no
attention in a recurrent model, no gates in a GPT or a vanilla RNN) is skipped with a note; the
choice rests on what the model's recorder reports, never on the architecture's name.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError
from ..tokenizers.base import encode_prompt
from .attention import attention_maps, plot_attention
from .common import token_pieces
from .gates import gate_activations, gate_summary, plot_gates
from .gradient_flow import GradientFlow, gradient_flow
from .plots import MATPLOTLIB_HINT, matplotlib_available, plot_gradient_flow
from .report import Report
from .token_view import score_text, summary, token_html, write_token_view

logger = logging.getLogger(__name__)

RESULTS_FILE = "analysis.json"


@dataclass(frozen=True)
class AnalyzeOptions:
    """Which analyses to run and their sizes.

    Attributes:
        gradient_flow, attention, gates, tokens, diversity: the analyses to run.
        seq_len, batch_size, batches, seed: gradient-flow windows (tokens per window, windows per
            batch, batches averaged, where the windows start).
        max_tokens: tokens of the text drawn in attention maps and gate heatmaps.
        view_tokens: tokens of the text in the per-token view.
        samples, max_new_tokens: generated samples for the diversity metrics (sampling with the
            checkpoint's generation settings and ``seed``).
        unit, repetition_n, copy_n: see :func:`rnn2gpt.evaluation.diversity.diversity_metrics`.
    """

    gradient_flow: bool = True
    attention: bool = True
    gates: bool = True
    tokens: bool = True
    diversity: bool = True
    seq_len: int = 64
    batch_size: int = 8
    batches: int = 4
    seed: int = 0
    max_tokens: int = 64
    view_tokens: int = 512
    samples: int = 8
    max_new_tokens: int = 200
    unit: str = "word"
    repetition_n: int = 4
    copy_n: int = 4


@dataclass
class AnalysisResult:
    """What was written and measured."""

    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)
    report: tuple[Path, Path] | None = None


def analyze_model(
    model: torch.nn.Module,
    tokenizer: Any,
    out_dir: str | os.PathLike[str],
    *,
    text: str,
    prompt: str = "",
    train_text: str | None = None,
    generation: Any = None,
    options: AnalyzeOptions = AnalyzeOptions(),
    label: str = "model",
) -> AnalysisResult:
    """Run the analyses of ``options`` and write their files into ``out_dir``.

    Args:
        model, tokenizer: a loaded checkpoint's model and tokenizer.
        text: the text analysed (gradient flow, attention, gates, per-token view).
        prompt: prompt of the diversity samples ("" = a fresh start).
        train_text: the training text, for the copied-n-gram fraction (None: not computed).
        generation: the :class:`~rnn2gpt.config.GenerationConfig` to sample with.
        label: the model's name in titles.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = AnalysisResult()
    report = Report(f"Inside {label}")
    if not matplotlib_available() and (options.gradient_flow or options.attention or options.gates):
        result.notes.append(MATPLOTLIB_HINT)
        report.paragraph(MATPLOTLIB_HINT + ".")
    ids = tokenizer.encode(text) if text else []
    short = _truncate(model, ids, options.max_tokens)

    if options.gradient_flow:
        _gradient_flow_section(model, ids, out, options, label, report, result)
    if options.attention:
        _attention_section(model, tokenizer, short, out, report, result)
    if options.gates:
        _gates_section(model, tokenizer, short, out, report, result)
    if options.tokens:
        _tokens_section(model, tokenizer, text, out, options, report, result)
    if options.diversity:
        _diversity_section(
            model, tokenizer, prompt, train_text, generation, options, report, result
        )

    (out / RESULTS_FILE).write_text(json.dumps(result.numbers, indent=1), encoding="utf-8")
    result.files.append(out / RESULTS_FILE)
    result.report = report.write(out, "analysis")
    result.files.extend(result.report)
    return result


# --------------------------------------------------------------------------- sections


def _gradient_flow_section(
    model: torch.nn.Module,
    ids: list[int],
    out: Path,
    options: AnalyzeOptions,
    label: str,
    report: Report,
    result: AnalysisResult,
) -> None:
    report.heading("Gradient flow through time")
    if len(ids) < 2:
        result.notes.append("gradient flow: the text has fewer than 2 tokens; skipped")
        report.paragraph("The text is too short (fewer than 2 tokens).")
        return
    flow = gradient_flow(
        model,
        ids,
        seq_len=options.seq_len,
        batch_size=options.batch_size,
        batches=options.batches,
        seed=options.seed,
    )
    result.numbers["gradient_flow"] = flow.to_dict()
    png = plot_gradient_flow(
        {label: (flow.distances, flow.norms)},
        out / "gradient_flow.png",
        title=f"gradient flow through time: {label}",
    )
    if png is not None:
        result.files.append(png)
    report.paragraph(
        f"Norm of d loss / d input embedding at each position, for the loss of the last "
        f"position's prediction, averaged over {flow.windows} windows of {len(flow.distances)} "
        f"tokens. {_decay_sentence(flow)}"
    )
    report.image(png, "mean gradient norm against distance from the loss (log scale)")
    report.table(
        ("distance (tokens)", "mean gradient norm"),
        [[str(d), f"{flow.norms[d]:.3e}"] for d in _sample_distances(len(flow.norms))],
    )


def _attention_section(
    model: torch.nn.Module,
    tokenizer: Any,
    ids: list[int],
    out: Path,
    report: Report,
    result: AnalysisResult,
) -> None:
    report.heading("Attention")
    maps = attention_maps(model, _batch(ids)) if ids else {}
    if not maps:
        result.notes.append("attention: the model recorded no attention weights; skipped")
        report.paragraph("The model recorded no attention weights (it has no attention).")
        return
    files = plot_attention(maps, token_pieces(tokenizer, ids), out)
    result.files.extend(files)
    result.numbers["attention"] = {
        f"layer{layer}": {"heads": int(w.shape[0]), "tokens": int(w.shape[1])}
        for layer, w in maps.items()
    }
    report.paragraph(
        f"Attention weights of every head over the first {len(ids)} tokens; row = "
        "the position predicting next, column = the position it reads."
    )
    for layer, png in zip(maps, files):
        report.image(png, f"layer {layer}")


def _gates_section(
    model: torch.nn.Module,
    tokenizer: Any,
    ids: list[int],
    out: Path,
    report: Report,
    result: AnalysisResult,
) -> None:
    report.heading("Gates")
    gates = gate_activations(model, _batch(ids)) if ids else {}
    if not gates:
        result.notes.append("gates: the model recorded no gate activations; skipped")
        report.paragraph("The model recorded no gate activations (it has no gates).")
        return
    png = plot_gates(gates, token_pieces(tokenizer, ids), out / "gates.png")
    if png is not None:
        result.files.append(png)
    rows = gate_summary(gates)
    result.numbers["gates"] = {
        name: {"mean": mean, "open": hi, "closed": lo} for name, mean, hi, lo in rows
    }
    report.paragraph(f"Gate activations over the first {len(ids)} tokens (0 = closed, 1 = open).")
    report.image(png, "gate activations: hidden unit x token")
    report.table(
        ("gate", "mean", "share > 0.9 (open)", "share < 0.1 (closed)"),
        [[n, f"{m:.3f}", f"{h:.3f}", f"{lo:.3f}"] for n, m, h, lo in rows],
    )


def _tokens_section(
    model: torch.nn.Module,
    tokenizer: Any,
    text: str,
    out: Path,
    options: AnalyzeOptions,
    report: Report,
    result: AnalysisResult,
) -> None:
    report.heading("Per-token probability and entropy")
    scores = score_text(model, tokenizer, text, max_tokens=options.view_tokens)
    if not scores:
        result.notes.append("per-token view: the text is empty; skipped")
        report.paragraph("The text is empty.")
        return
    html_path, md_path, csv_path = write_token_view(scores, out)
    result.files.extend([html_path, md_path, csv_path])
    stats = summary(scores)
    result.numbers["tokens"] = stats
    if stats["scored"]:
        report.paragraph(
            f"Mean surprisal {stats['mean_surprisal_bits']:.3f} bits per token, mean entropy "
            f"{stats['mean_entropy_bits']:.3f} bits per token over {stats['scored']} tokens. "
            f"The table of every token is in {html_path.name} / {md_path.name} / {csv_path.name}."
        )
    report.html(token_html(scores), markdown=f"(coloured view: see {html_path.name})")


def _diversity_section(
    model: torch.nn.Module,
    tokenizer: Any,
    prompt: str,
    train_text: str | None,
    generation: Any,
    options: AnalyzeOptions,
    report: Report,
    result: AnalysisResult,
) -> None:
    from ..config import GenerationConfig
    from ..evaluation.diversity import diversity_metrics
    from ..generation import generate

    report.heading("Generation diversity")
    config = replace(
        generation or GenerationConfig(),
        max_new_tokens=options.max_new_tokens,
        num_return_sequences=options.samples,
        num_beams=1,
        seed=options.seed,
    )
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    (gens,) = generate(
        model, [encode_prompt(tokenizer, prompt)], config, tokenizer=tokenizer, pad_id=pad
    )
    samples = [g.text for g in gens]
    metrics = diversity_metrics(
        samples,
        train_text=train_text,
        unit=options.unit,
        repetition_n=options.repetition_n,
        copy_n=options.copy_n,
    )
    result.numbers["diversity"] = metrics
    unit = metrics["unit"]
    copied = metrics["copied_fraction"]
    report.paragraph(
        f"{len(samples)} samples of {options.max_new_tokens} tokens (temperature "
        f"{config.temperature:g}, seed {config.seed}), measured in {unit}s."
    )
    report.table(
        ("metric", "value", "meaning"),
        [
            ["distinct-1", f"{metrics['distinct_1']:.3f}", f"distinct {unit}s / all {unit}s"],
            ["distinct-2", f"{metrics['distinct_2']:.3f}", f"distinct {unit} pairs / all pairs"],
            [
                f"repetition rate ({options.repetition_n}-grams)",
                f"{metrics['repetition_rate']:.3f}",
                "share repeating an earlier n-gram of the sample",
            ],
            [
                f"copied {options.copy_n}-grams",
                "n/a (no training text given)" if copied is None else f"{copied:.3f}",
                "share found in the training text",
            ],
        ],
    )
    for i, sample in enumerate(samples):
        report.heading(f"sample {i + 1}", level=3)
        report.code(prompt + sample)


# --------------------------------------------------------------------------- helpers


def _batch(ids: list[int]) -> torch.Tensor:
    return torch.tensor([ids], dtype=torch.long)


def _truncate(model: torch.nn.Module, ids: list[int], limit: int) -> list[int]:
    context = model.max_context
    keep = min(limit, context) if context else limit
    return ids[:keep]


def _sample_distances(n: int) -> list[int]:
    """0, 1, 2, 4, 8, ... and the last distance: a short table that shows the trend."""
    picks, d = [0], 1
    while d < n:
        picks.append(d)
        d *= 2
    if n - 1 not in picks and n > 0:
        picks.append(n - 1)
    return picks


def _decay_sentence(flow: GradientFlow) -> str:
    first, last = flow.norms[0], flow.norms[-1]
    steps = len(flow.norms) - 1
    if steps < 1 or first <= 0 or last <= 0:
        return ""
    factor = math.exp(math.log(last / first) / steps)
    trend = "shrinks" if factor < 1 else "grows"
    return (
        f"Over {steps} steps back the norm {trend} by a factor of {factor:.3f} per token on "
        f"average ({last / first:.2e} overall)."
    )


def read_analysis_text(text_file: str | None, prompt: str | None, fallback: Any) -> str:
    """The text to analyse: a file, else the prompt, else ``fallback()`` (e.g. the checkpoint's
    validation text); DataError when none is available."""
    from ..data import read_text

    if text_file:
        return read_text(text_file)
    if prompt:
        return prompt
    try:
        return fallback()
    except (DataError, OSError) as exc:
        raise DataError(
            f"no text to analyse ({exc}); give one with --text FILE or --prompt TEXT"
        ) from None


__all__ = ["AnalysisResult", "AnalyzeOptions", "analyze_model", "read_analysis_text"]
