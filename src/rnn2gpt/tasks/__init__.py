"""What the trainer trains, and the encoder-decoder tasks at work.

- base.py: the :class:`Task` protocol (batches, loss with the carried state, evaluation, decoded
  metrics, test, start-up checks) and the registry that builds a task from ``train.task``
- language_modeling.py: :class:`LanguageModelTask` (windows, or streams with the carried RNN state)
- seq2seq.py: :class:`Seq2SeqTask` (translation and summarization, one class configured by its
  metric: BLEU or ROUGE)
- decoding.py: encoding sources and decoding outputs with the generation engine
- runner.py: :func:`load_seq2seq`, :func:`translate`, :func:`summarize`,
  :func:`evaluate_seq2seq`

May import: ``errors``, ``config``, ``hardware``, ``tokenizers``, ``models``, ``data``,
``checkpoint``, ``generation``, ``evaluation``. Never ``training`` (which imports this).
"""

from .base import Task, TaskContext, TaskKind, register_task, task_kind
from .language_modeling import LanguageModelTask
from .runner import (
    Seq2SeqRunner,
    evaluate_seq2seq,
    load_seq2seq,
    run_seq2seq,
    summarize,
    translate,
)
from .seq2seq import Seq2SeqTask

__all__ = [
    "LanguageModelTask",
    "Seq2SeqRunner",
    "Seq2SeqTask",
    "Task",
    "TaskContext",
    "TaskKind",
    "evaluate_seq2seq",
    "load_seq2seq",
    "register_task",
    "run_seq2seq",
    "summarize",
    "task_kind",
    "translate",
]
