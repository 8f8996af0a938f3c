"""Evaluation: language-model metrics (loss, perplexity, bits per token and per character)."""

from .metrics import LN2, evaluate_lm, lm_metrics

__all__ = ["LN2", "evaluate_lm", "lm_metrics"]
