"""Tiny synthetic sequence-to-sequence tasks and models shared by the seq2seq tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from rnn2gpt.config import ModelConfig
from rnn2gpt.data.parallel import collate_pairs
from rnn2gpt.models import build_model

BOS = EOS = PAD = 0  # one special token, as the BPE tokenizer has
VOCAB = 12  # the special token + 11 symbols
LENGTH = 6

ARCHS = {
    "gru-bahdanau": dict(arch="seq2seq-rnn", rnn_type="gru", attention="bahdanau"),
    "lstm-luong": dict(arch="seq2seq-rnn", rnn_type="lstm", attention="luong"),
    "transformer": dict(arch="transformer", n_head=2, block_size=16, mlp_ratio=2),
}


def tiny_model(name: str, *, n_embd: int = 32, n_layer: int = 1, seed: int = 0):
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=VOCAB, n_layer=n_layer, n_embd=n_embd, **ARCHS[name])
    return build_model(config)


def sample_pairs(
    count: int, task: str, generator: torch.Generator, length: int = LENGTH
) -> tuple[list[list[int]], list[list[int]]]:
    """Random symbol sequences (lengths 3..length) and their copies or reversals."""
    sources, targets = [], []
    for _ in range(count):
        n = int(torch.randint(3, length + 1, (1,), generator=generator))
        seq = torch.randint(1, VOCAB, (n,), generator=generator).tolist()
        sources.append(seq + [EOS])
        targets.append(list(seq) if task == "copy" else list(reversed(seq)))
    return sources, targets


def train_pairs(model, task: str, steps: int, *, batch: int = 32, lr: float = 3e-3, seed: int = 0):
    """A plain Adam loop on fresh random pairs (the trainer is tested separately)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        b = collate_pairs(*sample_pairs(batch, task, generator), bos_id=BOS, eos_id=EOS, pad_id=PAD)
        logits, _ = model(b.tgt_in, source=b.src, source_mask=b.src_mask)
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, VOCAB), b.tgt_out.reshape(-1), ignore_index=-100
        )
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    model.eval()
    return float(loss.detach())


def write_parallel_files(
    folder: Path,
    make_pairs: Callable[[int, int], tuple[list[str], list[str]]],
    splits: tuple[tuple[str, int, int], ...],
) -> dict[str, Path]:
    """Write ``{split}.src`` / ``{split}.tgt`` line files of ``make_pairs(count, seed)`` for each
    ``(split, count, seed)``; -> {"train.src": path, ...}."""
    files = {}
    for split, count, seed in splits:
        for side, lines in zip(("src", "tgt"), make_pairs(count, seed)):
            path = folder / f"{split}.{side}"
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
            files[f"{split}.{side}"] = path
    return files
