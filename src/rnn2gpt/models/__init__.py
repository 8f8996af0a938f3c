"""Language models behind one contract (see :mod:`rnn2gpt.models.base`).

``build_model(config)`` builds any architecture by ``config.arch``: ``rnn``, ``lstm``, ``gru``
(:class:`RecurrentLM`) or ``gpt`` (:class:`GPT`); encoder-decoders ``seq2seq-rnn``
(:class:`RNNSeq2Seq`) and ``transformer`` (:class:`TransformerSeq2Seq`).

May import: ``errors``, ``config``, ``hardware`` (and ``tokenizers``, its floor-mate,
though it has no need to).
"""

from __future__ import annotations

from .base import (
    LanguageModel,
    Recorder,
    State,
    build_model,
    count_parameters,
    next_token_loss,
    register_model,
    unwrap_model,
)
from .cells import ExplicitRecurrent, GRUCell, LSTMCell, RNNCell
from .gpt import GPT
from .kv_cache import KVCache
from .rnn import RecurrentLM, RNNState
from .seq2seq import BoundDecoder, RNNSeq2Seq, Seq2SeqModel, Seq2SeqState, TransformerSeq2Seq

__all__ = [
    "BoundDecoder",
    "RNNSeq2Seq",
    "Seq2SeqModel",
    "Seq2SeqState",
    "TransformerSeq2Seq",
    "GPT",
    "ExplicitRecurrent",
    "GRUCell",
    "KVCache",
    "LSTMCell",
    "LanguageModel",
    "RNNCell",
    "RNNState",
    "Recorder",
    "RecurrentLM",
    "State",
    "build_model",
    "count_parameters",
    "next_token_loss",
    "register_model",
    "unwrap_model",
]
