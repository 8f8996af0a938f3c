"""Machine translation with an encoder-decoder checkpoint."""

from __future__ import annotations

import os
from collections.abc import Sequence

from .seq2seq import Seq2SeqRunner, load_seq2seq


def translate(
    checkpoint: str | os.PathLike[str] | Seq2SeqRunner,
    lines: Sequence[str],
    *,
    num_beams: int = 5,
    max_new_tokens: int | None = None,
    length_penalty: float | None = None,
    batch_size: int = 32,
    device: str = "cpu",
) -> list[str]:
    """Translate each line (beam search with ``num_beams`` beams; 1 = greedy)."""
    runner = load_seq2seq(checkpoint, device=device)
    return runner.run(
        list(lines),
        num_beams=num_beams,
        max_new_tokens=max_new_tokens,
        length_penalty=length_penalty,
        batch_size=batch_size,
    )


__all__ = ["translate"]
