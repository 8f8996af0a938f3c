"""The generate command's decoding flags come from GenerationConfig's fields, and every setting is
checked before anything is printed."""

from __future__ import annotations

from dataclasses import fields

import pytest

from rnn2gpt.cli import EXIT_USER_ERROR, build_parser, main
from rnn2gpt.cli.generation_flags import generation_settings
from rnn2gpt.config import GenerationConfig

# Today's flag names (scripts use them): each maps to its GenerationConfig field.
FLAGS = {
    "--max-new-tokens": ("max_new_tokens", "7", 7),
    "--min-new-tokens": ("min_new_tokens", "2", 2),
    "--temperature": ("temperature", "0.5", 0.5),
    "--top-k": ("top_k", "5", 5),
    "--top-p": ("top_p", "0.9", 0.9),
    "--min-p": ("min_p", "0.1", 0.1),
    "--typical-p": ("typical_p", "0.8", 0.8),
    "--repetition-penalty": ("repetition_penalty", "1.2", 1.2),
    "--presence-penalty": ("presence_penalty", "0.5", 0.5),
    "--frequency-penalty": ("frequency_penalty", "0.25", 0.25),
    "--no-repeat-ngram-size": ("no_repeat_ngram_size", "3", 3),
    "--num-beams": ("num_beams", "4", 4),
    "--length-penalty": ("length_penalty", "0.7", 0.7),
    "--num-samples": ("num_return_sequences", "3", 3),
    "--seed": ("seed", "11", 11),
    "--context-policy": ("context_policy", "stop", "stop"),
    "--repetition-guard": ("repetition_guard", "8", 8),
    "--repetition-guard-action": ("repetition_guard_action", "resample", "resample"),
    "--watermark": ("watermark", "k3y", "k3y"),
    "--watermark-gamma": ("watermark_gamma", "0.5", 0.5),
    "--watermark-delta": ("watermark_delta", "1.5", 1.5),
    "--watermark-context": ("watermark_context", "2", 2),
    "--draft-tokens": ("draft_tokens", "6", 6),
    "--prompt-lookup": ("prompt_lookup", "3", 3),
}


@pytest.mark.parametrize("flag", sorted(FLAGS))
def test_each_flag_sets_its_field(flag):
    field, text, value = FLAGS[flag]
    args = build_parser().parse_args(["generate", "DIR", flag, text])
    assert generation_settings(args) == {field: value}


def test_every_flagged_field_has_a_flag_and_unflagged_fields_take_set():
    flagged = {f.metadata["flag"] for f in fields(GenerationConfig) if "flag" in f.metadata}
    assert flagged == set(FLAGS) | {"--stop"}
    args = build_parser().parse_args(
        [
            "generate",
            "DIR",
            "--stop",
            "a\\nb",
            "--stop",
            "c",
            "--greedy",
            "--set",
            "early_stopping=true",
        ]
    )
    assert generation_settings(args) == {
        "stop": ("a\nb", "c"),
        "temperature": 0.0,
        "early_stopping": True,
    }


def test_nothing_given_leaves_the_checkpoints_own_settings():
    assert generation_settings(build_parser().parse_args(["generate", "DIR"])) == {}


def test_a_bad_setting_fails_before_the_prompt_is_printed(tmp_path, capsys):
    from rnn2gpt.checkpoint import save_checkpoint
    from rnn2gpt.config import ModelConfig, RunConfig
    from rnn2gpt.models import build_model
    from rnn2gpt.tokenizers import CharTokenizer

    tokenizer = CharTokenizer.train("ROMEO and JULIET\n")
    config = RunConfig(
        model=ModelConfig(arch="gru", vocab_size=tokenizer.vocab_size, n_layer=1, n_embd=8)
    )
    save_checkpoint(
        tmp_path / "ckpt", model=build_model(config.model), tokenizer=tokenizer, config=config
    )
    assert (
        main(["generate", str(tmp_path / "ckpt"), "--prompt", "ROMEO", "--top-p", "0"])
        == EXIT_USER_ERROR
    )
    out, err = capsys.readouterr()
    assert out == ""  # not even the prompt
    assert err.startswith("error: top_p must be in (0, 1]")
    # A prompt the tokenizer cannot encode fails the same way.
    assert main(["generate", str(tmp_path / "ckpt"), "--prompt", "ROMEO ☃"]) == EXIT_USER_ERROR
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error:")
