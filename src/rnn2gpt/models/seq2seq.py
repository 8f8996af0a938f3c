"""Encoder-decoder models for translation and summarization, behind the language-model contract.

Two architectures, registered by name:

- ``seq2seq-rnn``: a GRU or LSTM encoder (optionally bidirectional), its final state bridged to
  the decoder's size, and a GRU/LSTM decoder attending over the encoder outputs with additive
  (Bahdanau) or general (Luong) attention::

      src (B, S) -> Embedding -> encoder RNN -> memory (B, S, M)      M = H or 2H
      bahdanau:  ctx_t = attn(h_{t-1}, memory);  h_t = RNN([emb(y_t); ctx_t], h_{t-1})
      luong:     h_t = RNN(emb(y_t), h_{t-1});    ctx_t = attn(h_t, memory)
      logits_t = out(tanh(W_c [h_t; ctx_t]))    out (E -> V), tied with the target embedding

- ``transformer``: pre-LayerNorm encoder blocks (the GPT's :class:`Block` without a causal mask)
  and decoder blocks with causal self-attention, cross-attention over the encoder output and an
  MLP; learned or sinusoidal positions; one embedding shared by source, target and output.

**Vocabularies.** By default the vocabulary is joint (one tokenizer for both sides), so one
embedding serves the encoder and the decoder. With ``model.src_vocab_size > 0`` (the trainer
sets it for ``tokenizer.separate = true``) source ids come from a tokenizer of their own: the
encoder then gets its own embedding of ``src_vocab_size`` rows (``src_embedding`` /
``src_wte``), shared with nothing, and the decoder keeps ``vocab_size`` rows (tied with the
output layer when ``tie_weights``). Joint models have no extra module, so their weights and
checkpoints are unchanged.

**Contract.** ``encode(src, src_mask) -> Seq2SeqState`` holds the encoder output, the source
mask and what every decoding step reuses (projected attention keys, cross-attention keys and
values), plus the decoder's own state (an :class:`RNNState` or a :class:`KVCache`). From then on
``forward(tokens, state)`` is the decoder and behaves as any language model: feeding targets in
one call or in pieces gives the same logits, and ``state.select`` reorders every part of it
(beam search). :meth:`Seq2SeqModel.bind` wraps a model and a source batch into a
:class:`BoundDecoder`, whose ``new_state`` encodes the source, so
:func:`rnn2gpt.generation.generate` decodes it with greedy, sampling or beam search unchanged.

Training calls ``model(tgt_in, source=src, source_mask=mask)``: the encoding happens inside
``forward`` (what distributed data parallel expects).

Recorder names: ``decoder.layer{i}.cross_attention`` (B, heads, T, S) (the RNN reports one
"head" of layer 0); the transformer also ``encoder.layer{i}.attention`` and
``decoder.layer{i}.attention`` (B, heads, T, S').
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..config import ModelConfig
from ..errors import CheckpointError, ConfigError, ContextLengthError
from .attention import AdditiveAttention, GeneralAttention
from .base import Recorder, count_parameters, per_token, register_model
from .gpt import MLP, SINUSOID_SCALE, Block, CausalSelfAttention, sinusoidal_table
from .kv_cache import KVCache, SlotKVCache
from .ops import sdpa
from .rnn import RNNState, StepTrail

# --------------------------------------------------------------------------- state


@dataclass
class Seq2SeqState:
    """Decoder state of an encoder-decoder model.

    memory: (B, S, M) encoder outputs. src_mask: (B, S) bool, True at real source tokens.
    decoder: the decoder's own state (:class:`RNNState` or :class:`KVCache`).
    cached: per-row tensors derived from ``memory`` once per source (batch on dim 0): the RNN's
    projected attention keys, the transformer's cross-attention keys and values per layer.
    """

    memory: Tensor
    src_mask: Tensor
    decoder: Any
    cached: tuple[Tensor, ...] = ()

    @property
    def batch_size(self) -> int:
        return self.memory.shape[0]

    def select(self, index: Tensor) -> Seq2SeqState:
        """Rows ``index`` (LongTensor (B',)) of every part, in that order."""
        index = index.to(self.memory.device)
        return Seq2SeqState(
            memory=self.memory.index_select(0, index),
            src_mask=self.src_mask.index_select(0, index),
            decoder=self.decoder.select(index),
            cached=tuple(t.index_select(0, index) for t in self.cached),
        )

    @property
    def capacity(self) -> int | None:
        """The most target tokens a row can hold (None: no limit)."""
        return getattr(self.decoder, "capacity", None)

    def free(self, slots: Sequence[int]) -> None:
        """Rows ``slots`` forget their target tokens (the source stays)."""
        self.truncate({slot: 0 for slot in slots})

    def truncate(self, lengths: dict[int, int]) -> None:
        """Roll rows' target tokens back (the decoder must be a slot state; see ``new_state``)."""
        self.decoder.truncate(lengths)

    def detach(self) -> Seq2SeqState:
        return Seq2SeqState(
            memory=self.memory.detach(),
            src_mask=self.src_mask,
            decoder=self.decoder.detach(),
            cached=tuple(t.detach() for t in self.cached),
        )


def _source_mask(src: Tensor, src_mask: Tensor | None) -> Tensor:
    """The (B, S) bool mask of real source tokens (all True when none is given)."""
    if src.dim() != 2:
        raise ValueError(f"source tokens must have shape (B, S); got {tuple(src.shape)}")
    if src_mask is None:
        return torch.ones_like(src, dtype=torch.bool)
    if src_mask.shape != src.shape:
        raise ValueError(
            f"source mask shape {tuple(src_mask.shape)} differs from source {tuple(src.shape)}"
        )
    mask = src_mask.to(device=src.device, dtype=torch.bool)
    if not bool(mask.any(dim=1).all()):
        raise ValueError("every source row needs at least one real token (add eos to sources)")
    return mask


def _prefixed(recorder: Recorder | None, prefix: str) -> Recorder | None:
    if recorder is None:
        return None
    return lambda name, tensor: recorder(f"{prefix}{name}", tensor)


# --------------------------------------------------------------------------- common face


class Seq2SeqModel(nn.Module):
    """What both encoder-decoders share: the contract's face and :meth:`bind`."""

    carries_state = False
    config: ModelConfig
    max_context: int | None = None

    def num_parameters(self, trainable_only: bool = False) -> int:
        return count_parameters(self, trainable_only)

    def new_state(
        self,
        batch_size: int,
        pad_mask: Tensor | None = None,
        capacity: int | None = None,
        *,
        slots: bool = False,
        rollback: int = 0,
    ) -> Seq2SeqState:
        raise ConfigError(
            "an encoder-decoder model needs a source to decode from: on the command line use "
            "`rnn2gpt translate DIR` or `rnn2gpt summarize DIR`; in Python call "
            "model.bind(source_tokens) and decode the returned decoder"
        )

    def bind(self, source: Tensor, source_mask: Tensor | None = None) -> BoundDecoder:
        """A language model over target tokens conditioned on ``source`` (B, S)."""
        return BoundDecoder(self, source, source_mask)

    def encode(
        self,
        src: Tensor,
        src_mask: Tensor | None = None,
        *,
        pad_mask: Tensor | None = None,
        capacity: int | None = None,
        rollback: int | None = None,
        recorder: Recorder | None = None,
    ) -> Seq2SeqState:
        """src (B, S) (right-padded, ``src_mask`` True at real tokens) -> the initial state.

        ``pad_mask``/``capacity`` describe the decoder input to come, as in ``new_state``;
        ``rollback`` (not None) asks for a decoder state whose rows keep their own lengths and
        roll back with ``truncate`` (speculative decoding), as ``new_state(slots=True,
        rollback=...)``.
        """
        raise NotImplementedError

    def decode(
        self, tokens: Tensor, state: Seq2SeqState, recorder: Recorder | None = None
    ) -> tuple[Tensor, Seq2SeqState]:
        raise NotImplementedError

    def forward(
        self,
        tokens: Tensor,
        state: Seq2SeqState | None = None,
        *,
        recorder: Recorder | None = None,
        source: Tensor | None = None,
        source_mask: Tensor | None = None,
    ) -> tuple[Tensor, Seq2SeqState]:
        """Target tokens (B, T) -> logits (B, T, V) and the state after them.

        Give either ``state`` (from :meth:`encode` or an earlier call) or ``source`` (B, S)
        with its ``source_mask`` to encode first.
        """
        if tokens.dim() != 2:
            raise ValueError(f"tokens must have shape (B, T); got {tuple(tokens.shape)}")
        if source is not None:
            state = self.encode(source, source_mask, recorder=recorder)
        if state is None:
            raise ConfigError(
                "an encoder-decoder model decodes from a source: pass source= (training) or the "
                "state of model.encode(source), or decode model.bind(source)"
            )
        return self.decode(tokens, state, recorder)


class BoundDecoder(nn.Module):
    """A :class:`Seq2SeqModel` bound to a source batch: a plain language model of the targets.

    ``new_state(B)`` encodes the source (B must equal its rows); ``forward(tokens, state)`` runs
    the decoder. The encoder-decoder is a submodule, so ``eval()``/``parameters()`` reach it.
    """

    carries_state = False

    def __init__(self, model: Seq2SeqModel, source: Tensor, source_mask: Tensor | None) -> None:
        super().__init__()
        self.model = model
        self.config = model.config
        # Decoding never needs to rebuild the state from a window: the target length is bounded
        # by the caller's max_new_tokens (checked against the model's positions when decoding).
        self.max_context: int | None = None
        self.source = source
        self.source_mask = _source_mask(source, source_mask)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return self.model.num_parameters(trainable_only)

    def new_state(
        self,
        batch_size: int,
        pad_mask: Tensor | None = None,
        capacity: int | None = None,
        *,
        slots: bool = False,
        rollback: int = 0,
    ) -> Seq2SeqState:
        rows = self.source.shape[0]
        if batch_size != rows:
            raise ValueError(
                f"this decoder is bound to {rows} sources; got batch_size={batch_size}"
            )
        device = next(self.model.parameters()).device
        return self.model.encode(
            self.source.to(device),
            self.source_mask.to(device),
            pad_mask=pad_mask,
            capacity=capacity,
            rollback=rollback if slots else None,
        )

    def forward(
        self, tokens: Tensor, state: Seq2SeqState | None = None, *, recorder: Recorder | None = None
    ) -> tuple[Tensor, Seq2SeqState]:
        if state is None:
            state = self.new_state(tokens.shape[0])
        return self.model(tokens, state, recorder=recorder)


# --------------------------------------------------------------------------- RNN encoder-decoder

_RNN = {"gru": nn.GRU, "lstm": nn.LSTM}


class RNNSeq2Seq(Seq2SeqModel):
    """GRU/LSTM encoder-decoder with Bahdanau or Luong attention (see the module docstring)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        emb, hidden = config.n_embd, config.hidden_size
        self.kind = config.rnn_type
        self.dec_layers = config.n_layer
        enc_layers = config.enc_layers or config.n_layer
        directions = 2 if config.bidirectional else 1
        memory_dim = hidden * directions
        rnn = _RNN[self.kind]

        self.embedding = nn.Embedding(config.vocab_size, emb)  # targets (and joint sources)
        # Sources of their own vocabulary get their own embedding (ids of the two sides differ).
        self.src_embedding: nn.Embedding | None = (
            nn.Embedding(config.src_vocab_size, emb) if config.src_vocab_size else None
        )
        self.drop = nn.Dropout(config.dropout)
        self.encoder = rnn(
            emb,
            hidden,
            enc_layers,
            batch_first=True,
            bidirectional=config.bidirectional,
            dropout=config.dropout if enc_layers > 1 else 0.0,
        )
        # The encoder's last states (both directions of its top layer) start every decoder layer.
        self.bridge = nn.Linear(memory_dim, self.dec_layers * hidden)
        if config.attention == "bahdanau":
            self.attention: nn.Module = AdditiveAttention(hidden, memory_dim, hidden)
            dec_input = emb + memory_dim  # the context is fed into the recurrence
        else:
            self.attention = GeneralAttention(hidden, memory_dim)
            dec_input = emb
        self.decoder = rnn(
            dec_input,
            hidden,
            self.dec_layers,
            batch_first=True,
            dropout=config.dropout if self.dec_layers > 1 else 0.0,
        )
        self.combine = nn.Linear(hidden + memory_dim, emb)
        self.out = nn.Linear(emb, config.vocab_size)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        if self.src_embedding is not None:
            nn.init.uniform_(self.src_embedding.weight, -0.1, 0.1)
        nn.init.zeros_(self.out.bias)
        if config.tie_weights:
            self.out.weight = self.embedding.weight

    def encode(
        self,
        src: Tensor,
        src_mask: Tensor | None = None,
        *,
        pad_mask: Tensor | None = None,
        capacity: int | None = None,
        rollback: int | None = None,
        recorder: Recorder | None = None,
    ) -> Seq2SeqState:
        mask = _source_mask(src, src_mask)
        if pad_mask is not None and not bool(pad_mask.all()):
            raise ValueError(
                "the RNN decoder takes target prefixes of equal length (no left padding)"
            )
        batch, steps = src.shape
        lengths = mask.sum(dim=1)
        embed = self.embedding if self.src_embedding is None else self.src_embedding
        x = self.drop(embed(src))  # (B, S, E)
        # Packing makes each row's final state its last real token's, whatever the padding.
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, h_n = self.encoder(packed)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=steps)  # (B, S, M)
        h_last = h_n[0] if isinstance(h_n, tuple) else h_n  # (layers * dirs, B, H)
        directions = 2 if self.config.bidirectional else 1
        top = h_last[-directions:].transpose(0, 1).reshape(batch, -1)  # (B, M)
        hidden = self.config.hidden_size
        h0 = torch.tanh(self.bridge(top)).view(batch, self.dec_layers, hidden)
        h0 = h0.transpose(0, 1).contiguous()  # (L, B, H)
        c0 = torch.zeros_like(h0) if self.kind == "lstm" else None
        keys = self.attention.project(memory)  # (B, S, A), reused by every decoding step
        trail = None if rollback is None else StepTrail(max(rollback, 1), batch, h0, c0)
        decoder = RNNState(h0, c0, trail=trail)
        return Seq2SeqState(memory=memory, src_mask=mask, decoder=decoder, cached=(keys,))

    def decode(
        self, tokens: Tensor, state: Seq2SeqState, recorder: Recorder | None = None
    ) -> tuple[Tensor, Seq2SeqState]:
        trail = state.decoder.trail
        if trail is not None and tokens.shape[1] > 1:  # one token at a time, for the trail
            pieces = []
            for t in range(tokens.shape[1]):
                logits, state = self.decode(tokens[:, t : t + 1], state, recorder)
                pieces.append(logits)
            return torch.cat(pieces, dim=1), state
        memory, mask, (keys,) = state.memory, state.src_mask, state.cached
        hx = state.decoder.as_hx()
        x = self.drop(self.embedding(tokens))  # (B, T, E)
        if self.config.attention == "luong":
            out, hx = self.decoder(x, hx)  # (B, T, H): the whole target in one fused call
            context, weights = self.attention(out, keys, memory, mask)
        else:
            # Bahdanau: each step's query is the previous hidden state, so steps run in order.
            outs, contexts, all_weights = [], [], []
            for t in range(tokens.shape[1]):
                h_prev = hx[0] if isinstance(hx, tuple) else hx
                ctx, w = self.attention(h_prev[-1][:, None, :], keys, memory, mask)
                step_out, hx = self.decoder(torch.cat([x[:, t : t + 1], ctx], dim=-1), hx)
                outs.append(step_out)
                contexts.append(ctx)
                all_weights.append(w)
            out = torch.cat(outs, dim=1)
            context = torch.cat(contexts, dim=1)
            weights = torch.cat(all_weights, dim=1)
        if recorder is not None:
            recorder("decoder.layer0.cross_attention", weights[:, None].detach())
        features = torch.tanh(self.combine(self.drop(torch.cat([out, context], dim=-1))))
        logits = self.out(self.drop(features))  # (B, T, V)
        h, c = hx if isinstance(hx, tuple) else (hx, None)
        if trail is not None:
            trail.record(h, c, tokens.shape[1])
        new_state = Seq2SeqState(memory, mask, RNNState(h, c, trail=trail), state.cached)
        return logits, new_state


# --------------------------------------------------------------------------- transformer


class CrossAttention(nn.Module):
    """Multi-head attention of decoder positions (B, T, C) over encoder output (B, S, C)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.q_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.kv_proj = nn.Linear(config.n_embd, 2 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.attn_dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def memory_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """memory (B, S, C) -> keys, values (B, n_head, S, head_dim), once per source."""
        batch, steps, _ = memory.shape
        kv = self.kv_proj(memory).view(batch, steps, 2, self.n_head, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).contiguous().unbind(0)
        return k, v

    def forward(
        self,
        x: Tensor,
        k: Tensor,
        v: Tensor,
        src_mask: Tensor,
        name: str,
        recorder: Recorder | None = None,
    ) -> Tensor:
        batch, steps, width = x.shape
        q = self.q_proj(x).view(batch, steps, self.n_head, self.head_dim).transpose(1, 2)
        mask = src_mask[:, None, None, :]  # (B, 1, 1, S)
        dropout_p = self.dropout if self.training else 0.0
        if recorder is None:
            y = sdpa(q, k, v, mask, dropout_p, False)
        else:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, nh, T, S)
            weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
            recorder(name, weights.detach())
            y = nn.functional.dropout(weights, dropout_p, self.training) @ v
        y = y.transpose(1, 2).contiguous().view(batch, steps, width)
        return self.resid_dropout(self.c_proj(y))


class DecoderBlock(nn.Module):
    """Pre-LN decoder block: causal self-attention, cross-attention, MLP. x (B, T, C)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        eps, bias = config.layer_norm_eps, config.bias
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=eps, bias=bias)
        self.attn = CausalSelfAttention(config)
        self.ln_cross = nn.LayerNorm(config.n_embd, eps=eps, bias=bias)
        self.cross = CrossAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=eps, bias=bias)
        self.mlp = MLP(config)

    def forward(
        self,
        x: Tensor,
        cache: KVCache,
        layer: int,
        mask: Tensor | None,
        is_causal: bool,
        memory_kv: tuple[Tensor, Tensor],
        src_mask: Tensor,
        recorder: Recorder | None = None,
    ) -> Tensor:
        x = x + self.attn(
            self.ln_1(x), cache, layer, mask, is_causal, _prefixed(recorder, "decoder.")
        )
        k, v = memory_kv
        name = f"decoder.layer{layer}.cross_attention"
        x = x + self.cross(self.ln_cross(x), k, v, src_mask, name, recorder)
        return x + self.mlp(self.ln_2(x))


class TransformerSeq2Seq(Seq2SeqModel):
    """Pre-LN transformer encoder-decoder; one embedding for both sides and the output, or a
    source embedding of its own with ``src_vocab_size`` (see the module docstring)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.n_embd % config.n_head != 0:
            raise ConfigError(
                f"model.n_embd ({config.n_embd}) must be divisible by model.n_head ({config.n_head})"
            )
        self.config = config
        self.max_context = config.block_size  # target positions (sources have as many)
        enc_layers = config.enc_layers or config.n_layer
        eps, bias = config.layer_norm_eps, config.bias
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # targets (and joint sources)
        self.src_wte: nn.Embedding | None = (
            nn.Embedding(config.src_vocab_size, config.n_embd) if config.src_vocab_size else None
        )
        if config.pos_encoding == "learned":
            self.enc_wpe = nn.Embedding(config.block_size, config.n_embd)
            self.dec_wpe = nn.Embedding(config.block_size, config.n_embd)
        else:
            table = sinusoidal_table(config.block_size, config.n_embd, SINUSOID_SCALE)
            self.register_buffer("pos_table", table, persistent=False)
        self.drop = nn.Dropout(config.dropout)
        self.encoder = nn.ModuleList(Block(config) for _ in range(enc_layers))
        self.enc_ln = nn.LayerNorm(config.n_embd, eps=eps, bias=bias)
        self.decoder = nn.ModuleList(DecoderBlock(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=eps, bias=bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

        self.apply(self._init_module)
        residual_std = 0.02 / math.sqrt(2 * (config.n_layer + enc_layers))
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=residual_std)
        if config.tie_weights:
            self.lm_head.weight = self.wte.weight

    @staticmethod
    def _init_module(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def _table(self, side: str) -> Tensor:
        if self.config.pos_encoding == "sinusoidal":
            return self.pos_table
        return (self.enc_wpe if side == "enc" else self.dec_wpe).weight

    def encode(
        self,
        src: Tensor,
        src_mask: Tensor | None = None,
        *,
        pad_mask: Tensor | None = None,
        capacity: int | None = None,
        rollback: int | None = None,
        recorder: Recorder | None = None,
    ) -> Seq2SeqState:
        mask = _source_mask(src, src_mask)
        batch, steps = src.shape
        limit = self.config.block_size
        if steps > limit:
            raise ContextLengthError(
                f"a source of {steps} tokens exceeds the model's {limit} positions; shorten it "
                "(data.max_source_len filters training pairs)"
            )
        embed = self.wte if self.src_wte is None else self.src_wte
        x = self.drop(embed(src) + self._table("enc")[:steps])  # (B, S, C)
        cache = KVCache.empty(len(self.encoder), batch, steps)  # holds nothing beyond this call
        attn_mask = mask[:, None, None, :]  # keys: real source tokens only
        rec = _prefixed(recorder, "encoder.")
        for i, block in enumerate(self.encoder):
            x = block(x, cache, i, attn_mask, False, rec)
        memory = self.enc_ln(x)  # (B, S, C)
        cached: list[Tensor] = []
        for block in self.decoder:
            cached.extend(block.cross.memory_kv(memory))
        weight = self.wte.weight
        if rollback is not None:  # rows of their own lengths (the decoder's self-attention)
            decoder = SlotKVCache.allocate(
                len(self.decoder),
                batch,
                self.config.n_head,
                self.config.n_embd // self.config.n_head,
                capacity or limit,
                dtype=weight.dtype,
                device=weight.device,
                trim=True,
            )
        elif capacity is None and pad_mask is None:
            decoder = KVCache.empty(len(self.decoder), batch, limit)
        else:
            capacity = capacity or limit
            if capacity > limit:
                raise ContextLengthError(
                    f"a cache of {capacity} tokens exceeds the model's {limit} target positions"
                )
            decoder = KVCache.allocate(
                len(self.decoder),
                batch,
                self.config.n_head,
                self.config.n_embd // self.config.n_head,
                capacity,
                dtype=weight.dtype,
                device=weight.device,
                pad_mask=pad_mask,
            )
        return Seq2SeqState(memory=memory, src_mask=mask, decoder=decoder, cached=tuple(cached))

    def decode(
        self, tokens: Tensor, state: Seq2SeqState, recorder: Recorder | None = None
    ) -> tuple[Tensor, Seq2SeqState]:
        cache: KVCache | SlotKVCache = state.decoder
        steps = tokens.shape[1]
        if cache.length + steps > cache.capacity:
            raise ContextLengthError(
                f"{cache.length + steps} target tokens exceed the model's {cache.capacity} "
                "positions; ask for fewer new tokens"
            )
        table = self._table("dec")
        per_row = cache.positions(steps)
        if per_row is None:
            positions = table[cache.length : cache.length + steps]
        else:
            positions = nn.functional.embedding(per_row, table)
        x = self.drop(self.wte(tokens) + positions)  # (B, T, C)
        mask, is_causal = cache.attention_mask(steps)
        for i, block in enumerate(self.decoder):
            kv = (state.cached[2 * i], state.cached[2 * i + 1])
            x = block(x, cache, i, mask, is_causal, kv, state.src_mask, recorder)
        cache.advance(steps)
        logits = per_token(self.lm_head, self.ln_f(x))  # (B, T, V)
        return logits, state


# --------------------------------------------------------------------------- registry


@register_model("seq2seq-rnn")
def build_rnn_seq2seq(config: ModelConfig) -> RNNSeq2Seq:
    """Builder registered for ``model.arch = "seq2seq-rnn"``."""
    return RNNSeq2Seq(config)


@register_model("transformer")
def build_transformer(config: ModelConfig) -> TransformerSeq2Seq:
    """Builder registered for ``model.arch = "transformer"``."""
    return TransformerSeq2Seq(config)


def is_seq2seq(model: nn.Module) -> bool:
    """True for an encoder-decoder (a model with ``encode`` and ``bind``)."""
    return isinstance(model, Seq2SeqModel)


def require_encoder_decoder(model: nn.Module, what: str) -> None:
    """Raise CheckpointError (``what``, then what to do) unless ``model`` is an encoder-decoder."""
    if not is_seq2seq(model):
        raise CheckpointError(
            f"{what}, a language model; translate and summarize need an encoder-decoder "
            "(train one with --task translation or summarization)"
        )


__all__ = [
    "BoundDecoder",
    "require_encoder_decoder",
    "CrossAttention",
    "DecoderBlock",
    "RNNSeq2Seq",
    "Seq2SeqModel",
    "Seq2SeqState",
    "TransformerSeq2Seq",
    "build_rnn_seq2seq",
    "build_transformer",
    "is_seq2seq",
]
