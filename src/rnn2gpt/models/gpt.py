"""A GPT: decoder-only transformer with pre-LayerNorm blocks, GPT-2's layout and names.

    tokens (B, T) -> wte (V, C) + positions (learned wpe (block_size, C) or fixed sinusoids)
                  -> dropout -> n_layer x Block -> ln_f -> lm_head (C, V) -> logits (B, T, V)

    Block:  x = x + attn(ln_1(x))      causal self-attention, fused qkv projection c_attn
            x = x + mlp(ln_2(x))       c_fc -> GELU -> c_proj

Module names follow GPT-2 (``transformer.wte``, ``transformer.h.0.attn.c_attn``, ...), with
``nn.Linear`` where GPT-2 has ``Conv1D``, so importing GPT-2 weights is a transpose per matrix.
The state is a :class:`~rnn2gpt.models.kv_cache.KVCache`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import ConfigError, ContextLengthError
from . import native_blocks, native_model, native_ops
from .adaptive import check_cutoffs, cluster_layer, lm_output
from .base import Recorder, count_parameters, register_model
from .decode_plan import (
    DecodePlan,
    build_decode_plan,
    may_use_plan,
    next_positions,
    planned_forward,
)
from .kv_cache import KVCache, SlotKVCache
from .ops import dropout, gelu, sdpa


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention. x (B, T, C) -> (B, T, C), keys/values kept in a cache."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.attn_dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: Tensor,
        cache: KVCache,
        layer: int,
        mask: Tensor | None,
        is_causal: bool,
        recorder: Recorder | None = None,
    ) -> Tensor:
        batch, steps, width = x.shape
        packed = self.c_attn(x)  # (B, T, 3C)
        dropout_p = self.dropout if self.training else 0.0
        if (
            is_causal
            and mask is None
            and recorder is None
            and dropout_p == 0.0
            and cache.is_fresh(layer)
            and native_ops.usable(packed)
        ):
            # A fresh sequence (training, scoring): attention in C on the packed projection,
            # with no copies of q, k, v or y (models/native_ops.py). The cache keeps views.
            y = native_ops.causal_attention(packed, self.n_head)
            keys_values = packed.view(batch, steps, 3, self.n_head, self.head_dim)[:, :, 1:]
            cache.append(layer, *keys_values.permute(2, 0, 3, 1, 4).unbind(0))
            return dropout(self.resid_dropout, self.c_proj(y))
        # (B, T, 3C) -> 3 x (B, n_head, T, head_dim), made contiguous in one copy: PyTorch's CPU
        # attention kernels run about 1.5x faster (forward + backward) on contiguous inputs.
        qkv = packed.view(batch, steps, 3, self.n_head, self.head_dim)
        qkv = qkv.permute(2, 0, 3, 1, 4)
        # A single decode step gains nothing from the copy (the cache copies k, v anyway).
        q, k, v = (qkv if steps == 1 else qkv.contiguous()).unbind(0)
        k, v = cache.append(layer, k, v)  # (B, n_head, S, head_dim), S = past + T

        if recorder is None:
            y = sdpa(q, k, v, mask, dropout_p, is_causal)
        else:
            # The slow path: weights computed explicitly so they can be reported.
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, nh, T, S)
            if is_causal:
                mask = torch.ones(steps, k.shape[2], dtype=torch.bool, device=x.device).tril()
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            weights = scores.softmax(dim=-1)
            recorder(f"layer{layer}.attention", weights.detach())
            y = F.dropout(weights, dropout_p, self.training) @ v

        y = y.transpose(1, 2).reshape(batch, steps, width)  # re-assemble the heads
        return dropout(self.resid_dropout, self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward. x (B, T, C) -> (B, T, C) through a width of mlp_ratio * C."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        inner = config.mlp_ratio * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, inner, bias=config.bias)
        self.act = nn.GELU(approximate="tanh" if config.activation == "gelu_tanh" else "none")
        self.c_proj = nn.Linear(inner, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        hidden = gelu(self.c_fc(x), self.act.approximate)  # self.act, without its module call
        return dropout(self.dropout, self.c_proj(hidden))


class Block(nn.Module):
    """Pre-LayerNorm transformer block. x (B, T, C) -> (B, T, C)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        eps, bias = config.layer_norm_eps, config.bias
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=eps, bias=bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=eps, bias=bias)
        self.mlp = MLP(config)

    def forward(
        self,
        x: Tensor,
        cache: KVCache,
        layer: int,
        mask: Tensor | None,
        is_causal: bool,
        recorder: Recorder | None = None,
    ) -> Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer, mask, is_causal, recorder)
        return x + self.mlp(self.ln_2(x))


