"""Small stand-ins for the model and tokenizer contracts, for the decoding tests.

- :class:`ByteTokenizer`: ids 0..255 are bytes, 256 = eos, 257 = bos, and a few merged
  multi-byte tokens from 258 on, so text can be split anywhere (even inside a character).
- :class:`WordTokenizer`: whole words joined by spaces (tokens need left context to decode).
- :class:`TinyRecurrentLM`: a GRU cell language model with no context limit (like an RNN).
- :class:`TinyWindowLM`: a bounded-context model with a GPT's cache rules: a capacity that must
  never be exceeded, positions that count real tokens and must stay below ``max_context``.
- :class:`ScriptedLM`: predicts a fixed script by position, whatever it is fed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rnn2gpt.config import ModelConfig

EOS = 256
BOS = 257
MERGES = [b"lo", b" w", b"\xc3\xa9", b"\xe6\x97"]  # 258.. : "lo", " w", "é", first 2 bytes of 日


class ByteTokenizer:
    kind = "byte"
    bos_id = BOS
    eos_id = EOS
    pad_id = None
    unk_id = None

    def __init__(self, merges: list[bytes] | None = None) -> None:
        self.merges = list(MERGES if merges is None else merges)

    @property
    def vocab_size(self) -> int:
        return 258 + len(self.merges)

    def token_bytes(self, token: int) -> bytes:
        if token < 256:
            return bytes([token])
        if token >= 258:
            return self.merges[token - 258]
        return b""  # eos / bos print nothing

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode_bytes(self, ids: list[int]) -> bytes:
        return b"".join(self.token_bytes(i) for i in ids)

    def decode(self, ids: list[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def save(self, directory) -> None:  # pragma: no cover - not needed by these tests
        raise NotImplementedError


class WordTokenizer:
    """Words joined by single spaces; decoding a lone token has no leading space."""

    kind = "word"
    bos_id = None
    pad_id = None
    unk_id = None

    def __init__(self, words: list[str]) -> None:
        self.words = list(words) + ["<eos>"]
        self.index = {w: i for i, w in enumerate(self.words)}
        self.eos_id = len(self.words) - 1

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> list[int]:
        return [self.index[w] for w in text.split()]

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.words[i] for i in ids if i != self.eos_id)

    def decode_bytes(self, ids: list[int]) -> bytes:
        return self.decode(ids).encode("utf-8")

    def save(self, directory) -> None:  # pragma: no cover
        raise NotImplementedError


def _config(vocab_size: int, width: int, arch: str = "gru", block_size: int = 256) -> ModelConfig:
    return ModelConfig(
        arch=arch, vocab_size=vocab_size, n_layer=1, n_embd=width, n_head=1, block_size=block_size
    )


def _init(module: nn.Module, seed: int, scale: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * scale)


# --------------------------------------------------------------------------- recurrent fake


@dataclass
class RecurrentState:
    h: Tensor  # (B, H)
    pad_mask: Tensor | None = None  # (B, T0) for the next forward

    @property
    def batch_size(self) -> int:
        return self.h.shape[0]

    def select(self, index: Tensor) -> RecurrentState:
        mask = None if self.pad_mask is None else self.pad_mask[index]
        return RecurrentState(self.h[index], mask)

    def detach(self) -> RecurrentState:
        return RecurrentState(self.h.detach(), self.pad_mask)


class TinyRecurrentLM(nn.Module):
    """Embedding -> GRU cell -> linear head; padding leaves the hidden state unchanged."""

    max_context = None
    carries_state = True

    def __init__(
        self,
        vocab_size: int = 262,
        width: int = 16,
        seed: int = 0,
        sharp: float = 1.0,
        favour: list[int] | None = None,
    ):
        super().__init__()
        self.config = _config(vocab_size, width)
        self.embed = nn.Embedding(vocab_size, width)
        self.cell = nn.GRUCell(width, width)
        self.head = nn.Linear(width, vocab_size)
        _init(self, seed, 0.5)
        if favour:  # make these tokens likely (e.g. readable bytes)
            with torch.no_grad():
                self.head.bias[favour] += 4.0
        self.sharp = sharp
        self.calls = 0

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_state(self, batch_size, pad_mask=None, capacity=None) -> RecurrentState:
        h = torch.zeros(batch_size, self.cell.hidden_size)
        return RecurrentState(h, pad_mask)

    def forward(self, tokens, state=None, *, recorder=None):
        self.calls += 1
        batch, steps = tokens.shape
        if state is None:
            state = self.new_state(batch)
        h, mask = state.h, state.pad_mask
        outputs = []
        for t in range(steps):
            new_h = self.cell(self.embed(tokens[:, t]), h)
            if mask is not None and t < mask.shape[1]:
                new_h = torch.where(mask[:, t : t + 1], new_h, h)
            h = new_h
            outputs.append(self.head(h) * self.sharp)
        return torch.stack(outputs, dim=1), RecurrentState(h)


# --------------------------------------------------------------------------- bounded-context fake


@dataclass
class WindowState:
    total: Tensor  # (B, H) sum of the embeddings of real tokens so far
    count: Tensor  # (B,) real tokens so far (= the next position)
    capacity: int
    filled: int = 0
    pad_mask: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.total.shape[0]

    def select(self, index: Tensor) -> WindowState:
        mask = None if self.pad_mask is None else self.pad_mask[index]
        return WindowState(self.total[index], self.count[index], self.capacity, self.filled, mask)

    def detach(self) -> WindowState:
        return self


class TinyWindowLM(nn.Module):
    """Next-token logits from the current token, its position and the mean of every earlier
    real token: depends on the whole window, like attention, with a GPT's limits."""

    carries_state = False

    def __init__(self, vocab_size: int = 262, width: int = 16, max_context: int = 8, seed: int = 1):
        super().__init__()
        self.config = _config(vocab_size, width, arch="gpt", block_size=max_context)
        self.max_context = max_context
        self.embed = nn.Embedding(vocab_size, width)
        self.pos = nn.Embedding(max_context, width)
        self.mix = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab_size)
        _init(self, seed, 0.7)
        self.prefills: list[int] = []  # widths of multi-token calls (prefills), for tests
        self.capacities: list[int] = []  # capacities asked of new_state, for tests

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_state(self, batch_size, pad_mask=None, capacity=None) -> WindowState:
        capacity = capacity or self.max_context
        self.capacities.append(capacity)
        if capacity > self.max_context:
            raise RuntimeError(f"capacity {capacity} > context {self.max_context}")
        width = self.embed.embedding_dim
        return WindowState(
            torch.zeros(batch_size, width),
            torch.zeros(batch_size, dtype=torch.long),
            capacity,
            pad_mask=pad_mask,
        )

    def forward(self, tokens, state=None, *, recorder=None):
        batch, steps = tokens.shape
        if steps > 1:
            self.prefills.append(steps)
        if state is None:
            state = self.new_state(batch)
        if state.filled + steps > state.capacity:
            raise RuntimeError(f"cache overflow: {state.filled} + {steps} > {state.capacity}")
        total, count, mask = state.total, state.count, state.pad_mask
        outputs = []
        for t in range(steps):
            real = torch.ones(batch, dtype=torch.bool)
            if mask is not None and t < mask.shape[1]:
                real = mask[:, t]
            if bool((count[real] >= self.max_context).any()):
                raise RuntimeError("position beyond the context")
            e = self.embed(tokens[:, t])
            total = total + e * real[:, None]
            count = count + real.long()
            mean = total / count.clamp_min(1)[:, None]
            x = e + self.pos((count - 1).clamp(0, self.max_context - 1)) + self.mix(mean)
            outputs.append(self.head(torch.tanh(x)))
        new = WindowState(total, count, state.capacity, state.filled + steps)
        return torch.stack(outputs, dim=1), new


