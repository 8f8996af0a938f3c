"""LoRA: low-rank adapters on a model's linear layers (Hu et al., 2021).

A frozen linear layer ``y = x W^T + b`` (W: (out, in)) gains a trainable low-rank update::

    y = x W^T + b + (alpha / r) * dropout(x) A^T B^T        A: (r, in), B: (out, r)

``A`` starts random and ``B`` at zero, so a freshly adapted model computes exactly what the base
model does. Only A and B train: ``r * (in + out)`` parameters per layer instead of ``in * out``.

Names. :class:`LoRALinear` keeps the base layer's ``weight`` and ``bias`` as its own parameters
(the same tensors, not copies) and adds ``lora_A`` / ``lora_B``. So an adapted model's state dict
is the base model's state dict, name for name, plus ``<layer>.lora_A`` / ``<layer>.lora_B``;
:func:`lora_state_dict` is exactly those extra tensors, and :func:`merge_lora` gives back a
plain model whose state dict has the original names only.

Targets are named by module-name suffix, e.g. ``attn.c_attn`` matches
``transformer.h.0.attn.c_attn`` and ``transformer.h.1.attn.c_attn``. The valid suffixes of a
model are the names of its ``nn.Linear`` layers after their last numbered component (GPT:
``attn.c_attn``, ``attn.c_proj``, ``mlp.c_fc``, ``mlp.c_proj``, ``lm_head``; recurrent models:
``decoder``), so no architecture is special-cased here.

Tied weights. A linear layer whose weight is shared with another module (``lm_head`` with
``transformer.wte``, a recurrent ``decoder`` with ``embedding`` when ``tie_weights`` is on)
cannot be a target: merging the update into the shared tensor would change the embedding too,
which the adapter was never trained for. :func:`apply_lora` refuses it with an error that says
to leave the layer out (or to train with ``model.tie_weights=false``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

LORA_FORMAT = "rnn2gpt-lora"
_ADAPTER_SUFFIXES = (".lora_A", ".lora_B")
_NUMBERED = re.compile(r"^(?:.*\.)?\d+\.")  # everything up to the last ".<digits>." component


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable rank-``rank`` update. x (..., in) -> (..., out).

    Attributes:
        weight: (out, in), the base layer's weight (same tensor), frozen.
        bias: (out,) or None, the base layer's bias (same tensor), frozen.
        lora_A: (rank, in), Kaiming-uniform initialised (as in the LoRA reference code).
        lora_B: (out, rank), zeros, so the layer starts equal to the base.
        scaling: alpha / rank.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, not {type(base).__name__}")
        _check_hyperparameters(rank, alpha, dropout)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha = rank, float(alpha)
        self.scaling = self.alpha / rank
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        base = F.linear(x, self.weight, self.bias)
        # (..., in) -> (..., r) -> (..., out): never forms the (out, in) product B A.
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)
        return base + self.scaling * update

    def merged_weight(self) -> Tensor:
        """(out, in): the base weight with the update folded in, W + (alpha / r) B A."""
        return self.weight + self.scaling * (self.lora_B @ self.lora_A)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"rank={self.rank}, alpha={self.alpha:g}, bias={self.bias is not None}"
        )


# --------------------------------------------------------------------------- targets


def lora_targets(model: nn.Module) -> list[str]:
    """The target suffixes ``model`` offers: its linear layers' names after the last number."""
    return sorted({_suffix(name) for name, module in _linears(model)})


def default_lora_targets(model: nn.Module) -> list[str]:
    """Targets used when none are given: the untied linear layers inside repeated blocks
    (GPT: ``attn.c_attn``, ``attn.c_proj``, ``mlp.c_fc``, ``mlp.c_proj``), or, in a model
    without blocks, every untied linear layer (recurrent models: ``decoder`` when untied)."""
    shared = _shared_weight_names(model)
    linears = [(name, m) for name, m in _linears(model) if name not in shared]
    in_blocks = sorted({_suffix(n) for n, _ in linears if _NUMBERED.match(n)})
    return in_blocks or sorted({_suffix(n) for n, _ in linears})


