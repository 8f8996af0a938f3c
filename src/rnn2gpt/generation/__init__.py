"""Decoding: greedy, sampling and beam search over any rnn2gpt language model.

- :func:`generate` (``search.py``): batched greedy / sampled decoding, or beam search
  (``beam.py``) when ``num_beams > 1``.
- :func:`stream` (``streaming.py``): one continuation as text pieces, from the same loop.
- :func:`build_processors` (``processors.py``): the logits processors a config turns on.
- ``stopping.py``: tokens -> text and stop strings; ``context.py``: the model state and the
  context window; ``results.py``: :class:`Generation`.

May import: ``errors``, ``config``, ``hardware``, ``tokenizers``, ``models``, ``data``,
``checkpoint``.
"""

from __future__ import annotations

from ..config import GenerationConfig
from .beam import beam_search
from .context import ContextPolicy, slide_keep
from .processors import LogitsProcessor, apply_processors, build_processors
from .results import FINISH_REASONS, Generation
from .search import DecodeRun, generate
from .stopping import TextTracker
from .streaming import stream

__all__ = [
    "FINISH_REASONS",
    "ContextPolicy",
    "DecodeRun",
    "Generation",
    "GenerationConfig",
    "LogitsProcessor",
    "TextTracker",
    "apply_processors",
    "beam_search",
    "build_processors",
    "generate",
    "slide_keep",
    "stream",
]
