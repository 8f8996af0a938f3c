"""Every architecture honours the shared LM contract (see rnn2gpt.models.base)."""

from __future__ import annotations

import pytest
import torch

from rnn2gpt.models import LanguageModel, State

TOL = dict(atol=1e-4, rtol=1e-4)
B, T = 3, 11


def _tokens(seed: int = 0, batch: int = B, steps: int = T) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 13, (batch, steps), generator=generator)


def _run_chunks(model, tokens, sizes, state=None) -> tuple[torch.Tensor, State]:
    pieces, start = [], 0
    for size in sizes:
        logits, state = model(tokens[:, start : start + size], state)
        pieces.append(logits)
        start += size
    assert start == tokens.shape[1]
    return torch.cat(pieces, dim=1), state


@torch.no_grad()
def test_model_satisfies_protocol(variant_model) -> None:
    assert isinstance(variant_model, LanguageModel)
    logits, state = variant_model(_tokens())
    assert logits.shape == (B, T, 13)
    assert isinstance(state, State)
    assert state.batch_size == B
    assert variant_model.num_parameters() > 0
    assert variant_model.carries_state == (variant_model.config.arch != "gpt")
    expected_context = (
        variant_model.config.block_size if variant_model.config.arch == "gpt" else None
    )
    assert variant_model.max_context == expected_context


@torch.no_grad()
@pytest.mark.parametrize("from_new_state", [False, True], ids=["none", "new_state"])
def test_whole_equals_stepwise_equals_chunks(variant_model, from_new_state: bool) -> None:
    tokens = _tokens(1)
    start = (lambda: variant_model.new_state(B)) if from_new_state else (lambda: None)
    whole, _ = variant_model(tokens, start())
    stepwise, _ = _run_chunks(variant_model, tokens, [1] * T, start())
    chunked, _ = _run_chunks(variant_model, tokens, [3, 1, 5, 2], start())
    torch.testing.assert_close(stepwise, whole, **TOL)
    torch.testing.assert_close(chunked, whole, **TOL)


@torch.no_grad()
def test_forward_none_equals_new_state(variant_model) -> None:
    tokens = _tokens(2)
    torch.testing.assert_close(
        variant_model(tokens)[0], variant_model(tokens, variant_model.new_state(B))[0], **TOL
    )


@torch.no_grad()
def test_continuing_after_full_sequence(variant_model) -> None:
    # The state returned by a whole-sequence call (a light cache for the GPT) can be continued.
    tokens = _tokens(3, steps=T + 4)
    whole, _ = variant_model(tokens)
    first, state = variant_model(tokens[:, :T])
    rest, state = _run_chunks(variant_model, tokens[:, T:], [1, 2, 1], state)
    torch.testing.assert_close(torch.cat([first, rest], dim=1), whole, **TOL)


@torch.no_grad()
def test_left_padded_batch_matches_each_prompt_alone(variant_model) -> None:
    lengths = [5, 2, 8, 1]
    prompts = [_tokens(10 + i, batch=1, steps=n)[0] for i, n in enumerate(lengths)]
    nexts = _tokens(20, batch=len(lengths), steps=2)  # two continuation tokens per row
    width = max(lengths)
    batch = torch.full((len(lengths), width), 7, dtype=torch.long)  # 7 = an arbitrary pad id
    mask = torch.zeros(len(lengths), width, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        batch[row, width - len(prompt) :] = prompt
        mask[row, width - len(prompt) :] = True

    logits, state = variant_model(batch, variant_model.new_state(len(lengths), pad_mask=mask))
    assert torch.isfinite(logits).all()
    step1, state = variant_model(nexts[:, :1], state)
    step2, _ = variant_model(nexts[:, 1:], state)
    for row, prompt in enumerate(prompts):
        alone, alone_state = variant_model(prompt[None])
        torch.testing.assert_close(logits[row, width - len(prompt) :], alone[0], **TOL)
        alone1, alone_state = variant_model(nexts[row : row + 1, :1], alone_state)
        alone2, _ = variant_model(nexts[row : row + 1, 1:], alone_state)
        torch.testing.assert_close(step1[row], alone1[0], **TOL)
        torch.testing.assert_close(step2[row], alone2[0], **TOL)


@torch.no_grad()
def test_left_padded_prompt_in_chunks(variant_model) -> None:
    # The padded prompt may also arrive in pieces (chunked prefill), including all-pad pieces.
    prompt = _tokens(30, batch=1, steps=3)[0]
    batch = torch.cat([torch.zeros(1, 4, dtype=torch.long), prompt[None]], dim=1)
    batch = torch.cat([batch, _tokens(31, batch=1, steps=7)], dim=0)  # a second, unpadded row
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, :4] = False
    whole, _ = variant_model(batch, variant_model.new_state(2, pad_mask=mask))
    chunked, _ = _run_chunks(variant_model, batch, [2, 3, 2], variant_model.new_state(2, mask))
    torch.testing.assert_close(chunked[:, 4:], whole[:, 4:], **TOL)
    torch.testing.assert_close(chunked[1], whole[1], **TOL)
    alone, _ = variant_model(prompt[None])
    torch.testing.assert_close(chunked[0, 4:], alone[0], **TOL)


@torch.no_grad()
def test_select_reorders_rows(variant_model) -> None:
    tokens = _tokens(4, batch=4, steps=6)
    following = _tokens(5, batch=3, steps=3)
    index = torch.tensor([2, 0, 2])  # reorder and repeat, as beam search does
    _, state = variant_model(tokens)
    picked = state.select(index)
    assert picked.batch_size == 3
    continued, _ = variant_model(following, picked)
    reference, _ = variant_model(torch.cat([tokens[index], following], dim=1))
    torch.testing.assert_close(continued, reference[:, -3:], **TOL)


@torch.no_grad()
def test_select_from_preallocated_padded_state(variant_model) -> None:
    tokens = _tokens(6, batch=2, steps=5)
    mask = torch.tensor([[False, False, True, True, True], [True] * 5])
    _, state = variant_model(tokens, variant_model.new_state(2, pad_mask=mask))
    following = _tokens(7, batch=2, steps=2)
    index = torch.tensor([1, 0])
    swapped, _ = variant_model(following, state.select(index))
    # Rebuild the reference: each row alone (row 0 without its padding).
    for out_row, src in enumerate(index.tolist()):
        prompt = tokens[src][mask[src]][None]
        _, alone_state = variant_model(prompt)
        alone, _ = variant_model(following[out_row : out_row + 1], alone_state)
        torch.testing.assert_close(swapped[out_row], alone[0], **TOL)


def test_detach_cuts_the_graph(variant_model) -> None:
    variant_model.train()
    logits, state = variant_model(_tokens(8), variant_model.new_state(B))
    detached = state.detach()
    assert detached.batch_size == B
    more, _ = variant_model(_tokens(9, steps=2), detached)
    more.sum().backward()
    # Had the second backward gone through the first call's graph, that graph would be freed
    # now and this would raise.
    logits.sum().backward()