# Embedding weights start at std 0.02 (GPT-2's init). Sinusoids of amplitude 1 (RMS 0.71) added
# to them would be 35x louder than the tokens, and the model spends many steps growing its token
# embeddings before it can read them. The models' fixed tables are scaled to RMS 0.02 instead:
# positions and tokens start at the same scale, as with learned positions.
SINUSOID_SCALE = 0.02 * math.sqrt(2.0)


def sinusoidal_table(length: int, width: int, scale: float = 1.0) -> Tensor:
    """(length, width) fixed positions: ``scale`` x (sin at even, cos at odd features), as in
    Vaswani et al. (who use scale 1 with embeddings scaled up to RMS 1)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(
        torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width)
    )  # (ceil(width / 2),)
    angles = position * frequency  # (length, ceil(width / 2))
    table = torch.zeros(length, width)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : width // 2])
    return table * scale


class GPT(nn.Module):
    """Decoder-only transformer following the shared LM contract; the state is a KVCache."""

    carries_state = False

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.arch != "gpt":
            raise ConfigError(f"GPT builds model.arch='gpt' (got {config.arch!r})")
        if config.n_embd % config.n_head != 0:
            raise ConfigError(
                f"model.n_embd ({config.n_embd}) must be divisible by model.n_head ({config.n_head})"
            )
        self.config = config
        self.max_context: int | None = config.block_size
        self._decode_plan: DecodePlan | None = None  # built by the first decoding forward

        parts: dict[str, nn.Module] = {"wte": nn.Embedding(config.vocab_size, config.n_embd)}
        if config.pos_encoding == "learned":
            parts["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        parts["drop"] = nn.Dropout(config.dropout)
        parts["h"] = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        parts["ln_f"] = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.transformer = nn.ModuleDict(parts)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.cutoffs = check_cutoffs(config.adaptive_cutoffs, config.vocab_size)
        # Every GPT scores targets itself: with a plain output layer its training forward runs
        # to the loss in C where it can (models/native_model.py).
        self.computes_nll = True
        self.clusters = cluster_layer(config.n_embd, self.cutoffs) if self.cutoffs else None
        if config.pos_encoding == "sinusoidal":
            # Rebuilt from the config, so it is not saved in checkpoints.
            table = sinusoidal_table(config.block_size, config.n_embd, SINUSOID_SCALE)
            self.register_buffer("pos_table", table, persistent=False)

        self.apply(self._init_module)
        # GPT-2: scale the projections into the residual stream by 1/sqrt(2 * n_layer), so the
        # residual's variance does not grow with depth.
        residual_std = 0.02 / math.sqrt(2 * config.n_layer)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=residual_std)
        if config.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight

    def __getstate__(self) -> dict[str, object]:
        """The module without its decode plan: the plan is bound to this model's own tensors
        (the C step to their addresses), so a copy or a pickle builds its own at its next state."""
        state = self.__dict__.copy()
        state["_decode_plan"] = None
        return state

    @staticmethod
    def _init_module(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ contract

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
    ) -> KVCache | SlotKVCache:
        """A preallocated cache of ``capacity`` slots (default: block_size).

        pad_mask: (B, T0) bool, True at real tokens of the left-padded prompt the next forward
        receives; pads are never attended to and positions count real tokens only.
        slots: rows of independent lengths (:class:`SlotKVCache`, for continuous batching).
        rollback: > 0 for a speculative run: a slot cache rolls rows back to any length
            (``truncate``), and then attends over its filled slots only (``trim``).

        Decoding from the new state resolves the model's modules afresh
        (:mod:`rnn2gpt.models.decode_plan`), so layers replaced since the last state are used.
        """
        self._decode_plan = None
        capacity = capacity or self.config.block_size
        if capacity > self.config.block_size:
            raise ContextLengthError(
                f"a cache of {capacity} tokens exceeds the model's context of "
                f"{self.config.block_size} tokens; ask for at most model.block_size"
            )
        if pad_mask is not None:
            if pad_mask.dim() != 2 or pad_mask.shape[0] != batch_size:
                raise ValueError(
                    f"pad_mask must have shape (batch_size={batch_size}, T0); got {tuple(pad_mask.shape)}"
                )
            if pad_mask.shape[1] > capacity:
                raise ContextLengthError(
                    f"a padded prompt of {pad_mask.shape[1]} tokens exceeds the cache capacity "
                    f"of {capacity} tokens; shorten the prompt"
                )
        weight = self.transformer.wte.weight
        shape = (self.config.n_layer, batch_size, self.config.n_head)
        if slots:
            head_dim = self.config.n_embd // self.config.n_head
            return SlotKVCache.allocate(
                *shape,
                head_dim,
                capacity,
                dtype=weight.dtype,
                device=weight.device,
                trim=rollback > 0,
            )
        return KVCache.allocate(
            self.config.n_layer,
            batch_size,
            self.config.n_head,
            self.config.n_embd // self.config.n_head,
            capacity,
            dtype=weight.dtype,
            device=weight.device,
            pad_mask=pad_mask,
        )

    def forward(
        self,
        tokens: Tensor,
        state: KVCache | None = None,
        *,
        recorder: Recorder | None = None,
        targets: Tensor | None = None,
    ) -> tuple[Tensor, KVCache]:
        """tokens (B, T) -> logits (B, T, V) and the cache holding every token so far.

        targets (B, T): return each target's negative log-likelihood (B, T) fp32 in place of
        the logits (see models/base.py).
        """
        if tokens.dim() != 2:
            raise ValueError(f"tokens must have shape (B, T); got {tuple(tokens.shape)}")
        batch, steps = tokens.shape
        if state is None:
            cache = KVCache.empty(self.config.n_layer, batch, self.config.block_size)
        else:
            cache = state
        if cache.length + steps > cache.capacity:
            where = (
                "the model's context"
                if cache.capacity == self.config.block_size
                else "the cache capacity"
            )
            raise ContextLengthError(
                f"{cache.length + steps} tokens exceed {where} of {cache.capacity} tokens; "
                "shorten the input or keep only the most recent tokens"
            )

        if may_use_plan(self, state, recorder, targets):
            # Decoding: the same numbers without the module calls (models/decode_plan.py).
            plan = self._decode_plan
            if plan is None:
                plan = self._decode_plan = build_decode_plan(self)
            if plan.layers is not None:
                return planned_forward(plan, tokens, cache), cache

        if targets is not None and not self.cutoffs:
            parts = native_model.plain_model(self, tokens, targets, cache, recorder)
            if parts is not None:
                # Training on AVX2: tokens to loss in one autograd function (models/native_model.py).
                nll = native_model.model_loss(self, tokens, targets, cache, parts)
                cache.advance(steps)
                return nll, cache

        table = self.pos_table if self.config.pos_encoding == "sinusoidal" else None
        x = self.transformer.wte(tokens) + next_positions(
            self.transformer.wpe.weight if table is None else table, cache, steps
        )  # (B, T, C)
        x = dropout(self.transformer.drop, x)
        mask, is_causal = cache.attention_mask(steps)
        plain = native_blocks.plain_blocks(self, x, cache, mask, is_causal, recorder)
        if plain is not None:
            # Training on AVX2: the blocks in one autograd function (models/native_blocks.py).
            x = native_blocks.blocks_forward(self, x, cache, plain)
        else:
            for i, block in enumerate(self.transformer.h):
                x = block(x, cache, i, mask, is_causal, recorder)
                if recorder is not None:
                    recorder(f"layer{i}.hidden", x.detach())
        cache.advance(steps)
        hidden = self.transformer.ln_f(x)  # (B, T, C)
        return lm_output(hidden, self.lm_head, self.clusters, self.cutoffs, targets), cache


@register_model("gpt")
def build_gpt(config: ModelConfig) -> GPT:
    """Builder registered for ``model.arch = "gpt"``."""
    return GPT(config)


__all__ = ["GPT", "MLP", "Block", "CausalSelfAttention", "build_gpt", "sinusoidal_table"]
