"""The architecture-comparison report: ``report.md`` and a self-contained ``report.html``.

It reads only a :class:`~rnn2gpt.experiments.compare.types.Comparison` (and each run's ``metrics.jsonl``
for the curves), so a report can be rebuilt from ``comparison.json`` without training again.
"""

from __future__ import annotations

import os
from pathlib import Path

from ...analysis.plots import (
    MATPLOTLIB_HINT,
    matplotlib_available,
    plot_gradient_flow,
    plot_validation_curves,
)
from ...analysis.report import Report
from .types import CURVES_FILE, TABLE_COLUMNS, Comparison, ModelRun

TITLE = "From RNN to GPT, side by side"
GRADIENT_FLOW_FILE = "gradient_flow.png"
FLOW_DISTANCES = (1, 4, 16, 64, 127)  # columns of the gradient-flow table (tokens back)


def results_rows(comparison: Comparison) -> list[list[str]]:
    """The main table, one row per model, in :data:`compare.TABLE_COLUMNS` order."""
    return [
        [
            run.name,
            f"{run.parameters:,}",
            f"{run.tokens_per_sec:,.0f}",
            _fmt(run.best_val_loss, 4),
            _fmt(run.val_perplexity, 2),
            _fmt(run.val_bits_per_char, 3),
            f"{run.gen_tokens_per_sec:,.0f}",
            _memory(run),
        ]
        for run in comparison.runs
    ]


def details_rows(comparison: Comparison) -> list[list[str]]:
    return [
        [
            run.name,
            run.preset,
            str(run.n_layer),
            str(run.n_embd),
            str(run.n_hidden) if run.n_hidden else "-",
            f"{run.steps:,}",
            f"{run.train_tokens:,}",
            f"{run.train_seconds:.1f}",
            run.stop_reason or "n/a",
            run.run_dir,
        ]
        for run in comparison.runs
    ]


DETAILS_COLUMNS = (
    "architecture",
    "preset",
    "layers",
    "n_embd",
    "n_hidden (- = n_embd)",
    "steps",
    "training tokens",
    "wall time (s)",
    "stopped by",
    "run folder",
)


def gradient_flow_rows(comparison: Comparison) -> list[list[str]]:
    """Per model: the gradient norm at :data:`FLOW_DISTANCES` as a fraction of distance 0's."""
    rows = []
    for run in comparison.runs:
        flow = run.gradient_flow
        if not flow or not flow.get("norms"):
            continue
        norms = flow["norms"]
        first = norms[0]
        cells = [
            f"{norms[d] / first:.1e}" if d < len(norms) and first > 0 else "n/a"
            for d in FLOW_DISTANCES
        ]
        rows.append([run.name, f"{first:.2e}", *cells])
    return rows


