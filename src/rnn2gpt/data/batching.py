"""Language-model batches: random windows (GPT) and contiguous streams (RNNs, truncated BPTT).

Every batch is a pair of LongTensors ``x, y`` of shape (B, T) with ``y[:, t] == ids[... t + 1]``:
the target of each position is the next token. ``ids`` is any 1-D integer array (typically the
read-only ``np.memmap`` from :func:`~rnn2gpt.data.encode_cached`); batches are cut from it with
numpy indexing, so the per-batch Python work is a few calls whatever B and T are.

Both training samplers are functions of the step number alone, so resuming at step k replays
exactly the batches an uninterrupted run would have seen, with nothing but k saved.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ..errors import DataError

Batch = tuple[torch.Tensor, torch.Tensor]  # x, y: LongTensor (B, T)
EvalBatch = tuple[torch.Tensor, torch.Tensor, bool]  # x, y, reset


# Token ids WindowBatches draws ahead at most (8 MB of int64): the batches of the next steps are
# drawn together, with the interpreter's objects warm, where one batch per step after the
# model's C calls cost 271 us against 45 us alone (benchmarks/RESULTS.md, issue 14's eleventh
# part). Each batch is still a function of its step alone.
AHEAD_TOKENS = 1 << 20
AHEAD_STEPS = 32


class WindowBatches:
    """Independent random windows of ``seq_len + 1`` tokens, for models without carried state.

    ``get(step)`` draws ``batch_size`` window starts uniformly from a generator seeded by
    ``(seed, rank, step)`` only: the same step always gives the same batch, and distributed
    ranks draw different windows. Steps are drawn up to :data:`AHEAD_STEPS` at a time (a call
    for a step not drawn yet draws it and the ones after it).
    """

    def __init__(
        self,
        ids: np.ndarray,
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        *,
        rank: int = 0,
        world_size: int = 1,
        name: str = "the training text",
    ) -> None:
        _check_shape_args(batch_size, seq_len, rank, world_size)
        self.ids = _as_1d(ids)
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = seed % 2**63  # SeedSequence needs non-negative entropy
        self.rank = rank
        self.world_size = world_size
        _require_window(len(self.ids), seq_len, name)
        # Window offsets 0..T, added to the starts to build a (B, T + 1) index in one go.
        self._offsets = np.arange(seq_len + 1, dtype=np.int64)
        self._ahead: dict[int, Batch] = {}
        self._steps_ahead = max(1, min(AHEAD_STEPS, AHEAD_TOKENS // (batch_size * (seq_len + 1))))

    def get(self, step: int) -> Batch:
        """Batch number ``step``: x, y LongTensors (B, T), y being x shifted left by one token."""
        if step < 0:
            raise ValueError(f"step must be >= 0 (got {step})")
        batch = self._ahead.pop(step, None)
        if batch is None:
            self._ahead = {s: self._draw(s) for s in range(step, step + self._steps_ahead)}
            batch = self._ahead.pop(step)
        return batch

    def _draw(self, step: int) -> Batch:
        rng = np.random.default_rng([self.seed, self.rank, step])
        starts = rng.integers(0, len(self.ids) - self.seq_len, size=self.batch_size)
        windows = self.ids[starts[:, None] + self._offsets]  # (B, T + 1)
        return _split_xy(windows)


class StreamBatches:
    """Contiguous lanes for truncated backpropagation through time.

    The ids are cut into ``batch_size * world_size`` equal contiguous lanes (the remainder is
    dropped) and this rank keeps ``batch_size`` of them. Batch ``i`` of a pass holds columns
    ``[i*T, (i+1)*T)`` of every lane, so row ``b`` of batch ``i + 1`` continues row ``b`` of batch
    ``i`` and the hidden state can be carried across them. The last batch of a pass may be
    shorter than T. Passes repeat; ``get(step)`` uses batch ``step % len(self)``.
    """

    def __init__(
        self,
        ids: np.ndarray,
        batch_size: int,
        seq_len: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        name: str = "the training text",
    ) -> None:
        _check_shape_args(batch_size, seq_len, rank, world_size)
        ids = _as_1d(ids)
        n_lanes = batch_size * world_size
        lane_len = len(ids) // n_lanes
        if lane_len < 2:
            raise DataError(
                f"{name} has {len(ids):,} tokens, too few to cut into {n_lanes} lanes of at "
                "least 2 tokens; lower train.batch_size or add text"
            )
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.lane_len = lane_len
        # A view, not a copy: slicing and reshaping a memmap keeps it on disk.
        all_lanes = ids[: n_lanes * lane_len].reshape(n_lanes, lane_len)
        self.lanes = all_lanes[rank * batch_size : (rank + 1) * batch_size]  # (B, lane_len)
        # Each lane yields lane_len - 1 targets, T per batch, the last batch possibly shorter.
        self._n_batches = -(-(lane_len - 1) // seq_len)

    def __len__(self) -> int:
        """Batches per pass over the lanes."""
        return self._n_batches

    @property
    def tokens_per_pass(self) -> int:
        """Targets in one pass over this rank's lanes."""
        return self.batch_size * (self.lane_len - 1)

    def get(self, step: int) -> EvalBatch:
        """x, y LongTensors (B, T') with T' <= T, and ``reset``: True at the start of a pass."""
        if step < 0:
            raise ValueError(f"step must be >= 0 (got {step})")
        i = step % self._n_batches
        start = i * self.seq_len
        window = self.lanes[:, start : start + self.seq_len + 1]  # (B, T' + 1)
        x, y = _split_xy(window)
        return x, y, i == 0


