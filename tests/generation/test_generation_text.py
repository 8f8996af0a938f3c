"""Text: incremental decoding, stop strings across tokens, and streaming == generate."""

from __future__ import annotations

import pytest
from genfakes import EOS, ByteTokenizer, ScriptedLM, TinyRecurrentLM, WordTokenizer

from rnn2gpt.config import GenerationConfig
from rnn2gpt.generation import TextTracker, generate, stream

GREEDY = GenerationConfig(temperature=0.0, max_new_tokens=40)
LO, SPACE_W, E_ACUTE, NI_HEAD = 258, 259, 260, 261  # merged tokens of ByteTokenizer


def scripted(text_tokens: list[int]) -> ScriptedLM:
    """A model that continues the one-token prompt [0] with ``text_tokens`` then eos."""
    return ScriptedLM([0] + text_tokens)


def test_tracker_never_splits_a_character(tokenizer):
    tracker = TextTracker(tokenizer)
    pieces = []
    for token in list("a日".encode()) + [E_ACUTE]:
        tracker.add(token)
        pieces.append(tracker.take())
    assert pieces == ["a", "", "", "日", "é"]
    tracker.add(0xE6)  # a dangling first byte becomes U+FFFD at the end
    assert tracker.take() == ""
    tracker.finish()
    assert tracker.take() == "\ufffd"
    assert tracker.text == "a日é\ufffd"


def test_stop_string_cuts_text_exactly(tokenizer):
    model = scripted(list(b"hello world. more"))
    config = GenerationConfig(temperature=0.0, max_new_tokens=40, stop=(". ",))
    [[result]] = generate(model, [[0]], config, tokenizer=tokenizer)
    assert result.text == "hello world"
    assert result.finish_reason == "stop"
    assert result.token_ids == list(b"hello world")


def test_stop_string_spanning_two_tokens(tokenizer):
    # "hel" + "lo" + " w" + "orld": the stop "o w" starts inside "lo" and ends inside " w"
    model = scripted(list(b"hel") + [LO, SPACE_W] + list(b"orld"))
    config = GenerationConfig(temperature=0.0, max_new_tokens=40, stop=("o w",))
    [[result]] = generate(model, [[0]], config, tokenizer=tokenizer)
    assert result.text == "hell"
    assert result.finish_reason == "stop"
    # kept: the tokens whose text starts before the cut ("lo" starts at 3 < 4)
    assert result.token_ids == list(b"hel") + [LO]
    assert tokenizer.decode(result.token_ids).startswith(result.text)


def test_earliest_of_several_stop_strings(tokenizer):
    model = scripted(list(b"abcdefgh"))
    config = GenerationConfig(temperature=0.0, max_new_tokens=40, stop=("fg", "cd", "zz"))
    [[result]] = generate(model, [[0]], config, tokenizer=tokenizer)
    assert result.text == "ab" and result.token_ids == list(b"ab")


def test_stop_strings_in_a_batch_end_rows_independently(tokenizer):
    model = ScriptedLM(list(b"xab;cd;ef"))
    config = GenerationConfig(temperature=0.0, max_new_tokens=40, stop=(";",))
    results = generate(model, [list(b"x"), list(b"xab;c")], config, tokenizer=tokenizer)
    assert [r[0].text for r in results] == ["ab", "d"]
    assert [r[0].finish_reason for r in results] == ["stop", "stop"]


def test_stop_strings_with_beams(tokenizer):
    model = scripted(list(b"one, two"))
    config = GenerationConfig(
        temperature=0.0, num_beams=2, num_return_sequences=2, max_new_tokens=20, stop=(",",)
    )
    [[best, _]] = generate(model, [[0]], config, tokenizer=tokenizer)
    assert best.text == "one" and best.finish_reason == "stop" and best.token_ids == list(b"one")


def collect(model, prompt, config, tokenizer, **kw) -> list[str]:
    return list(stream(model, prompt, config, tokenizer=tokenizer, **kw))


def test_stream_multibyte_split_across_tokens(tokenizer):
    text_tokens = list(b"caf") + [E_ACUTE, 0x20, NI_HEAD, 0xA5] + list("本".encode()) + [0x21]
    model = scripted(text_tokens)
    pieces = collect(model, [0], GREEDY, tokenizer)
    [[result]] = generate(model, [[0]], GREEDY, tokenizer=tokenizer)
    assert result.text == "café 日本!"
    assert "".join(pieces) == result.text
    assert all("\ufffd" not in p for p in pieces)
    assert "日" in pieces and "本" in pieces  # each arrives whole, once complete


def test_stream_holds_back_a_possible_stop_string(tokenizer):
    model = scripted(list(b"ab<x<stop>cd"))
    config = GenerationConfig(temperature=0.0, max_new_tokens=40, stop=("<stop>",))
    pieces = collect(model, [0], config, tokenizer)
    assert "".join(pieces) == "ab<x"
    assert all("<s" not in p for p in pieces)
    [[result]] = generate(model, [[0]], config, tokenizer=tokenizer)
    assert result.text == "ab<x"
    # a held-back partial match is released when the text ends without completing it
    model = scripted(list(b"ab<st") + [EOS])
    assert "".join(collect(model, [0], config, tokenizer)) == "ab<st"


@pytest.mark.parametrize(
    "config",
    [
        GenerationConfig(temperature=0.0, max_new_tokens=30),
        GenerationConfig(temperature=1.0, max_new_tokens=30, seed=11),
        GenerationConfig(temperature=0.9, top_p=0.9, max_new_tokens=30, seed=5, stop=("c", "\n")),
        GenerationConfig(temperature=0.0, num_beams=3, max_new_tokens=10),
    ],
    ids=["greedy", "sample", "sample-stop", "beam"],
)
def test_stream_concatenates_to_generate_text(config):
    tokenizer = ByteTokenizer()
    # Mostly letters, spaces, newlines and the pieces of "é" and "日" split across tokens.
    readable = list(b"abcde \n") + [E_ACUTE, NI_HEAD, 0xA5]
    model = TinyRecurrentLM(seed=4, favour=readable).eval()
    prompt = list("Hé".encode())
    pieces = collect(model, prompt, config, tokenizer)
    [[result]] = generate(model, [prompt], config, tokenizer=tokenizer)
    assert "".join(pieces) == result.text
    if config.num_beams == 1:
        assert all(pieces)
    if config.stop:
        assert result.finish_reason == "stop"


def test_word_tokenizer_text_joins_with_the_prompt():
    tokenizer = WordTokenizer(["the", "cat", "sat", "on", "mat"])
    model = ScriptedLM(
        tokenizer.encode("the cat sat on the mat") + [tokenizer.eos_id], vocab_size=6
    )
    prompt = tokenizer.encode("the cat")
    [[result]] = generate(model, [prompt], GREEDY, tokenizer=tokenizer)
    assert result.text == " sat on the mat"  # prompt text + text reads as the whole
    assert result.finish_reason == "eos"
    assert "".join(stream(model, prompt, GREEDY, tokenizer=tokenizer)) == result.text
