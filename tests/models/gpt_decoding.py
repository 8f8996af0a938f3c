"""A fixed decoding script for the GPT's decoding paths (the plan's PyTorch path, the C step),
held against the general path by the tests beside it."""

from __future__ import annotations

import torch

PROMPT = [[1, 5, 2, 7, 3, 3, 9], [4, 4, 8, 1, 0, 2, 6], [12, 11, 10, 9, 8, 7, 6]]

# ModelConfig overrides every decoding path must hold for: id -> overrides.
GPT_VARIANTS = {
    "plain": {},
    "no-bias": {"bias": False},
    "gelu-tanh": {"activation": "gelu_tanh"},
    "sinusoidal": {"pos_encoding": "sinusoidal"},
    "untied": {"tie_weights": False},
    "4-heads": {"n_head": 4},
}


def decode_logits(model, rows, steps=6, general=False, pad_mask=None, slots=False):
    """Prefill ``rows``, feed 3 tokens at once (a speculative check), then ``steps`` tokens one at
    a time: the logits of the prefill's last position and of every fed token, (B, 4 + steps, V).
    ``general``: through a no-op forward pre-hook, which keeps every call on GPT.forward's
    general path."""
    handle = model.register_forward_pre_hook(lambda module, args: None) if general else None
    try:
        with torch.inference_mode():
            if slots:
                state = model.new_state(len(rows), slots=True)
            else:
                capacity = len(rows[0]) + 3 + steps
                state = model.new_state(len(rows), pad_mask=pad_mask, capacity=capacity)
            out, state = model(torch.tensor(rows), state)
            logits = [out[:, -1:]]
            out, state = model(torch.tensor([[2, 9, 4]] * len(rows)), state)
            logits.append(out)
            for step in range(steps):
                out, state = model(torch.full((len(rows), 1), (3 * step + 1) % 13), state)
                logits.append(out)
    finally:
        if handle is not None:
            handle.remove()
    return torch.cat(logits, dim=1)