def eval_batches(
    ids: np.ndarray,
    batch_size: int,
    seq_len: int,
    max_batches: int = 0,
    stream: bool = False,
    *,
    name: str = "the validation text",
) -> Iterator[EvalBatch]:
    """Deterministic evaluation batches ``(x, y, reset)`` in text order.

    ``stream=False``: consecutive non-overlapping windows, ``batch_size`` rows at a time (the last
    group may have fewer rows); when the targets do not divide into whole windows, a final (1, r)
    batch holds the remaining r, so every target token is scored exactly once. ``reset`` is always
    True (rows are independent windows).

    ``stream=True``: the :class:`StreamBatches` layout, one pass in order; ``reset`` is True on the
    first batch only (the remainder that does not fill the lanes is not scored).

    ``max_batches=0`` yields everything; otherwise at most that many batches.
    """
    if max_batches < 0:
        raise ValueError(f"max_batches must be >= 0 (got {max_batches})")
    if stream:
        batches = StreamBatches(ids, batch_size, seq_len, name=name)
        limit = len(batches) if max_batches == 0 else min(max_batches, len(batches))
        for i in range(limit):
            yield batches.get(i)
        return

    _check_shape_args(batch_size, seq_len, 0, 1)
    ids = _as_1d(ids)
    _require_window(len(ids), seq_len, name)
    n_targets = len(ids) - 1
    n_windows, tail = divmod(n_targets, seq_len)
    offsets = np.arange(seq_len + 1, dtype=np.int64)
    yielded = 0
    for first in range(0, n_windows, batch_size):
        if max_batches and yielded >= max_batches:
            return
        starts = np.arange(first, min(first + batch_size, n_windows), dtype=np.int64) * seq_len
        x, y = _split_xy(ids[starts[:, None] + offsets])
        yield x, y, True
        yielded += 1
    if tail and not (max_batches and yielded >= max_batches):
        x, y = _split_xy(ids[None, n_windows * seq_len :])
        yield x, y, True


# --------------------------------------------------------------------------- helpers


def _as_1d(ids: np.ndarray) -> np.ndarray:
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    array = np.asarray(ids)
    if array.ndim != 1:
        raise ValueError(f"ids must be 1-D (got shape {array.shape})")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"ids must be integers (got {array.dtype})")
    return array


def _split_xy(windows: np.ndarray) -> Batch:
    """(B, T + 1) ids -> x = windows[:, :-1], y = windows[:, 1:], as int64 tensors (B, T).

    ``np.array`` always copies, so x and y own their memory: they neither alias the (possibly
    read-only, memory-mapped) ids nor each other.
    """
    x = np.array(windows[:, :-1], dtype=np.int64)
    y = np.array(windows[:, 1:], dtype=np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


def _check_shape_args(batch_size: int, seq_len: int, rank: int, world_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1 (got {seq_len})")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size (got rank {rank}, world_size {world_size})")


def _require_window(n_tokens: int, seq_len: int, name: str) -> None:
    if n_tokens < seq_len + 1:
        raise DataError(
            f"{name} has {n_tokens:,} tokens, fewer than train.seq_len + 1 = {seq_len + 1}; "
            "lower train.seq_len or add text"
        )


__all__ = ["Batch", "EvalBatch", "StreamBatches", "WindowBatches", "eval_batches"]
