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


def train_pairs(
    model,
    task: str,
    steps: int,
    *,
    batch: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    optimizer=None,
):
    """A plain Adam loop on fresh random pairs (the trainer is tested separately); pass an
    ``optimizer`` to continue with its state."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
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


def exact_match(
    model, task: str, count: int = 40, seed: int = 99, **settings
) -> tuple[float, list]:
    """Share of ``count`` fresh pairs (from ``seed``) decoded exactly, greedy unless ``settings``
    say otherwise; and the generations."""
    from rnn2gpt.config import GenerationConfig
    from rnn2gpt.data.parallel import pad_sources
    from rnn2gpt.generation import generate

    sources, targets = sample_pairs(count, task, torch.Generator().manual_seed(seed))
    src, mask = pad_sources(sources, PAD)
    config = GenerationConfig(temperature=0.0, max_new_tokens=10, **settings)
    out = generate(model.bind(src, mask), [[BOS]] * count, config, eos_id=EOS)
    hits = sum(o[0].token_ids == t for o, t in zip(out, targets))
    return hits / count, out


def train_until_exact(model, task: str, *, seed: int = 0, cap: int = 3000, every: int = 100) -> int:
    """Train on ``task`` until 200 held-out pairs decode exactly at two checks in a row (``every``
    steps apart; the learning rate drops 3x at each perfect check, to settle); stop at ``cap``
    steps. Returns the steps taken.

    A learning test asserts on its own pairs after this: training to a criterion (rather than
    for a fixed number of steps on the edge) gives the same verdict on every CPU, whatever
    rounding its kernels do.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = perfect = 0
    while steps < cap and perfect < 2:
        train_pairs(model, task, every, seed=seed + steps, optimizer=optimizer)
        steps += every
        if exact_match(model, task, count=200, seed=1000 + seed)[0] == 1.0:
            perfect += 1
            for group in optimizer.param_groups:
                group["lr"] /= 3
        else:
            perfect = 0
    return steps


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
