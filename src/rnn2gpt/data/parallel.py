"""Parallel text for sequence-to-sequence tasks: reading pairs, encoding them, batching them.

Two formats:

- line-aligned files (plain or ``.gz``): line i of the source file pairs with line i of the
  target file (Multi30k: ``train.de.gz`` / ``train.en.gz``);
- JSON Lines (plain or ``.gz``) with named fields (SciTLDR: ``source`` is a list of sentences,
  joined with spaces; ``target`` a list of summaries: the first trains, all are references).

Batches (:class:`PairBatches`) group pairs of similar length, so little of a batch is padding,
and depend only on (seed, step): resuming needs nothing but the step. Sources end in
end-of-sequence; the decoder reads ``[bos] + target`` and predicts ``target + [eos]``; padded
target positions hold :data:`IGNORE_INDEX`, which the loss skips.

Tokenizers: a run has one joint tokenizer for both sides, or (``tokenizer.separate = true``) a
source tokenizer of its own. Functions here take the target (or joint) ``tokenizer`` and an
optional ``source_tokenizer``; :func:`pick_source_tokenizer` is the one rule that says which
tokenizer encodes sources. Source padding uses the source side's pad id (``src_pad_id``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..config import DataConfig
from ..errors import DataError
from ..tokenizers.base import pick_source_tokenizer
from .corpus import read_text, resolve_data_path

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # target positions the loss skips (F.cross_entropy's default)


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class ParallelSplit:
    """Aligned sources and targets of one split; ``references`` holds every reference per
    source (``references[i][0] == targets[i]``)."""

    sources: list[str]
    targets: list[str]
    references: list[list[str]]

    def __len__(self) -> int:
        return len(self.sources)


@dataclass(frozen=True)
class ParallelCorpus:
    """The splits of one sequence-to-sequence run."""

    train: ParallelSplit
    val: ParallelSplit
    test: ParallelSplit | None
    description: str

    @property
    def train_text(self) -> str:
        """Both sides of the training pairs, one per line (what a joint tokenizer learns from)."""
        return "\n".join(self.train.sources + self.train.targets) + "\n"

    @property
    def source_text(self) -> str:
        """The training sources, one per line (what a separate source tokenizer learns from)."""
        return "\n".join(self.train.sources) + "\n"

    @property
    def target_text(self) -> str:
        """The training targets, one per line (what a separate target tokenizer learns from)."""
        return "\n".join(self.train.targets) + "\n"


def read_lines(path: str | os.PathLike[str]) -> list[str]:
    """The lines of a text or ``.gz`` file (without line ends; a final newline adds no line)."""
    text = read_text(path)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def read_line_pairs(
    source: str | os.PathLike[str], target: str | os.PathLike[str]
) -> ParallelSplit:
    """Line-aligned source and target files -> a :class:`ParallelSplit`."""
    sources, targets = read_lines(source), read_lines(target)
    if len(sources) != len(targets):
        raise DataError(
            f"{source} has {len(sources):,} lines but {target} has {len(targets):,}; parallel "
            "files must be line-aligned (one sentence per line on both sides)"
        )
    sources = [s.strip() for s in sources]
    targets = [t.strip() for t in targets]
    return ParallelSplit(sources, targets, [[t] for t in targets])


def read_jsonl_pairs(
    path: str | os.PathLike[str], source_field: str, target_field: str
) -> ParallelSplit:
    """A JSON Lines file -> pairs; list fields: sources are joined, targets keep all references."""
    sources, targets, references = [], [], []
    for number, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or source_field not in record or target_field not in record:
            raise DataError(
                f"{path}, line {number}: expected an object with fields {source_field!r} and "
                f"{target_field!r}; set data.source_field / data.target_field to the file's names"
            )
        src = record[source_field]
        refs = record[target_field]
        src_text = " ".join(str(s).strip() for s in src) if isinstance(src, list) else str(src)
        refs = [str(r).strip() for r in refs] if isinstance(refs, list) else [str(refs).strip()]
        refs = [r for r in refs if r] or [""]
        sources.append(src_text.strip())
        targets.append(refs[0])
        references.append(refs)
    if not sources:
        raise DataError(f"{path} holds no records; give a JSON Lines file with one pair per line")
    return ParallelSplit(sources, targets, references)


def every_reference(split: ParallelSplit) -> ParallelSplit:
    """One pair per (source, reference): a source with k references appears k times, in order."""
    sources, targets, references = [], [], []
    for source, refs in zip(split.sources, split.references):
        for ref in refs:
            sources.append(source)
            targets.append(ref)
            references.append(refs)
    return ParallelSplit(sources, targets, references)


def load_parallel(config: DataConfig) -> ParallelCorpus:
    """Read the training, validation and (optional) test pairs ``config`` names.

    Without validation files the last ``val_fraction`` of the training pairs is held out.
    """
    config.validate()

    def path(name: str) -> Path:
        return resolve_data_path(name, config.data_dir)

    def read(kind: str) -> ParallelSplit | None:
        if config.source_field:
            name = {"train": config.path, "val": config.val_path, "test": config.test_path}[kind]
            if not name:
                return None
            target_field = config.target_field or "target"
            return read_jsonl_pairs(path(name), config.source_field, target_field)
        prefix = "" if kind == "train" else f"{kind}_"
        src = getattr(config, f"{prefix}source_path")
        tgt = getattr(config, f"{prefix}target_path")
        if not src and not tgt:
            return None
        if not (src and tgt):
            raise DataError(
                f"give both data.{prefix}source_path and data.{prefix}target_path (or neither)"
            )
        return read_line_pairs(path(src), path(tgt))

    train = read("train")
    if train is None:
        raise DataError(
            "no training pairs: set --source FILE --target FILE (data.source_path / "
            "data.target_path), or data.path with data.source_field for JSON Lines"
        )
    val = read("val")
    how = "validation files"
    if val is None:
        n_val = max(1, int(len(train) * config.val_fraction))
        if n_val >= len(train):
            raise DataError(
                f"only {len(train)} training pairs: give validation files (--val-source / "
                "--val-target) or more data"
            )
        cut = len(train) - n_val
        val = ParallelSplit(train.sources[cut:], train.targets[cut:], train.references[cut:])
        train = ParallelSplit(train.sources[:cut], train.targets[:cut], train.references[:cut])
        how = f"validation = last {n_val} pairs"
    if config.train_all_references:  # after the split, so no source is in both
        train = every_reference(train)
    test = read("test")
    description = (
        f"{len(train):,} training / {len(val):,} validation"
        f"{'' if test is None else f' / {len(test):,} test'} pairs ({how})"
    )
    logger.info("parallel data: %s", description)
    return ParallelCorpus(train, val, test, description)


# --------------------------------------------------------------------------- encoding


def encode_pairs(
    split: ParallelSplit, tokenizer: object, *, eos_id: int, source_tokenizer: object = None
) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of each source (ending in ``eos_id``, the source side's end-of-sequence) and of
    each target (no specials). ``tokenizer`` encodes targets, and sources too unless a separate
    ``source_tokenizer`` is given."""
    encode_source = pick_source_tokenizer(tokenizer, source_tokenizer).encode
    encode_target = tokenizer.encode  # type: ignore[attr-defined]
    sources = [encode_source(s) + [eos_id] for s in split.sources]
    targets = [encode_target(t) for t in split.targets]
    return sources, targets