def apply_lora(
    model: nn.Module,
    rank: int,
    alpha: float,
    targets: Sequence[str] | str | None = None,
    dropout: float = 0.0,
) -> list[str]:
    """Wrap the linear layers named by ``targets`` in :class:`LoRALinear`, in place.

    Args:
        model: any rnn2gpt model (or ``nn.Module``).
        rank: r, the rank of the update (>= 1).
        alpha: the update is scaled by alpha / r.
        targets: module-name suffixes (a sequence, or one comma-separated string);
            None = :func:`default_lora_targets`.
        dropout: dropout on the adapter's input (training only).

    Every parameter other than the adapters is frozen (``requires_grad=False``).
    Returns the full names of the wrapped modules, sorted.

    Raises:
        ConfigError: bad hyper-parameters, an unknown target (the valid ones are listed), a
            target whose weight is tied to another module, or a model already adapted.
    """
    _check_hyperparameters(rank, alpha, dropout)
    if has_lora(model):
        raise ConfigError(
            "the model already has LoRA adapters; merge them (merge_lora) before adding new ones"
        )
    if targets is None:
        wanted = default_lora_targets(model)
    elif isinstance(targets, str):
        wanted = [t.strip() for t in targets.split(",") if t.strip()]
    else:
        wanted = [t.strip() for t in targets]
    if not wanted:
        raise ConfigError(f"no LoRA targets given; valid targets: {', '.join(lora_targets(model))}")

    valid = lora_targets(model)
    unknown = [t for t in wanted if t not in valid]
    if unknown:
        raise ConfigError(
            f"unknown LoRA target(s) {', '.join(repr(t) for t in unknown)}; valid targets for "
            f"this model: {', '.join(valid)}"
        )
    shared = _shared_weight_names(model)
    chosen = [(name, m) for name, m in _linears(model) if _suffix(name) in wanted]
    tied = sorted(name for name, _ in chosen if name in shared)
    if tied:
        raise ConfigError(
            f"LoRA cannot adapt {', '.join(tied)}: its weight is tied to the input embedding, "
            "and merging the update would change the embedding too; leave it out of the "
            "targets (or train with model.tie_weights=false)"
        )

    for param in model.parameters():
        param.requires_grad_(False)
    wrapped = []
    for name, linear in chosen:
        _set_module(model, name, LoRALinear(linear, rank, alpha, dropout))
        wrapped.append(name)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("LoRA rank %d on %d layers: %d trainable parameters", rank, len(wrapped), trainable)
    return sorted(wrapped)


def has_lora(model: nn.Module) -> bool:
    """Whether ``model`` holds any :class:`LoRALinear`."""
    return any(isinstance(m, LoRALinear) for m in model.modules())


def is_adapter_tensor(name: str) -> bool:
    """Whether a state-dict name is an adapter tensor (``<layer>.lora_A`` / ``.lora_B``)."""
    return name.endswith(_ADAPTER_SUFFIXES)


