"""``metrics.jsonl`` as a run writes it (training/log.py): every event is kept, a ``train``
event reaches the disk within FLUSH_SECONDS, any other at once."""

from __future__ import annotations

import json

from rnn2gpt.training import log


def lines(path):
    return [json.loads(line)["event"] for line in path.read_text().splitlines()]


def test_train_events_are_flushed_within_a_second_and_others_at_once(tmp_path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(log.time, "monotonic", lambda: clock[0])
    metrics = log.MetricsLog(tmp_path, resumed_step=0)
    path = tmp_path / log.METRICS_FILE
    metrics.write("train", 1, 10, 0.1, loss=2.0)
    metrics.write("train", 2, 20, 0.2, loss=1.9)
    assert lines(path) == [], "a step's line waits for the next flush"
    clock[0] += log.FLUSH_SECONDS
    metrics.write("train", 3, 30, 0.3, loss=1.8)
    assert lines(path) == ["train"] * 3
    metrics.write("train", 4, 40, 0.4, loss=1.7)
    metrics.write("eval", 4, 40, 0.5, loss=1.75)
    assert lines(path) == ["train"] * 4 + ["eval"], "an evaluation flushes what came before"
    metrics.write("train", 5, 50, 0.6, loss=1.6)
    metrics.close()
    assert lines(path) == ["train"] * 4 + ["eval", "train"], "closing flushes the rest"
