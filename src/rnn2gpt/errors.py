"""Errors a user can cause, each carrying one clear message that says what to do.

The command line catches :class:`Rnn2GptError` and prints only its message (no traceback).
Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class Rnn2GptError(Exception):
    """Base class for mistakes a user can make (bad path, bad setting, bad checkpoint...)."""


class ConfigError(Rnn2GptError, ValueError):
    """An unknown setting, a value of the wrong type, or an invalid combination of settings."""


class DataError(Rnn2GptError, ValueError):
    """A corpus that cannot be used: missing, empty, binary or not valid UTF-8."""


class TokenizerError(Rnn2GptError, ValueError):
    """Text the tokenizer cannot encode, or tokenizer files that cannot be read."""


class CheckpointError(Rnn2GptError, ValueError):
    """A checkpoint directory with missing, corrupt or mismatched files."""


class TrainingError(Rnn2GptError, RuntimeError):
    """Training cannot go on (a NaN loss, for instance); saved checkpoints are left intact."""


class ContextLengthError(Rnn2GptError, ValueError):
    """A sequence longer than the model's context window."""