# --------------------------------------------------------------------------- scripted fake


@dataclass
class ScriptState:
    position: Tensor  # (B,) real tokens consumed
    pad_mask: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.position.shape[0]

    def select(self, index: Tensor) -> ScriptState:
        mask = None if self.pad_mask is None else self.pad_mask[index]
        return ScriptState(self.position[index], mask)

    def detach(self) -> ScriptState:
        return self


class ScriptedLM(nn.Module):
    """After n real tokens, predicts ``script[n]`` (then eos past the end), whatever was fed."""

    max_context = None
    carries_state = True

    def __init__(self, script: list[int], vocab_size: int = 262, confidence: float = 10.0):
        super().__init__()
        self.config = _config(vocab_size, 4)
        self.script = list(script)
        self.confidence = confidence
        self.dummy = nn.Parameter(torch.zeros(1))

    def num_parameters(self, trainable_only: bool = False) -> int:
        return 1

    def new_state(self, batch_size, pad_mask=None, capacity=None) -> ScriptState:
        return ScriptState(torch.zeros(batch_size, dtype=torch.long), pad_mask)

    def forward(self, tokens, state=None, *, recorder=None):
        batch, steps = tokens.shape
        if state is None:
            state = self.new_state(batch)
        position, mask = state.position, state.pad_mask
        vocab = self.config.vocab_size
        outputs = []
        for t in range(steps):
            real = torch.ones(batch, dtype=torch.bool)
            if mask is not None and t < mask.shape[1]:
                real = mask[:, t]
            position = position + real.long()
            target = [self.script[p] if p < len(self.script) else EOS for p in position.tolist()]
            logits = torch.zeros(batch, vocab)
            logits[torch.arange(batch), torch.tensor(target)] = self.confidence
            outputs.append(logits)
        return torch.stack(outputs, dim=1), ScriptState(position)


