"""Settings and prompts that cannot be decoded raise ConfigError with a clear message."""

from __future__ import annotations

import pytest

from rnn2gpt.config import GenerationConfig
from rnn2gpt.errors import ConfigError
from rnn2gpt.generation import generate, stream


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(temperature=-1.0), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_k=-2), "top_k"),
        (dict(min_p=1.0), "min_p"),
        (dict(typical_p=1.5), "typical_p"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(min_new_tokens=5, max_new_tokens=2), "min_new_tokens"),
        (dict(num_beams=0), "num_beams"),
        (dict(num_beams=2, num_return_sequences=3), "num_return_sequences"),
        (dict(context_policy="wrap"), "context_policy"),
        (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size"),
        (dict(logit_bias=((9999, 1.0),)), "outside the vocabulary"),
        (dict(stop=("",)), "empty string"),
    ],
)
def test_bad_settings(recurrent, tokenizer, settings, message):
    config = GenerationConfig(**settings)
    with pytest.raises(ConfigError, match=message):
        generate(recurrent, [[1, 2]], config, tokenizer=tokenizer)
    if "num_return_sequences" not in settings:
        with pytest.raises(ConfigError, match=message):
            list(stream(recurrent, [1, 2], config, tokenizer=tokenizer))


def test_text_settings_need_a_tokenizer(recurrent):
    with pytest.raises(ConfigError, match="tokenizer"):
        generate(recurrent, [[1]], GenerationConfig(stop=("x",)))
    with pytest.raises(ConfigError, match="tokenizer"):
        generate(recurrent, [[1]], GenerationConfig(bad_words=("x",)))


def test_bad_prompts_and_requests(recurrent, tokenizer):
    with pytest.raises(ConfigError, match="empty"):
        generate(recurrent, [[1], []], GenerationConfig())
    with pytest.raises(ConfigError, match="vocabulary"):
        generate(recurrent, [[1, 100000]], GenerationConfig())
    with pytest.raises(ConfigError, match="vocabulary"):
        generate(recurrent, [[-3]], GenerationConfig())
    with pytest.raises(ConfigError, match="logprobs"):
        generate(recurrent, [[1]], GenerationConfig(), logprobs=-1)
    with pytest.raises(ConfigError, match="num_return_sequences=1"):
        list(stream(recurrent, [1], GenerationConfig(num_return_sequences=2), tokenizer=tokenizer))
    assert generate(recurrent, [], GenerationConfig()) == []
