"""Interop with other toolkits' files: Hugging Face GPT-2 folders in and out (hf.py).

Above :mod:`rnn2gpt.checkpoint` (it writes and reads checkpoints); the pure weight and config
mapping lives in :mod:`rnn2gpt.models.hf`. May import: ``errors``, ``config``, ``tokenizers``,
``models``, ``data``, ``checkpoint``.
"""

from .hf import export_hf, import_hf, read_gpt2_weights

__all__ = ["export_hf", "import_hf", "read_gpt2_weights"]
