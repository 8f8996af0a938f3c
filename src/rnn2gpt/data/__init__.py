"""Corpora and batches: reading text safely, caching token ids, and cutting LM batches.

- :func:`read_text`, :func:`load_corpus`, :func:`bundled_corpus_path` (corpus.py)
- :func:`encode_cached` (cache.py): token ids memory-mapped from an on-disk cache
- :class:`WindowBatches` (GPT), :class:`StreamBatches` (RNNs, truncated BPTT) and
  :func:`eval_batches` (batching.py)

May import: ``errors``, ``config``, ``hardware``, ``tokenizers``, ``models``.
"""

from .batching import Batch, EvalBatch, StreamBatches, WindowBatches, eval_batches
from .cache import CACHE_ENV, default_cache_dir, encode_cached, ids_dtype
from .corpus import (
    BUNDLED_CORPUS,
    Corpus,
    bundled_corpus_path,
    load_corpus,
    read_text,
    resolve_data_path,
)

__all__ = [
    "BUNDLED_CORPUS",
    "Batch",
    "CACHE_ENV",
    "Corpus",
    "EvalBatch",
    "StreamBatches",
    "WindowBatches",
    "bundled_corpus_path",
    "default_cache_dir",
    "encode_cached",
    "eval_batches",
    "ids_dtype",
    "load_corpus",
    "read_text",
    "resolve_data_path",
]
