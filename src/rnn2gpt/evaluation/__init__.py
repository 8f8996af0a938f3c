"""Evaluation: language-model metrics (loss, perplexity, bits per token and per character) and
diversity metrics of generated text (distinct-n, repetition rate, copied n-grams).

May import: ``errors``, ``config``, ``hardware``, ``tokenizers``, ``models``, ``data``,
``checkpoint``, ``generation``.
"""

from .diversity import copied_fraction, distinct_n, diversity_metrics, repetition_rate
from .metrics import LN2, evaluate_lm, lm_metrics

__all__ = [
    "LN2",
    "copied_fraction",
    "distinct_n",
    "diversity_metrics",
    "evaluate_lm",
    "lm_metrics",
    "repetition_rate",
]