# --------------------------------------------------------------------------- adapter weights


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter tensors only (``<layer>.lora_A`` (r, in), ``<layer>.lora_B`` (out, r)),
    detached copies; the base weights are not included."""
    return {
        name: tensor.detach().clone()
        for name, tensor in model.state_dict().items()
        if name.endswith(_ADAPTER_SUFFIXES)
    }


def load_lora_state_dict(model: nn.Module, tensors: Mapping[str, Tensor]) -> None:
    """Copy adapter tensors (as from :func:`lora_state_dict`) into an adapted ``model``.

    Raises:
        CheckpointError: missing, unexpected or mis-shaped adapter tensors (named), or a model
            without adapters.
    """
    if not has_lora(model):
        raise CheckpointError(
            "the model has no LoRA adapters to load into; apply_lora with the adapter's "
            "targets and rank first"
        )
    params = {n: p for n, p in model.named_parameters() if n.endswith(_ADAPTER_SUFFIXES)}
    missing = sorted(set(params) - set(tensors))
    unexpected = sorted(set(tensors) - set(params))
    shapes = [
        f"{n} {tuple(tensors[n].shape)} (expected {tuple(params[n].shape)})"
        for n in sorted(set(params) & set(tensors))
        if tensors[n].shape != params[n].shape
    ]
    problems = []
    if missing:
        problems.append("missing " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected " + ", ".join(unexpected))
    if shapes:
        problems.append("mis-shaped " + ", ".join(shapes))
    if problems:
        raise CheckpointError(
            f"the LoRA adapter does not fit this model: {'; '.join(problems)}; use the same "
            "targets and rank the adapter was trained with"
        )
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[name])


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put plain ``nn.Linear`` layers back.

    In place; returns ``model``. The result's state dict has the original names only, and all
    its parameters are trainable again, as in a freshly built model.
    """
    for name, module in list(model.named_modules()):
        if not isinstance(module, LoRALinear):
            continue
        linear = nn.Linear(
            module.in_features,
            module.out_features,
            bias=module.bias is not None,
            device=module.weight.device,
            dtype=module.weight.dtype,
        )
        with torch.no_grad():
            linear.weight = nn.Parameter(module.merged_weight().detach().clone())
        if module.bias is not None:
            linear.bias = module.bias
        _set_module(model, name, linear)
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def save_lora_adapter(
    model: nn.Module, file: str | os.PathLike[str], *, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write :func:`lora_state_dict` to a safetensors ``file`` with what is needed to re-apply
    it (rank, alpha, targets, dropout) in the metadata. Returns the path."""
    from safetensors.torch import save_file

    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    if not layers:
        raise ConfigError("the model has no LoRA adapters to save; apply_lora first")
    names = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    first = layers[0]
    dropout = first.lora_dropout.p if isinstance(first.lora_dropout, nn.Dropout) else 0.0
    info = {
        "format": LORA_FORMAT,
        "rank": str(first.rank),
        "alpha": repr(first.alpha),
        "dropout": repr(dropout),
        "targets": json.dumps(sorted({_suffix(n) for n in names})),
        **dict(metadata or {}),
    }
    path = Path(file)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.to("cpu").contiguous() for k, v in lora_state_dict(model).items()}
    save_file(tensors, str(path), metadata=info)
    return path


def load_lora_adapter(model: nn.Module, file: str | os.PathLike[str]) -> list[str]:
    """Apply the adapter saved by :func:`save_lora_adapter` to a plain ``model`` (same
    architecture as when it was trained) and load its weights. Returns the wrapped names.

    Raises:
        CheckpointError: a missing or damaged file, or one that does not fit the model.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(file)
    if not path.is_file():
        raise CheckpointError(f"no LoRA adapter file at {path}; check the path")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = dict(handle.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is corrupt or truncated ({exc})") from None
    if meta.get("format") != LORA_FORMAT:
        raise CheckpointError(f"{path} is not an rnn2gpt LoRA adapter (no format={LORA_FORMAT})")
    try:
        rank, alpha = int(meta["rank"]), float(meta["alpha"])
        dropout = float(meta.get("dropout", "0.0"))
        targets = json.loads(meta["targets"])
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: damaged adapter metadata ({exc})") from None
    try:
        wrapped = apply_lora(model, rank, alpha, targets, dropout)
    except ConfigError as exc:
        raise CheckpointError(f"{path} does not fit this model: {exc}") from None
    load_lora_state_dict(model, tensors)
    return wrapped


# --------------------------------------------------------------------------- helpers


def _check_hyperparameters(rank: int, alpha: float, dropout: float) -> None:
    if not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"LoRA rank must be a positive integer (got {rank!r})")
    if alpha <= 0:
        raise ConfigError(f"LoRA alpha must be positive (got {alpha!r})")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"LoRA dropout must be in [0, 1) (got {dropout!r})")


def _linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and n]


def _suffix(name: str) -> str:
    """``transformer.h.3.attn.c_attn`` -> ``attn.c_attn``; ``lm_head`` -> ``lm_head``."""
    return _NUMBERED.sub("", name)


def _shared_weight_names(model: nn.Module) -> set[str]:
    """Names of linear layers whose weight tensor is also held by another module."""
    owners: dict[int, int] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        for param in module.parameters(recurse=False):
            owners[id(param)] = owners.get(id(param), 0) + 1
    return {name for name, m in _linears(model) if owners.get(id(m.weight), 0) > 1}


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


__all__ = [
    "LORA_FORMAT",
    "LoRALinear",
    "apply_lora",
    "default_lora_targets",
    "has_lora",
    "is_adapter_tensor",
    "load_lora_adapter",
    "load_lora_state_dict",
    "lora_state_dict",
    "lora_targets",
    "merge_lora",
    "save_lora_adapter",
]
