"""GPT-2's configuration and state-dict layout, mapped to and from our GPT (pure functions).

Our :class:`~rnn2gpt.models.gpt.GPT` already uses GPT-2's module names, so the two formats differ
in three small ways only:

- GPT-2's ``Conv1D`` stores a weight as (in, out); our ``nn.Linear`` stores (out, in). The four
  per-block matrices (``attn.c_attn``, ``attn.c_proj``, ``mlp.c_fc``, ``mlp.c_proj``) are
  transposed on the way in and out. ``lm_head`` is an ``nn.Linear`` on both sides.
- GPT-2 files may drop the ``transformer.`` prefix (the original OpenAI conversions) and may
  carry the causal-mask buffers ``attn.bias`` / ``attn.masked_bias``, which are skipped.
- A tied ``lm_head.weight`` is not stored by ``save_pretrained``; both sides rebuild it from
  ``transformer.wte.weight``.

Exporting represents every GPT we build exactly: a model without biases gets zero biases, and
a sinusoidal position table is written as GPT-2's learned ``wpe`` (the same numbers).

Importing refuses GPT-2 variants we cannot compute: ``scale_attn_weights=false``,
``scale_attn_by_inverse_layer_idx=true``, cross-attention, and activations other than the GELUs.
``reorder_and_upcast_attn`` is accepted: it only changes the float precision of the attention
scores, not the function.

No files are read or written here: reading a Hugging Face folder and writing checkpoints is
:mod:`rnn2gpt.interop.hf`, above :mod:`rnn2gpt.checkpoint`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

# GPT-2 activation names -> ours. gelu_new, gelu_pytorch_tanh and gelu_fast are the same
# tanh approximation written three ways.
_ACTIVATIONS_IN = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu": "gelu",
}
_ACTIVATIONS_OUT = {"gelu_tanh": "gelu_new", "gelu": "gelu"}

# Names below are "canonical": the ``transformer.`` prefix removed (lm_head has none anyway).
_CONV1D = re.compile(r"^h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$")
_MASK_BUFFERS = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")
_PREFIX = "transformer."
LM_HEAD_KEY = "lm_head.weight"
WTE_KEY = "wte.weight"


# --------------------------------------------------------------------------- configs


def gpt2_config_to_model_config(hf_config: Mapping[str, Any], *, bias: bool = True) -> ModelConfig:
    """Our :class:`ModelConfig` for a Hugging Face GPT-2 ``config.json`` (as a dict).

    ``bias=False`` describes a checkpoint whose weights hold no biases at all (the format has no
    flag for it; :func:`import_hf` decides from the weights).

    Raises:
        ConfigError: not a GPT-2 config, or a GPT-2 variant this GPT cannot compute.
    """
    model_type = hf_config.get("model_type")
    if model_type != "gpt2":
        raise ConfigError(
            f"model_type is {model_type!r}, but only GPT-2 models (model_type 'gpt2') can be "
            "imported; convert another architecture with its own tools"
        )

    def get(key: str, default: Any) -> Any:
        value = hf_config.get(key, default)
        return default if value is None else value

    if not get("scale_attn_weights", True):
        raise ConfigError(
            "scale_attn_weights=false (attention without 1/sqrt(head_dim)) cannot be represented "
            "by rnn2gpt's GPT; this model cannot be imported"
        )
    if get("scale_attn_by_inverse_layer_idx", False):
        raise ConfigError(
            "scale_attn_by_inverse_layer_idx=true (attention scaled by 1/layer) cannot be "
            "represented by rnn2gpt's GPT; this model cannot be imported"
        )
    if get("add_cross_attention", False):
        raise ConfigError(
            "add_cross_attention=true (an encoder-decoder GPT-2) cannot be imported; only "
            "decoder-only GPT-2 language models are supported"
        )
    activation = get("activation_function", "gelu_new")
    if activation not in _ACTIVATIONS_IN:
        raise ConfigError(
            f"activation_function {activation!r} is not supported; rnn2gpt's GPT computes "
            f"{', '.join(sorted(_ACTIVATIONS_IN))}"
        )

    n_embd = int(get("n_embd", 768))
    n_inner = get("n_inner", None)
    mlp_ratio = 4
    if n_inner is not None and int(n_inner) != 4 * n_embd:
        if int(n_inner) % n_embd:
            raise ConfigError(
                f"n_inner={n_inner} is not a multiple of n_embd={n_embd}; rnn2gpt's MLP width is "
                "mlp_ratio * n_embd, so this model cannot be imported"
            )
        mlp_ratio = int(n_inner) // n_embd

    if get("reorder_and_upcast_attn", False):
        logger.info("reorder_and_upcast_attn only changes attention precision; imported as is")
    dropout = float(get("resid_pdrop", 0.1))
    config = ModelConfig(
        arch="gpt",
        vocab_size=int(get("vocab_size", 50257)),
        n_layer=int(get("n_layer", 12)),
        n_embd=n_embd,
        n_head=int(get("n_head", 12)),
        block_size=int(get("n_positions", 1024)),
        dropout=dropout,
        attn_dropout=float(get("attn_pdrop", 0.1)),
        tie_weights=bool(get("tie_word_embeddings", True)),
        bias=bias,
        pos_encoding="learned",
        activation=_ACTIVATIONS_IN[activation],
        layer_norm_eps=float(get("layer_norm_epsilon", 1e-5)),
        mlp_ratio=mlp_ratio,
    )
    config.validate()
    return config


def model_config_to_gpt2_config(
    cfg: ModelConfig, *, bos_token_id: int | None = None, eos_token_id: int | None = None
) -> dict[str, Any]:
    """The ``config.json`` dict of a ``GPT2LMHeadModel`` computing the same function as ``cfg``.

    ``bias=False`` and ``pos_encoding="sinusoidal"`` need no flag: :func:`export_hf` writes zero
    biases and the sinusoid table as ``wpe``.

    Raises:
        ConfigError: ``cfg`` is not a GPT.
    """
    if cfg.arch != "gpt":
        raise ConfigError(
            f"only GPT checkpoints export to the GPT-2 format (this model is {cfg.arch!r})"
        )
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": cfg.mlp_ratio * cfg.n_embd,
        "activation_function": _ACTIVATIONS_OUT[cfg.activation],
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.attn_dropout,
        "layer_norm_epsilon": cfg.layer_norm_eps,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": cfg.tie_weights,
        "use_cache": True,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
    }


def canonical_name(name: str) -> str:
    return name[len(_PREFIX) :] if name.startswith(_PREFIX) else name


def _hf_name(canonical: str) -> str:
    """The name ``save_pretrained`` uses, for messages and for export."""
    return canonical if canonical == LM_HEAD_KEY else _PREFIX + canonical


def load_gpt2_state_dict(model: nn.Module, tensors: Mapping[str, Tensor], *, source: str) -> None:
    """Load GPT-2 tensors (HF names, ``Conv1D`` layout) into our ``GPT`` in place.

    Args:
        model: a GPT whose config matches the tensors (build it from the same config.json).
        tensors: name -> tensor as found in the file, with or without the ``transformer.``
            prefix; ``attn.bias`` / ``attn.masked_bias`` buffers are ignored.
        source: the file the tensors came from, for error messages.

    Raises:
        CheckpointError: missing, unexpected or mis-shaped tensors (each named).
    """
    ours = model.state_dict()
    tied = bool(getattr(model.config, "tie_weights", False))
    expected = {canonical_name(k): k for k in ours}  # canonical -> our name
    if tied:
        expected.pop(LM_HEAD_KEY, None)  # rebuilt from wte, as transformers does

    given: dict[str, Tensor] = {}
    for name, tensor in tensors.items():
        key = canonical_name(name)
        if _MASK_BUFFERS.match(key) or (tied and key == LM_HEAD_KEY):
            continue
        given[key] = tensor

    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    converted: dict[str, Tensor] = {}
    shapes = []
    for key in sorted(set(expected) & set(given)):
        tensor = given[key].detach().to(torch.float32)
        if _CONV1D.match(key):
            tensor = tensor.t()
        want = ours[expected[key]].shape
        if tensor.shape != want:
            stored = tuple(given[key].shape)
            shapes.append(f"{_hf_name(key)} {stored} (expected {_conv1d_shape(key, want)})")
        converted[expected[key]] = tensor.contiguous()

    problems = []
    if missing:
        problems.append("missing " + _list(_hf_name(k) for k in missing))
    if unexpected:
        problems.append("unexpected " + _list(_hf_name(k) for k in unexpected))
    if shapes:
        problems.append("mis-shaped " + _list(shapes))
    if problems:
        raise CheckpointError(
            f"{source} does not match its config.json: {'; '.join(problems)}; the weights "
            "and config come from different models"
        )
    if tied:
        converted["lm_head.weight"] = converted["transformer.wte.weight"]
    model.load_state_dict(converted, strict=True)


def gpt2_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Our GPT's weights under GPT-2's names and layout, ready for ``model.safetensors``.

    Zero biases stand in for ``bias=False``; the sinusoid table becomes ``wpe``; a tied
    ``lm_head.weight`` is left out (``from_pretrained`` ties it back). Tensors are contiguous
    CPU float32 copies that share no memory.
    """
    cfg: ModelConfig = model.config
    if cfg.arch != "gpt":
        raise ConfigError(
            f"only GPT checkpoints export to the GPT-2 format (this model is {cfg.arch!r})"
        )
    out: dict[str, Tensor] = {}
    for name, tensor in model.state_dict().items():
        key = canonical_name(name)
        if key == LM_HEAD_KEY and cfg.tie_weights:
            continue
        tensor = tensor.detach().to("cpu", torch.float32)
        if _CONV1D.match(key):
            tensor = tensor.t()
        out[_hf_name(key)] = tensor.contiguous().clone()

    width, inner = cfg.n_embd, cfg.mlp_ratio * cfg.n_embd
    if cfg.pos_encoding == "sinusoidal":
        out[_PREFIX + "wpe.weight"] = model.pos_table.detach().to("cpu", torch.float32).clone()
    if not cfg.bias:
        widths = {"ln_1": width, "ln_2": width, "attn.c_attn": 3 * width}
        widths.update({"attn.c_proj": width, "mlp.c_fc": inner, "mlp.c_proj": width})
        for i in range(cfg.n_layer):
            for part, size in widths.items():
                out[f"{_PREFIX}h.{i}.{part}.bias"] = torch.zeros(size)
        out[_PREFIX + "ln_f.bias"] = torch.zeros(width)
    return out


def _conv1d_shape(key: str, ours: torch.Size) -> tuple[int, ...]:
    """The shape GPT-2's file should have, given our (out, in) shape."""
    return tuple(reversed(ours)) if _CONV1D.match(key) else tuple(ours)


def _list(items: Any, limit: int = 8) -> str:
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


__all__ = [
    "LM_HEAD_KEY",
    "WTE_KEY",
    "canonical_name",
    "gpt2_config_to_model_config",
    "gpt2_state_dict",
    "load_gpt2_state_dict",
    "model_config_to_gpt2_config",
]
