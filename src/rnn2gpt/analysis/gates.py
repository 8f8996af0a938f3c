"""Gate activations of gated recurrent models (LSTM, GRU) over a text, as heatmaps.

The model's recorder reports each gate as ``layer{k}.<gate>`` with shape (B, T, H): the LSTM's
``input_gate``, ``forget_gate``, ``output_gate``, the GRU's ``reset_gate`` and ``update_gate``
(sigmoids, in [0, 1]). Whatever the model reports under a name ending in ``_gate`` is drawn, so
a model without gates (vanilla RNN, GPT) simply yields none.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from .attention import MAX_TICK_LABELS, _printable
from .common import record_internals
from .plots import new_figure

_GATE = re.compile(r"^layer(\d+)\.(\w+_gate)$")


def gate_activations(model: nn.Module, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Recorded gate name -> activations (T, H) of the first row of ``tokens`` (B, T).

    Sorted by layer, then gate name; empty when the model has no gates.
    """
    recorded = record_internals(model, tokens[:1])
    gates = {}
    for name, tensor in recorded.items():
        match = _GATE.match(name)
        if match:
            gates[(int(match.group(1)), match.group(2))] = (name, tensor[0])
    return {name: tensor for _, (name, tensor) in sorted(gates.items())}


def gate_summary(gates: Mapping[str, torch.Tensor]) -> list[tuple[str, float, float, float]]:
    """(name, mean, fraction of units > 0.9 ("open"), fraction < 0.1 ("closed")) per gate."""
    rows = []
    for name, values in gates.items():
        rows.append(
            (
                name,
                float(values.mean()),
                float((values > 0.9).float().mean()),
                float((values < 0.1).float().mean()),
            )
        )
    return rows


def plot_gates(
    gates: Mapping[str, torch.Tensor],
    labels: Sequence[str],
    out_path: str | os.PathLike[str],
    *,
    max_units: int = 32,
) -> Path | None:
    """Heatmaps (hidden unit x token) of every gate, one row per layer, one column per gate.

    Only the first ``max_units`` units are drawn, so each cell stays visible. Returns the PNG,
    or None without matplotlib or without gates.
    """
    if not gates:
        return None
    layers: dict[str, list[tuple[str, torch.Tensor]]] = {}
    for name, values in gates.items():
        layer, gate = name.split(".", 1)
        layers.setdefault(layer, []).append((gate, values))
    rows = len(layers)
    cols = max(len(v) for v in layers.values())
    steps = next(iter(gates.values())).shape[0]
    width = min(max(steps * 0.12, 4.0), 12.0)
    fig = new_figure(figsize=(width * cols + 1.2, 3.4 * rows + 0.6), layout="constrained")
    if fig is None:
        return None
    axes = fig.subplots(rows, cols, squeeze=False)
    image = None
    for r, (layer, items) in enumerate(layers.items()):
        for c in range(cols):
            ax = axes[r][c]
            if c >= len(items):
                ax.set_visible(False)
                continue
            gate, values = items[c]
            shown = values[:, :max_units].T.numpy()  # (units, T)
            image = ax.imshow(
                shown, cmap="magma", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest"
            )
            ax.set_title(f"{layer.replace('layer', 'layer ')} {gate.replace('_', ' ')}")
            ax.set_xlabel("token position")
            ax.set_ylabel(f"hidden unit (first {shown.shape[0]})")
            if len(labels) >= steps and steps <= MAX_TICK_LABELS:
                ax.set_xticks(
                    range(steps), [_printable(p) for p in labels[:steps]], rotation=90, fontsize=6
                )
    fig.suptitle(f"gate activations over {steps} tokens")
    if image is not None:
        fig.colorbar(
            image,
            ax=axes.ravel().tolist(),
            label="gate activation (0 = closed, 1 = open)",
            shrink=0.8,
        )
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


__all__ = ["gate_activations", "gate_summary", "plot_gates"]
