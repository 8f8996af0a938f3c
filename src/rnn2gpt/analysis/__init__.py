"""Analysis: plots and reports of runs. Plotting needs matplotlib, imported lazily."""

from .plots import loss_series, plot_loss_curve, read_metrics

__all__ = ["loss_series", "plot_loss_curve", "read_metrics"]