def filter_pairs(
    sources: Sequence[Sequence[int]],
    targets: Sequence[Sequence[int]],
    max_source_len: int = 0,
    max_target_len: int = 0,
) -> list[int]:
    """Indices of the pairs to train on: both sides non-empty and within the limits (0 = any).

    A source is "empty" when it holds only its end-of-sequence token.
    """
    keep = []
    for i, (src, tgt) in enumerate(zip(sources, targets)):
        if len(src) <= 1 or not tgt:
            continue
        if max_source_len and len(src) > max_source_len:
            continue
        if max_target_len and len(tgt) + 1 > max_target_len:
            continue
        keep.append(i)
    return keep


# --------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class PairBatch:
    """One batch of pairs.

    src: (B, S) right-padded source ids (source vocabulary); src_mask: (B, S) bool, True at real
    tokens;
    tgt_in: (B, T) ``[bos] + target`` (padded with pad); tgt_out: (B, T) ``target + [eos]``
    with :data:`IGNORE_INDEX` at padding.
    """

    src: Tensor
    src_mask: Tensor
    tgt_in: Tensor
    tgt_out: Tensor

    @property
    def num_tokens(self) -> int:
        """Target tokens scored (padding excluded)."""
        return int((self.tgt_out != IGNORE_INDEX).sum())

    def to(self, device: torch.device | str) -> PairBatch:
        return PairBatch(*(t.to(device, non_blocking=True) for t in self.astuple()))

    def astuple(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.src, self.src_mask, self.tgt_in, self.tgt_out


def collate_pairs(
    sources: Sequence[Sequence[int]],
    targets: Sequence[Sequence[int]],
    *,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    src_pad_id: int | None = None,
) -> PairBatch:
    """Pad a list of pairs into a :class:`PairBatch`; sources are padded with ``src_pad_id``
    (an id of the source vocabulary; None = ``pad_id``, for a joint vocabulary)."""
    batch = len(sources)
    src_len = max(len(s) for s in sources)
    tgt_len = max(len(t) for t in targets) + 1
    src_pad = pad_id if src_pad_id is None else src_pad_id
    src = torch.full((batch, src_len), src_pad, dtype=torch.long)
    src_mask = torch.zeros((batch, src_len), dtype=torch.bool)
    tgt_in = torch.full((batch, tgt_len), pad_id, dtype=torch.long)
    tgt_out = torch.full((batch, tgt_len), IGNORE_INDEX, dtype=torch.long)
    for row, (s, t) in enumerate(zip(sources, targets)):
        src[row, : len(s)] = torch.tensor(s, dtype=torch.long)
        src_mask[row, : len(s)] = True
        tgt_in[row, : len(t) + 1] = torch.tensor([bos_id, *t], dtype=torch.long)
        tgt_out[row, : len(t) + 1] = torch.tensor([*t, eos_id], dtype=torch.long)
    return PairBatch(src, src_mask, tgt_in, tgt_out)


class PairBatches:
    """Length-bucketed training batches of ``batch_size`` pairs; ``get(step)`` depends only on
    (seed, rank, step).

    Each pass shuffles the pairs (seeded by (seed, pass)), sorts pools of ``pool`` batches by
    length so each batch holds pairs of similar length, cuts batches and shuffles their order.
    Distributed ranks take interleaved batches of the same pass.
    """

    def __init__(
        self,
        sources: Sequence[Sequence[int]],
        targets: Sequence[Sequence[int]],
        batch_size: int,
        seed: int,
        *,
        bos_id: int,
        eos_id: int,
        pad_id: int,
        src_pad_id: int | None = None,
        pool: int = 50,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not sources:
            raise DataError("no training pairs left after filtering; check the data and limits")
        self.sources, self.targets = list(sources), list(targets)
        self.batch_size = min(batch_size, len(self.sources))
        self.seed = seed
        self.specials = {
            "bos_id": bos_id,
            "eos_id": eos_id,
            "pad_id": pad_id,
            "src_pad_id": src_pad_id,
        }
        self.pool = pool
        self.rank, self.world_size = rank, world_size
        self.lengths = np.array(
            [len(s) + len(t) for s, t in zip(self.sources, self.targets)], dtype=np.int64
        )
        self._pass: tuple[int, list[np.ndarray]] | None = None

    def __len__(self) -> int:
        """Batches per pass over the pairs."""
        return len(self.sources) // self.batch_size

    def _batches_of_pass(self, number: int) -> list[np.ndarray]:
        if self._pass is not None and self._pass[0] == number:
            return self._pass[1]
        rng = np.random.default_rng([self.seed, number])
        order = rng.permutation(len(self.sources))
        size = self.batch_size
        batches = []
        span = size * self.pool
        for start in range(0, len(order), span):
            chunk = order[start : start + span]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches.extend(chunk[i : i + size] for i in range(0, len(chunk) - size + 1, size))
        batches = [batches[i] for i in rng.permutation(len(batches))]
        self._pass = (number, batches)
        return batches

    def get(self, step: int) -> PairBatch:
        """The batch of training step ``step`` (>= 0)."""
        index = step * self.world_size + self.rank
        per_pass = len(self)
        batches = self._batches_of_pass(index // per_pass)
        rows = batches[index % per_pass]
        return collate_pairs(
            [self.sources[i] for i in rows], [self.targets[i] for i in rows], **self.specials
        )


def pair_eval_batches(
    sources: Sequence[Sequence[int]],
    targets: Sequence[Sequence[int]],
    batch_size: int,
    *,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    src_pad_id: int | None = None,
    max_batches: int = 0,
) -> Iterator[PairBatch]:
    """Deterministic batches over the pairs in order (all of them when ``max_batches == 0``);
    ``src_pad_id`` as in :func:`collate_pairs`."""
    count = 0
    for start in range(0, len(sources), batch_size):
        if max_batches and count >= max_batches:
            return
        yield collate_pairs(
            sources[start : start + batch_size],
            targets[start : start + batch_size],
            bos_id=bos_id,
            eos_id=eos_id,
            pad_id=pad_id,
            src_pad_id=src_pad_id,
        )
        count += 1


def pad_sources(
    sources: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """Right-pad source ids: -> (src (B, S) long, src_mask (B, S) bool)."""
    width = max(len(s) for s in sources)
    src = torch.full((len(sources), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sources), width), dtype=torch.bool)
    for row, s in enumerate(sources):
        src[row, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[row, : len(s)] = True
    return src.to(device), mask.to(device)


__all__ = [
    "IGNORE_INDEX",
    "PairBatch",
    "PairBatches",
    "ParallelCorpus",
    "ParallelSplit",
    "collate_pairs",
    "encode_pairs",
    "filter_pairs",
    "load_parallel",
    "pad_sources",
    "pair_eval_batches",
    "read_jsonl_pairs",
    "read_line_pairs",
    "read_lines",
]
