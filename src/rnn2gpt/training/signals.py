"""Ctrl-C during training: the first one asks the loop to save ``last/`` and stop after this step;
a second one aborts at once."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def sigint_flag() -> Iterator[threading.Event]:
    """An Event set by the first Ctrl-C (main thread only); a second Ctrl-C aborts at once."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()
        logger.warning(
            "interrupted: saving the last checkpoint after this step (Ctrl-C again to abort)"
        )

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


__all__ = ["sigint_flag"]
