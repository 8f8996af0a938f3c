"""rnn2gpt: neural text generation from RNN to GPT.

The Python face is small and stable::

    import rnn2gpt
    result = rnn2gpt.train(preset="shakespeare-char-gpt", out="runs/shakespeare")
    gen = rnn2gpt.load("runs/shakespeare/best")
    print(gen.generate("ROMEO:", max_new_tokens=200, temperature=0.8))
    for piece in gen.stream("JULIET:"):
        print(piece, end="")

Heavy modules (torch, the models) are imported on first use, so ``import rnn2gpt`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from .api import TextGenerator


def load(directory: str, **kwargs: Any) -> TextGenerator:
    """Load a checkpoint directory; see :func:`rnn2gpt.api.load`."""
    from .api import load as _load

    return _load(directory, **kwargs)


def train(**kwargs: Any):
    """Train a model; see :func:`rnn2gpt.api.train` (mirrors ``rnn2gpt train``)."""
    from .api import train as _train

    return _train(**kwargs)


def finetune(checkpoint: str, **kwargs: Any):
    """Fine-tune a checkpoint on new text (full or LoRA); see :func:`rnn2gpt.api.finetune`
    (mirrors ``rnn2gpt finetune``)."""
    from .api import finetune as _finetune

    return _finetune(checkpoint, **kwargs)


def translate(checkpoint: str, lines: list[str], **kwargs: Any) -> list[str]:
    """Translate each line with an encoder-decoder checkpoint; see
    :func:`rnn2gpt.tasks.translate` (mirrors ``rnn2gpt translate``)."""
    from .tasks import translate as _translate

    return _translate(checkpoint, lines, **kwargs)


def summarize(checkpoint: str, texts: list[str], **kwargs: Any) -> list[str]:
    """Summarize each text with an encoder-decoder checkpoint; see
    :func:`rnn2gpt.tasks.summarize` (mirrors ``rnn2gpt summarize``)."""
    from .tasks import summarize as _summarize

    return _summarize(checkpoint, texts, **kwargs)


def detect_watermark(source: str, text: str, key: str, **kwargs: Any):
    """Whether ``text`` carries the watermark of ``key``; see :func:`rnn2gpt.api.detect_watermark`
    (mirrors ``rnn2gpt detect``)."""
    from .api import detect_watermark as _detect

    return _detect(source, text, key, **kwargs)


__all__ = ["__version__", "detect_watermark", "finetune", "load", "summarize", "train", "translate"]
