"""WindowBatches, StreamBatches and eval_batches.

The ids are ``arange(n)`` in most tests: every token is unique, so a value says where it came
from and "y is x shifted by one" reads as ``y == x + 1``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rnn2gpt.data import StreamBatches, WindowBatches, eval_batches
from rnn2gpt.errors import DataError

# ------------------------------------------------------------------ windows


def test_window_shapes_and_shift():
    ids = np.arange(500, dtype=np.uint16)
    batches = WindowBatches(ids, batch_size=4, seq_len=16, seed=0)
    x, y = batches.get(0)
    assert x.shape == y.shape == (4, 16)
    assert x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1)
    # Each row is a contiguous window of the text.
    assert torch.equal(x - x[:, :1], torch.arange(16).expand(4, 16))


def test_window_batches_depend_only_on_seed_and_step():
    ids = np.arange(1000, dtype=np.int64)
    a = WindowBatches(ids, 3, 8, seed=7)
    b = WindowBatches(ids, 3, 8, seed=7)
    forward = [a.get(step)[0] for step in range(6)]
    backward = [b.get(step)[0] for step in reversed(range(6))][::-1]  # "resumed" out of order
    for fa, fb in zip(forward, backward):
        assert torch.equal(fa, fb)
    assert not torch.equal(a.get(0)[0], a.get(1)[0])
    assert not torch.equal(a.get(0)[0], WindowBatches(ids, 3, 8, seed=8).get(0)[0])


def test_batches_drawn_ahead_are_each_steps_own(monkeypatch):
    from rnn2gpt.data import batching

    big = WindowBatches(np.arange(10**6), 64, 1023, seed=0)
    assert big._steps_ahead == 16  # at most AHEAD_TOKENS ids ahead
    monkeypatch.setattr(batching, "AHEAD_STEPS", 4)
    ids = np.arange(1000, dtype=np.int64)
    ahead = WindowBatches(ids, 3, 8, seed=7)
    draws = []
    real = ahead._draw
    monkeypatch.setattr(ahead, "_draw", lambda step: draws.append(step) or real(step))
    got = [ahead.get(step) for step in (*range(10), 3, 2)]  # past a block, then back
    assert draws == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 3, 4, 5, 6, 2, 3, 4, 5]
    for step, (x, y) in zip((*range(10), 3, 2), got):
        alone = WindowBatches(ids, 3, 8, seed=7)  # a fresh one draws this step first
        expected = alone.get(step)
        assert torch.equal(x, expected[0]) and torch.equal(y, expected[1]), step


def test_window_ranks_draw_different_windows():
    ids = np.arange(10_000)
    r0 = WindowBatches(ids, 4, 8, seed=1, rank=0, world_size=2).get(3)[0]
    r1 = WindowBatches(ids, 4, 8, seed=1, rank=1, world_size=2).get(3)[0]
    assert not torch.equal(r0, r1)
    with pytest.raises(ValueError, match="rank"):
        WindowBatches(ids, 4, 8, seed=1, rank=2, world_size=2)


def test_window_starts_reach_both_ends():
    n, seq_len = 20, 5
    batches = WindowBatches(np.arange(n), batch_size=8, seq_len=seq_len, seed=3)
    starts = torch.cat([batches.get(step)[0][:, 0] for step in range(50)])
    assert int(starts.min()) == 0
    assert int(starts.max()) == n - seq_len - 1  # the last window ends on the last token
    assert batches.get(0)[1].max() < n


def test_window_accepts_negative_seed_and_readonly_memmap(tmp_path):
    path = tmp_path / "ids.bin"
    np.arange(100, dtype=np.uint16).tofile(path)
    ids = np.memmap(path, dtype=np.uint16, mode="r")
    x, y = WindowBatches(ids, 2, 4, seed=-5).get(0)
    x += 1  # the batch owns its memory; the memmap is untouched
    assert torch.equal(y, x)
    assert int(ids[0]) == 0


def test_window_too_little_data():
    with pytest.raises(DataError, match=r"has 8 tokens.*train\.seq_len"):
        WindowBatches(np.arange(8), batch_size=2, seq_len=8)
    WindowBatches(np.arange(9), batch_size=2, seq_len=8)  # exactly seq_len + 1 is enough


# ------------------------------------------------------------------ streams


def test_stream_lanes_continue_across_steps():
    n, batch_size, seq_len = 103, 4, 5
    batches = StreamBatches(np.arange(n), batch_size, seq_len)
    lane_len = n // batch_size  # 25; the last 3 tokens are dropped
    assert len(batches) == -(-(lane_len - 1) // seq_len)  # 24 targets per lane -> 5 batches
    xs, ys = [], []
    for step in range(len(batches)):
        x, y, reset = batches.get(step)
        assert reset == (step == 0)
        assert torch.equal(y, x + 1)
        if xs:
            # Each lane picks up exactly where the previous batch stopped.
            assert torch.equal(x[:, 0], xs[-1][:, -1] + 1)
        xs.append(x)
        ys.append(y)
    assert xs[-1].shape == (batch_size, (lane_len - 1) % seq_len)  # the short last batch
    lanes = torch.arange(batch_size * lane_len).view(batch_size, lane_len)
    assert torch.equal(torch.cat(xs, dim=1), lanes[:, :-1])
    assert torch.equal(torch.cat(ys, dim=1), lanes[:, 1:])


def test_stream_passes_repeat_with_reset():
    batches = StreamBatches(np.arange(64), batch_size=2, seq_len=8)
    n = len(batches)
    assert [batches.get(step)[2] for step in range(2 * n + 1)] == (
        [True] + [False] * (n - 1)
    ) * 2 + [True]
    assert torch.equal(batches.get(1)[0], batches.get(n + 1)[0])


def test_stream_ranks_share_lanes():
    ids = np.arange(120)
    parts = [StreamBatches(ids, 2, 6, rank=r, world_size=3) for r in range(3)]
    firsts = torch.cat([p.get(0)[0][:, 0] for p in parts])
    assert firsts.tolist() == [0, 20, 40, 60, 80, 100]  # six lanes of 20, two per rank
    assert all(len(p) == len(parts[0]) for p in parts)


def test_stream_too_little_data():
    with pytest.raises(DataError, match=r"has 7 tokens.*train\.batch_size"):
        StreamBatches(np.arange(7), batch_size=4, seq_len=2)
    assert len(StreamBatches(np.arange(8), batch_size=4, seq_len=2)) == 1


# ------------------------------------------------------------------ evaluation


@pytest.mark.parametrize(
    "n, batch_size, seq_len", [(101, 3, 7), (97, 4, 8), (33, 2, 32), (65, 2, 8)]
)
def test_eval_windows_score_every_target_once(n, batch_size, seq_len):
    batches = list(eval_batches(np.arange(n), batch_size, seq_len))
    counts = np.zeros(n, dtype=np.int64)
    previous_end = 0
    for x, y, reset in batches:
        assert reset is True
        assert torch.equal(y, x + 1)
        assert x.shape[0] <= batch_size and x.shape[1] <= seq_len
        assert int(x[0, 0]) == previous_end  # in text order
        previous_end = int(x[-1, -1]) + 1
        np.add.at(counts, y.reshape(-1).numpy(), 1)
    assert counts[0] == 0 and (counts[1:] == 1).all()


def test_eval_max_batches_and_determinism():
    ids = np.arange(200)
    all_batches = list(eval_batches(ids, 2, 10))
    limited = list(eval_batches(ids, 2, 10, max_batches=3))
    assert len(limited) == 3 < len(all_batches)
    for (xa, ya, _), (xb, yb, _) in zip(all_batches, limited):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_eval_stream_follows_the_stream_layout():
    ids = np.arange(90)
    streamed = list(eval_batches(ids, 3, 7, stream=True))
    reference = StreamBatches(ids, 3, 7)
    assert len(streamed) == len(reference)
    assert [reset for _, _, reset in streamed] == [True] + [False] * (len(reference) - 1)
    for step, (x, y, _) in enumerate(streamed):
        rx, ry, _ = reference.get(step)
        assert torch.equal(x, rx) and torch.equal(y, ry)
    n_targets = sum(y.numel() for _, y, _ in streamed)
    assert n_targets == reference.tokens_per_pass == 3 * (90 // 3 - 1)
    assert len(list(eval_batches(ids, 3, 7, max_batches=2, stream=True))) == 2


def test_eval_too_little_data():
    with pytest.raises(DataError, match="validation text has 5 tokens"):
        list(eval_batches(np.arange(5), 2, 8))