def comparison_report(
    comparison: Comparison,
    curves_png: str | os.PathLike[str] | None,
    flow_png: str | os.PathLike[str] | None = None,
) -> Report:
    """The report's blocks; ``curves_png``: the validation-curve plot, ``flow_png``: the
    gradient-flow plot (None: not drawn)."""
    c = comparison
    report = Report(TITLE)
    target = (
        f"comparable sizes: widths chosen to land near {c.target_params:,} parameters"
        if c.target_params
        else "sizes as configured"
    )
    report.paragraph(
        f"Data: {c.data}. Tokenizer: {c.tokenizer} ({c.vocab_size:,} tokens). Budget: {c.budget}. "
        f"{target.capitalize()}. Seed {c.seed}. Every model is trained by the same trainer from "
        "its shakespeare-char-* preset."
    )
    env = c.environment
    if env:
        report.paragraph(
            f"Machine: {env.get('platform', '?')}, {env.get('cpu_count', '?')} CPUs, "
            f"{env.get('train_threads', '?')} training thread(s); Python {env.get('python', '?')}, "
            f"PyTorch {env.get('torch', '?')}."
        )
    report.heading("Results")
    report.table(TABLE_COLUMNS, results_rows(c))
    gen_tokens = max((r.gen_tokens for r in c.runs), default=0)
    report.paragraph(
        "Validation loss is the mean cross-entropy in nats per token at the best evaluation; "
        "perplexity = exp(loss); bits per character = total bits / characters of the validation "
        "text (comparable across tokenizers). Training tokens/s excludes evaluation time. "
        f"Generation tokens/s: {gen_tokens} new tokens at batch 1 (prompt prefill included, after "
        "a warm-up), sampling with each preset's settings. Peak memory: the RSS high-water mark "
        "of the process that trained the model (each model in a fresh process); in parentheses, "
        "its growth over the RSS just before training (Python, PyTorch and the data). n/a: not "
        "measured (in-process runs)."
    )
    report.heading("Validation loss")
    if curves_png is not None:
        report.image(curves_png, "validation loss against training tokens (left) and time (right)")
    elif not matplotlib_available():
        report.paragraph(MATPLOTLIB_HINT + ".")
    else:
        report.paragraph("No evaluation was logged, so there is no curve to draw.")
    flow_rows = gradient_flow_rows(c)
    if flow_rows:
        report.heading("Gradient flow through time")
        windows = max((r.gradient_flow or {}).get("windows", 0) for r in c.runs)
        report.paragraph(
            "How much the loss at one position depends on each earlier input: the norm of "
            "d loss / d input embedding against distance from the position whose prediction is "
            f"scored, averaged over {windows} windows of the validation text, for each best "
            "checkpoint. A line that falls steeply means the model cannot learn from inputs "
            "that far back (the vanishing gradient); the table gives the norm as a fraction of "
            "the norm at distance 0."
        )
        if flow_png is not None:
            report.image(flow_png, "gradient norm against distance from the loss (log scale)")
        report.table(
            ("model", "norm at distance 0", *(f"distance {d}" for d in FLOW_DISTANCES)),
            flow_rows,
        )
    report.heading("Runs")
    report.table(DETAILS_COLUMNS, details_rows(c), numeric=False)
    report.heading("Samples")
    prompt = repr(c.prompt) if c.prompt else "an empty prompt (a fresh start)"
    report.paragraph(f"Each model continues {prompt} with seed {c.seed}.")
    for run in c.runs:
        report.heading(run.name, level=3)
        report.code(run.sample)
    return report


def write_comparison_report(
    comparison: Comparison, out_dir: str | os.PathLike[str]
) -> tuple[Path, Path]:
    """Draw the curves and write ``out_dir/report.md`` and ``out_dir/report.html``."""
    out = Path(out_dir)
    curves = plot_validation_curves(
        {
            run.name: Path(run.run_dir) / "metrics.jsonl"
            for run in comparison.runs
            if (Path(run.run_dir) / "metrics.jsonl").is_file()
        },
        out / CURVES_FILE,
        title=f"{comparison.tokenizer}-level models, {comparison.budget}",
    )
    flows = {
        run.name: (run.gradient_flow["distances"], run.gradient_flow["norms"])
        for run in comparison.runs
        if run.gradient_flow and run.gradient_flow.get("norms")
    }
    flow_png = (
        plot_gradient_flow(
            flows,
            out / GRADIENT_FLOW_FILE,
            title=f"gradient flow through time, {comparison.tokenizer}-level models",
        )
        if flows
        else None
    )
    return comparison_report(comparison, curves, flow_png).write(out, "report")


def _fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _memory(run: ModelRun) -> str:
    if run.peak_rss_mib is None:
        return "n/a"
    if run.base_rss_mib is None:
        return f"{run.peak_rss_mib:,.0f}"
    return f"{run.peak_rss_mib:,.0f} (+{max(run.peak_rss_mib - run.base_rss_mib, 0):,.0f})"


__all__ = [
    "DETAILS_COLUMNS",
    "comparison_report",
    "details_rows",
    "results_rows",
    "write_comparison_report",
]
