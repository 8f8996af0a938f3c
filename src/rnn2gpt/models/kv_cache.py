"""The GPT's state: keys and values of every past token, per layer.

Slots are filled left to right, the same number for every row (``length``). Left-padded prompts
put their padding in the first slots; ``valid`` (B, C) marks which slots hold real tokens, and
positions count real tokens only. Without padding ``valid`` is None, and nothing about masks or
per-row positions is ever computed: a decode step writes its key and value into a preallocated
slot and attends over a view of the filled slots.

Two ways a cache comes to exist:

- ``GPT.new_state(B, pad_mask, capacity)``: buffers of ``capacity`` slots are preallocated.
- ``GPT.forward(x, None)``: a *light* cache that only references the keys and values the
  forward pass computed anyway (nothing is copied: this is the training path). If it is ever
  continued, it grows once into a buffer of ``capacity`` slots (the context length).

``forward`` updates a cache in place and returns it; continue from the returned state only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class KVCache:
    """Per-layer keys and values, shape (B, H, C, D) each (C = allocated slots).

    Attributes:
        keys, values: one tensor (B, H, C, D) per layer; None for a layer not yet run.
        length: filled slots (the same for every row).
        capacity: the most slots this cache may hold; longer input raises ContextLengthError.
        valid: (B, capacity) bool, True at slots holding real tokens; None when nothing is padded.
        pad_len: number of leading slots that may hold padding (T0 of the pad mask; 0 if none).
        num_pad: (B,) long, pad slots per row (positions of later tokens are slot - num_pad).
    """

    def __init__(
        self,
        keys: list[Tensor | None],
        values: list[Tensor | None],
        *,
        batch_size: int,
        capacity: int,
        length: int = 0,
        valid: Tensor | None = None,
    ) -> None:
        self.keys = keys
        self.values = values
        self.length = length
        self.capacity = capacity
        self.valid = valid
        self._batch_size = batch_size
        if valid is None:
            self.pad_len = 0
            self.num_pad: Tensor | None = None
        else:
            # Slots past the pad mask are written by later tokens, all real; only the prefix
            # can hold padding. Since num_pad counts pads in that prefix, later positions are
            # just slot - num_pad (no cumsum per step).
            padded = ~valid
            self.pad_len = int(padded.nonzero()[:, 1].max()) + 1 if bool(padded.any()) else 0
            self.num_pad = padded[:, : self.pad_len].sum(dim=1)

    # ------------------------------------------------------------------ construction

    @classmethod
    def empty(
        cls,
        num_layers: int,
        batch_size: int,
        capacity: int,
    ) -> KVCache:
        """A light cache: no buffers until the first ``append`` (used by ``forward(x, None)``)."""
        return cls(
            [None] * num_layers, [None] * num_layers, batch_size=batch_size, capacity=capacity
        )

    @classmethod
    def allocate(
        cls,
        num_layers: int,
        batch_size: int,
        num_heads: int,
        head_dim: int,
        capacity: int,
        *,
        dtype: torch.dtype,
        device: torch.device,
        pad_mask: Tensor | None = None,
    ) -> KVCache:
        """Preallocated buffers of ``capacity`` slots; ``pad_mask`` (B, T0) marks real tokens."""
        shape = (batch_size, num_heads, capacity, head_dim)
        keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        valid = None
        if pad_mask is not None and not bool(pad_mask.all()):
            valid = torch.ones(batch_size, capacity, dtype=torch.bool, device=device)
            valid[:, : pad_mask.shape[1]] = pad_mask.to(device=device, dtype=torch.bool)
        return cls(keys, values, batch_size=batch_size, capacity=capacity, valid=valid)

    # ------------------------------------------------------------------ State contract

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def next_pos(self) -> Tensor:
        """(B,) long: the position the next token of each row will take (real tokens so far)."""
        device = self._device()
        if self.valid is None:
            return torch.full((self._batch_size,), self.length, dtype=torch.long, device=device)
        return self.valid[:, : self.length].sum(dim=1)

    def select(self, index: Tensor) -> KVCache:
        """A new cache holding rows ``index`` (LongTensor (B',)) in that order."""
        index = index.to(self._device())

        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.index_select(0, index)

        return self._replace(
            [pick(k) for k in self.keys],
            [pick(v) for v in self.values],
            batch_size=index.numel(),
            valid=pick(self.valid),
        )

    def detach(self) -> KVCache:
        def cut(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.detach()

        return self._replace(
            [cut(k) for k in self.keys], [cut(v) for v in self.values], self._batch_size, self.valid
        )

    # ------------------------------------------------------------------ used by the model

    def is_fresh(self, layer: int) -> bool:
        """Whether ``layer`` holds nothing yet in a light cache: its next ``append`` references
        the new keys and values, and attention sees those alone."""
        return self.length == 0 and self.keys[layer] is None

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store a layer's new keys/values (B, H, T, D) after ``length``; return all (B, H, S, D).

        ``length`` is advanced once per forward by :meth:`advance`, after every layer appended.
        """
        start, stop = self.length, self.length + k.shape[2]
        cached_k, cached_v = self.keys[layer], self.values[layer]
        if cached_k is None and start == 0:
            # Light path: reference the fresh tensors, copy nothing.
            self.keys[layer], self.values[layer] = k, v
            return k, v
        assert cached_k is not None and cached_v is not None
        if torch.is_grad_enabled() and (k.requires_grad or cached_k.requires_grad):
            # Writing into a buffer in place would break backpropagation through earlier
            # steps; with autograd on, grow by concatenation instead.
            cached_k = torch.cat([cached_k[:, :, :start], k], dim=2)
            cached_v = torch.cat([cached_v[:, :, :start], v], dim=2)
            self.keys[layer], self.values[layer] = cached_k, cached_v
            return cached_k, cached_v
        if cached_k.shape[2] < stop:
            cached_k, cached_v = self._grow(layer, cached_k, cached_v, start)
        cached_k[:, :, start:stop].copy_(k)
        cached_v[:, :, start:stop].copy_(v)
        return cached_k[:, :, :stop], cached_v[:, :, :stop]

    def advance(self, steps: int) -> None:
        """Mark ``steps`` more slots filled (called once per forward)."""
        self.length += steps

    def positions(self, steps: int) -> Tensor | None:
        """(B, steps) long positions of the next ``steps`` tokens, or None when they are simply
        ``length .. length + steps - 1`` for every row (no padding)."""
        if self.valid is None:
            return None
        stop = self.length + steps
        if self.length >= self.pad_len:
            slots = torch.arange(self.length, stop, device=self.valid.device)
            return slots[None, :] - self.num_pad[:, None]
        # Inside the padded prefix: count real tokens; pads take position 0 (never attended).
        counts = self.valid[:, :stop].long().cumsum(dim=1) - 1
        return counts[:, self.length :].clamp(min=0)

    def attention_mask(self, steps: int) -> tuple[Tensor | None, bool]:
        """(mask, is_causal) for ``steps`` new queries over all ``length + steps`` keys.

        mask is None or bool, True = may attend, broadcastable to (B, H, steps, S). Only the
        cases that need one build one: a plain decode step attends to everything (no mask), a
        fresh sequence is plain causal (``is_causal``).
        """
        start, stop = self.length, self.length + steps
        if self.valid is None:
            if start == 0 and steps > 1:
                return None, True
            if steps == 1:
                return None, False
            return _causal(start, stop, self._device()), False
        if steps == 1 and start >= self.pad_len:
            # A real query over the filled slots: a view, no allocation.
            return self.valid[:, None, None, :stop], False
        causal = _causal(start, stop, self.valid.device)  # (steps, S)
        slots = torch.arange(stop, device=self.valid.device)
        itself = slots[None, :] == torch.arange(start, stop, device=self.valid.device)[:, None]
        # Every query may see itself, so a pad query row is never fully masked (no NaN).
        return (self.valid[:, None, None, :stop] & causal) | itself, False

    # ------------------------------------------------------------------ helpers

    def _grow(self, layer: int, k: Tensor, v: Tensor, filled: int) -> tuple[Tensor, Tensor]:
        """Move a light (exactly filled) layer into a buffer of ``capacity`` slots, once."""
        batch, heads, _, dim = k.shape
        new_k = k.new_zeros(batch, heads, self.capacity, dim)
        new_v = v.new_zeros(batch, heads, self.capacity, dim)
        new_k[:, :, :filled] = k[:, :, :filled]
        new_v[:, :, :filled] = v[:, :, :filled]
        self.keys[layer], self.values[layer] = new_k, new_v
        return new_k, new_v

    def _device(self) -> torch.device:
        for t in (self.valid, *self.keys):
            if t is not None:
                return t.device
        return torch.device("cpu")

    def _replace(
        self,
        keys: list[Tensor | None],
        values: list[Tensor | None],
        batch_size: int,
        valid: Tensor | None,
    ) -> KVCache:
        new = KVCache.__new__(KVCache)
        new.keys, new.values = keys, values
        new.length, new.capacity, new.valid = self.length, self.capacity, valid
        new._batch_size = batch_size
        new.pad_len = self.pad_len
        # num_pad per row follows the rows selected; recomputed from valid when present.
        new.num_pad = None if valid is None else (~valid[:, : self.pad_len]).sum(dim=1)
        return new

    def __repr__(self) -> str:
        return (
            f"KVCache(batch_size={self._batch_size}, layers={len(self.keys)}, "
            f"length={self.length}, capacity={self.capacity}, padded={self.valid is not None})"
        )


class SlotKVCache:
    """A KV cache whose rows are independent slots, each with its own length.

    What continuous batching needs: a request joins by having its prefilled cache copied into a
    free slot (:meth:`write_rows`), leaves by having its slot reset (:meth:`free`), and every
    decode step feeds one token to every slot at the same shapes, busy or not (so the same
    kernels run whatever the load). Speculative decoding rolls rows back with :meth:`truncate`.

    Buffers are (B, H, C, D) per layer with C = capacity; row b holds ``lengths[b]`` tokens, at
    positions 0 .. lengths[b] - 1 (no padding: a row's tokens start at slot 0). A new token of row
    b is written at slot ``lengths[b]`` and attends to slots 0 .. lengths[b]. The row lengths are
    kept on the host too, so no step needs a device sync to know them.

    Attention reads every slot (fixed shapes: the scheduler's batch invariance), or with ``trim``
    only the slots up to the longest row (a speculative run, whose rows never share a step with
    strangers, pays for what is filled only).
    """

    def __init__(
        self, keys: list[Tensor], values: list[Tensor], capacity: int, *, trim: bool = False
    ) -> None:
        self.keys = keys
        self.values = values
        self.capacity = capacity
        self.trim = trim
        batch = keys[0].shape[0]
        self.lengths = torch.zeros(batch, dtype=torch.long, device=keys[0].device)  # (B,)
        self.host_lengths = [0] * batch

    @classmethod
    def allocate(
        cls,
        num_layers: int,
        batch_size: int,
        num_heads: int,
        head_dim: int,
        capacity: int,
        *,
        dtype: torch.dtype,
        device: torch.device,
        trim: bool = False,
    ) -> SlotKVCache:
        shape = (batch_size, num_heads, capacity, head_dim)
        keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        return cls(keys, values, capacity, trim=trim)

    # ------------------------------------------------------------------ State contract

    @property
    def batch_size(self) -> int:
        return len(self.host_lengths)

    @property
    def length(self) -> int:
        """The longest row (the model checks that a step still fits the capacity)."""
        return max(self.host_lengths)

    def select(self, index: Tensor) -> SlotKVCache:
        """A new slot cache holding rows ``index`` (LongTensor (B',)) in that order."""
        index = index.to(self.lengths.device)
        new = SlotKVCache(
            [k.index_select(0, index) for k in self.keys],
            [v.index_select(0, index) for v in self.values],
            self.capacity,
            trim=self.trim,
        )
        new.lengths = self.lengths.index_select(0, index)
        new.host_lengths = [self.host_lengths[i] for i in index.tolist()]
        return new

    def detach(self) -> SlotKVCache:
        return self

    # ------------------------------------------------------------------ slot operations

    def write_rows(self, slots: Sequence[int], other: KVCache | SlotKVCache) -> None:
        """Copy every row of ``other`` (a cache of len(slots) rows, all of one length, without
        padding: a prefill of one prompt) into ``slots``, in place."""
        length = other.length
        if length > self.capacity:
            raise ValueError(f"{length} tokens do not fit slots of {self.capacity}")
        index = torch.tensor(list(slots), dtype=torch.long, device=self.lengths.device)
        for mine, theirs in ((self.keys, other.keys), (self.values, other.values)):
            for layer, buffer in enumerate(mine):
                source = theirs[layer]
                assert source is not None
                buffer[index, :, :length] = source[:, :, :length].to(buffer.dtype)
        self.lengths[index] = length
        for slot in slots:
            self.host_lengths[slot] = length

    def rows(self, start: int, stop: int) -> SlotKVCache:
        """Rows start..stop-1 as a cache of their own that shares this one's memory: a forward
        over it writes here (hand it back with :meth:`set_rows` for the lengths)."""
        part = SlotKVCache.__new__(SlotKVCache)
        part.keys = [k[start:stop] for k in self.keys]
        part.values = [v[start:stop] for v in self.values]
        part.capacity = self.capacity
        part.trim = self.trim
        part.lengths = self.lengths[start:stop]  # a view: advancing it advances these rows
        part.host_lengths = self.host_lengths[start:stop]
        return part

    def set_rows(self, start: int, stop: int, part: SlotKVCache) -> None:
        """Take back rows start..stop-1 after a forward over :meth:`rows` (memory is shared:
        only the host's copy of the lengths needs it)."""
        self.host_lengths[start:stop] = part.host_lengths

    def free(self, slots: Sequence[int]) -> None:
        """Empty ``slots`` (their stale keys and values are never attended to again)."""
        self.truncate({slot: 0 for slot in slots})

    def truncate(self, lengths: dict[int, int]) -> None:
        """Roll rows back: row ``slot`` keeps its first ``lengths[slot]`` tokens (exact: later
        slots are masked until overwritten)."""
        for slot, length in lengths.items():
            if not 0 <= length <= self.host_lengths[slot]:
                raise ValueError(
                    f"cannot truncate row {slot} of {self.host_lengths[slot]} to {length}"
                )
            self.host_lengths[slot] = length
        index = torch.tensor(list(lengths), dtype=torch.long, device=self.lengths.device)
        self.lengths[index] = torch.tensor(list(lengths.values()), device=self.lengths.device)

    # ------------------------------------------------------------------ used by the model

    def positions(self, steps: int) -> Tensor:
        """(B, steps) positions of the next tokens of every row."""
        offsets = torch.arange(steps, device=self.lengths.device)
        return self.lengths[:, None] + offsets[None, :]

    def attended(self, steps: int) -> int:
        """How many slots the next ``steps`` tokens attend over: all, or those filled (trim)."""
        return min(self.capacity, max(self.host_lengths) + steps) if self.trim else self.capacity

    def attention_mask(self, steps: int) -> tuple[Tensor, bool]:
        """(B, 1, steps, S) bool (S = :meth:`attended`): the query at position p of a row sees
        that row's slots <= p."""
        queries = self.positions(steps)  # (B, T)
        slots = torch.arange(self.attended(steps), device=self.lengths.device)
        return (slots[None, None, :] <= queries[:, :, None])[:, None], False

    def is_fresh(self, layer: int) -> bool:
        """Never: a slot cache's buffers are allocated, and its rows have lengths of their own."""
        return False

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write a layer's new keys/values (B, H, T, D) at each row's own positions; return the
        buffers' first :meth:`attended` slots (B, H, S, D) (the mask hides what a row has not
        written)."""
        batch, heads, steps, dim = k.shape
        where = self.positions(steps)[:, None, :, None].expand(batch, heads, steps, dim)
        self.keys[layer].scatter_(2, where, k.to(self.keys[layer].dtype))
        self.values[layer].scatter_(2, where, v.to(self.values[layer].dtype))
        width = self.attended(steps)
        return self.keys[layer][:, :, :width], self.values[layer][:, :, :width]

    def advance(self, steps: int) -> None:
        """Every row took ``steps`` more tokens (after every layer appended)."""
        self.lengths += steps
        self.host_lengths = [n + steps for n in self.host_lengths]

    def __repr__(self) -> str:
        return (
            f"SlotKVCache(batch_size={self.batch_size}, layers={len(self.keys)}, "
            f"lengths={self.host_lengths}, capacity={self.capacity})"
        )


def _causal(start: int, stop: int, device: torch.device) -> Tensor:
    """(stop - start, stop) bool: query at slot start + i may see keys at slots <= start + i."""
    keys = torch.arange(stop, device=device)
    queries = torch.arange(start, stop, device=device)
    return keys[None, :] <= queries[:, None]


__all__ = ["KVCache", "SlotKVCache"]
