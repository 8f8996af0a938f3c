"""Each architecture can memorise one small batch: the whole model is trainable end to end."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rnn2gpt.models import build_model


@pytest.mark.parametrize(
    "overrides",
    [
        dict(arch="rnn"),
        dict(arch="rnn", nonlinearity="relu"),
        dict(arch="lstm"),
        dict(arch="gru"),
        dict(arch="gpt"),
    ],
    ids=["rnn-tanh", "rnn-relu", "lstm", "gru", "gpt"],
)
def test_overfits_one_batch(make_config, overrides, learning_seed) -> None:
    torch.manual_seed(learning_seed)
    config = make_config(n_layer=1, n_embd=32, n_head=2, block_size=16, **overrides)
    model = build_model(config).train()
    data = torch.randint(
        0, config.vocab_size, (4, 17), generator=torch.Generator().manual_seed(1 + learning_seed)
    )
    inputs, targets = data[:, :-1], data[:, 1:]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(1000):  # until the loss is tiny (usually 100-200 steps), up to a cap
        logits, _ = model(inputs)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if loss.item() < 0.05:
            break
    assert loss.item() < 0.1
