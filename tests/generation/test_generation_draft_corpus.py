"""The draft corpus: prompts spread over a text, each followed by the target's own greedy
continuation from the one decoding loop."""

from __future__ import annotations

import pytest
from genfakes import ScriptedLM

from rnn2gpt.config import GenerationConfig
from rnn2gpt.generation import generate
from rnn2gpt.generation.draft_corpus import spread_prompts, target_documents
from rnn2gpt.tokenizers.char import CharTokenizer

LINES = "".join(f"line {i:03d} of the text\n" for i in range(100))


def test_prompts_start_lines_spread_evenly_over_the_text():
    prompts = spread_prompts(LINES, 10, 8)
    assert len(prompts) == 10 and all(len(p) == 8 for p in prompts)
    # Every line starts with "line NNN". The 99 line starts after the first line, picked evenly
    # over all of them (to the end of the text, not only its first part).
    numbers = [int(p[5:8]) for p in prompts]
    assert numbers == [1 + i * 99 // 10 for i in range(10)] and numbers[-1] == 90


def test_prompts_of_a_text_without_enough_lines_start_at_even_offsets():
    text = "abcdefghij" * 20  # 200 characters, no newline
    prompts = spread_prompts(text, 5, 10)
    assert len(prompts) == 5 and all(len(p) == 10 for p in prompts)
    offsets = [i * (191 // 5) for i in range(5)]
    assert prompts == [text[o : o + 10] for o in offsets]


def test_prompts_never_run_past_the_text_and_a_short_text_gives_none():
    assert spread_prompts("short", 3, 10) == []
    prompts = spread_prompts(LINES, 1000, 30)
    assert len(prompts) <= 1000 and all(len(p) == 30 for p in prompts)
    with pytest.raises(ValueError):
        spread_prompts(LINES, 0, 8)


def test_documents_are_prompts_and_the_greedy_continuations_batched_or_not():
    tokenizer = CharTokenizer.train("abc \n")
    script = tokenizer.encode("cab cab cab")
    model = ScriptedLM(script, vocab_size=tokenizer.vocab_size).eval()
    config = GenerationConfig(temperature=0.0, max_new_tokens=5)
    prompts = ["ab", "ba", "cc"]
    seen = []
    batched = target_documents(
        model, tokenizer, prompts, config, batch_size=2, progress=lambda d, t: seen.append((d, t))
    )
    alone = [
        p + tokenizer.decode(generate(model, [tokenizer.encode(p)], config)[0][0].token_ids)
        for p in prompts
    ]
    assert batched.documents == alone and batched.generated == 15 and batched.skipped == 0
    assert seen == [(2, 3), (3, 3)]


def test_a_prompt_the_tokenizer_cannot_encode_is_skipped_and_counted():
    tokenizer = CharTokenizer.train("abc \n")
    model = ScriptedLM(tokenizer.encode("abcabc"), vocab_size=tokenizer.vocab_size).eval()
    config = GenerationConfig(temperature=0.0, max_new_tokens=2)
    written = target_documents(model, tokenizer, ["ab", "xy", "ca"], config)
    assert len(written.documents) == 2 and written.skipped == 1
    assert [d[:2] for d in written.documents] == ["ab", "ca"]
