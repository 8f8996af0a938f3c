"""Sequence-to-sequence tasks: translation and summarization with encoder-decoder checkpoints.

- :func:`translate`, :func:`summarize`: output text for each input text (greedy or beam search).
- :func:`evaluate_seq2seq`: BLEU (translation) or ROUGE (summarization) against references.
- :func:`plot_cross_attention`: a heatmap of the decoder's attention over the source.
"""

from .seq2seq import (
    Seq2SeqRunner,
    evaluate_seq2seq,
    load_seq2seq,
    plot_cross_attention,
)
from .summarization import summarize
from .translation import translate

__all__ = [
    "Seq2SeqRunner",
    "evaluate_seq2seq",
    "load_seq2seq",
    "plot_cross_attention",
    "summarize",
    "translate",
]
