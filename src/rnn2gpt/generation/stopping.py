"""Generated tokens -> text, one token at a time, with stop strings found across token boundaries.

:class:`TextTracker` is the single place where generated tokens become text, used both by
:func:`~rnn2gpt.generation.generate` (for every row) and :func:`~rnn2gpt.generation.stream`, so
the streamed pieces always concatenate to the generated text.

How a token becomes text: the bytes it adds are the difference between
``decode_bytes(context + [token])`` and ``decode_bytes(context)``, where ``context`` is the few
tokens before it (the end of the prompt at first). With byte-level tokenizers this is just the
token's own bytes; with tokenizers that join tokens (a word tokenizer puts spaces between words)
it includes the separator, so ``prompt_text + text`` reads as the whole text. The bytes go through
an incremental UTF-8 decoder, so a character split across tokens appears whole, once its last
byte arrives; bytes left incomplete at the end become U+FFFD.

The repetition guard (``repeat_guard = n``, from ``GenerationConfig.repetition_guard`` with the
action ``stop``): a row ends as soon as its last n tokens repeat a span of n tokens seen earlier
(in the prompt or the generated text). Its tokens are kept, so the text ends with that one
repeat, and the finish reason is ``"repetition"``.

Stop strings: after each token the new end of the text is searched for every stop string. The
text is cut exactly before the first occurrence; the tokens kept are those whose text *starts*
before the cut (so the kept tokens decode to the returned text, plus at most the part of one
token that ran into the stop string).
"""

from __future__ import annotations

import bisect
import codecs
from collections import deque
from collections.abc import Sequence

from ..config import GenerationConfig
from ..tokenizers.base import Tokenizer

CONTEXT_TOKENS = 4
"""Tokens of left context used to decode the next token's bytes."""


def decode_bytes(tokenizer: Tokenizer, ids: list[int]) -> bytes:
    """The UTF-8 bytes of ``ids`` (``tokenizer.decode_bytes``; ``decode`` for tokenizers without)."""
    if not ids:
        return b""
    method = getattr(tokenizer, "decode_bytes", None)
    if method is not None:
        return bytes(method(ids))
    return tokenizer.decode(ids).encode("utf-8")


class TextTracker:
    """Text of one generated sequence, grown one token at a time.

    Attributes:
        text: the text so far (cut before the stop string once one is found).
        stopped: True once a stop string (or a repetition) was found; no more tokens are
            accepted.
        repeated: True when the repetition guard ended the text.
        closed: True once :meth:`finish` ran or a stop string was found.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        prompt_ids: Sequence[int] = (),
        stop: Sequence[str] = (),
        repeat_guard: int = 0,
    ) -> None:
        self._tokenizer = tokenizer
        self._guard = repeat_guard
        if repeat_guard:
            self._recent: deque[int] = deque(maxlen=repeat_guard)
            self._seen: set[tuple[int, ...]] = set()
            for token in prompt_ids:
                self._remember(token)
        self._window = list(prompt_ids[-CONTEXT_TOKENS:]) if CONTEXT_TOKENS else []
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(stop)
        self._longest = max((len(s) for s in self._stop), default=0)
        self._starts: list[int] = []  # len(text) before each token was added
        self._kept: int | None = None
        self._shown = 0
        self.text = ""
        self.stopped = False
        self.repeated = False
        self.closed = False

    @classmethod
    def for_config(
        cls, tokenizer: Tokenizer, config: GenerationConfig, prompt_ids: Sequence[int] = ()
    ) -> TextTracker:
        """A tracker with the stop strings and the stopping repetition guard of ``config``."""
        return cls(
            tokenizer, prompt_ids=prompt_ids, stop=config.stop, repeat_guard=repeat_guard(config)
        )

    # ------------------------------------------------------------------ growing

    def add(self, token_id: int) -> bool:
        """Append one generated token; returns True once a stop string has been found."""
        if self.closed:
            raise RuntimeError("TextTracker is closed; no more tokens can be added")
        self._starts.append(len(self.text))
        piece = self._utf8.decode(self._token_bytes(token_id))
        if piece:
            self._grow(piece)
        if self._guard and not self.stopped and self._remember(token_id):
            # Every token is kept (streamed text is never taken back): the text ends with the
            # first repeat of a span of n tokens.
            self.repeated = self.stopped = True
            self.finish()
        return self.stopped

    def finish(self) -> None:
        """The sequence ended: flush an incomplete character (as U+FFFD) and close."""
        if self.closed:
            return
        tail = self._utf8.decode(b"", final=True)
        if tail:
            self._grow(tail)
        self.closed = True

    @property
    def kept_tokens(self) -> int:
        """How many of the added tokens belong to the text (all, unless a stop string cut it)."""
        return len(self._starts) if self._kept is None else self._kept

    def take(self) -> str:
        """Text not yet taken that is safe to show: while open, a tail that could still become a
        stop string is held back. After :meth:`finish` (or a stop) everything left is returned."""
        end = len(self.text) if self.closed else len(self.text) - self._held_back()
        piece = self.text[self._shown : end]
        self._shown = max(self._shown, end)
        return piece

    # ------------------------------------------------------------------ helpers

    def _token_bytes(self, token_id: int) -> bytes:
        window = self._window
        if not window:
            window.append(token_id)
            return decode_bytes(self._tokenizer, window)
        before = decode_bytes(self._tokenizer, window)
        window.append(token_id)
        after = decode_bytes(self._tokenizer, window)
        if len(window) > CONTEXT_TOKENS:
            del window[0]
        if after.startswith(before):
            return after[len(before) :]
        # The tokenizer rewrote earlier text given more context: the token alone is the best guess.
        return decode_bytes(self._tokenizer, [token_id])

    def _grow(self, piece: str) -> None:
        before = len(self.text)
        self.text += piece
        if not self._stop:
            return
        # Only occurrences that end in the new piece are new.
        start = max(0, before - self._longest + 1)
        hits = [i for i in (self.text.find(s, start) for s in self._stop) if i >= 0]
        if hits:
            cut = min(hits)
            self.text = self.text[:cut]
            self._kept = bisect.bisect_left(self._starts, cut)
            self.stopped = self.closed = True

    def _remember(self, token_id: int) -> bool:
        """Note a token; True when the last ``repeat_guard`` tokens occurred together before."""
        self._recent.append(token_id)
        if len(self._recent) < self._guard:
            return False
        span = tuple(self._recent)
        if span in self._seen:
            return True
        self._seen.add(span)
        return False

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        text = self.text
        for k in range(min(self._longest - 1, len(text) - self._shown), 0, -1):
            tail = text[-k:]
            if any(s.startswith(tail) for s in self._stop):
                return k
        return 0


def decode_generated(
    tokenizer: Tokenizer,
    token_ids: Sequence[int],
    *,
    prompt_ids: Sequence[int] = (),
    stop: Sequence[str] = (),
    repeat_guard: int = 0,
) -> TextTracker:
    """Run a finished sequence through a :class:`TextTracker` (stopping at a stop string or a
    repetition)."""
    tracker = TextTracker(tokenizer, prompt_ids=prompt_ids, stop=stop, repeat_guard=repeat_guard)
    for token in token_ids:
        if tracker.add(token):
            break
    tracker.finish()
    return tracker


__all__ = ["CONTEXT_TOKENS", "TextTracker", "decode_bytes", "decode_generated"]


def repeat_guard(config: GenerationConfig) -> int:
    """n of a repetition guard that stops rows (0: none; ``resample`` is a processor instead)."""
    return config.repetition_guard if config.repetition_guard_action == "stop" else 0
