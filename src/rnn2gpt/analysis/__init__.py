"""Analysis: plots and reports of runs. Plotting needs matplotlib, imported lazily.

- plots.py: loss curves, validation curves of several runs, gradient-flow plot
- loss_svg.py: the loss curve every training run draws, as SVG written by hand (no matplotlib)
- report.py: :class:`Report`, written as Markdown and self-contained HTML
- analyze.py: one model inside out, from gradient_flow.py, attention.py, gates.py,
  token_view.py and :mod:`rnn2gpt.evaluation.diversity`

May import every floor below ``experiments``: it reads checkpoints, runs models and
decodes, and draws (matplotlib, imported lazily in plots.py).
"""

from .analyze import AnalysisResult, AnalyzeOptions, analyze_model
from .attention import attention_maps, plot_attention
from .gates import gate_activations, plot_gates
from .gradient_flow import GradientFlow, gradient_flow, input_gradient_norms
from .loss_svg import write_loss_curve_svg
from .plots import (
    loss_series,
    plot_gradient_flow,
    plot_loss_curve,
    plot_validation_curves,
    read_metrics,
)
from .report import Report
from .token_view import TokenScore, score_text, write_token_view

__all__ = [
    "AnalysisResult",
    "AnalyzeOptions",
    "GradientFlow",
    "Report",
    "TokenScore",
    "analyze_model",
    "attention_maps",
    "gate_activations",
    "gradient_flow",
    "input_gradient_norms",
    "loss_series",
    "plot_attention",
    "plot_gates",
    "plot_gradient_flow",
    "plot_loss_curve",
    "plot_validation_curves",
    "read_metrics",
    "score_text",
    "write_loss_curve_svg",
    "write_token_view",
]