# --------------------------------------------------------------------------- references


@torch.no_grad()
def uncached_greedy(model: nn.Module, prompt: list[int], steps: int) -> list[int]:
    """Greedy tokens by rerunning the whole sequence each step (no state carried)."""
    sequence = list(prompt)
    for _ in range(steps):
        logits, _ = model(torch.tensor([sequence]), None)
        sequence.append(int(logits[0, -1].argmax()))
    return sequence[len(prompt) :]


@torch.no_grad()
def sequence_logprob(model: nn.Module, prompt: list[int], tokens: list[int]) -> float:
    """Sum of log p(token | prefix) of ``tokens`` after ``prompt``, in one forward pass."""
    sequence = torch.tensor([prompt + tokens])
    logits, _ = model(sequence[:, :-1], None)
    logp = logits[0].float().log_softmax(-1)
    start = len(prompt) - 1
    picked = logp[start:, :].gather(1, sequence[0, len(prompt) :, None])
    return float(picked.sum())


@torch.no_grad()
def token_logprobs(model: nn.Module, prompt: list[int], tokens: list[int]) -> list[float]:
    sequence = torch.tensor([prompt + tokens])
    logits, _ = model(sequence[:, :-1], None)
    logp = logits[0].float().log_softmax(-1)
    start = len(prompt) - 1
    return logp[start:, :].gather(1, sequence[0, len(prompt) :, None]).squeeze(1).tolist()


@torch.no_grad()
def sliding_greedy(model: nn.Module, prompt: list[int], steps: int, context: int) -> list[int]:
    """Greedy tokens under the slide policy, uncached: a window that outgrows ``context``
    keeps its last ``context // 2`` tokens."""
    window, out = list(prompt[-context:]), []
    for _ in range(steps):
        logits, _ = model(torch.tensor([window]), None)
        token = int(logits[0, -1].argmax())
        out.append(token)
        window.append(token)
        if len(window) > context:
            window = window[-max(1, context // 2) :]
    return out
