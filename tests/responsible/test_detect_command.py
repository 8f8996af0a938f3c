"""``generate --watermark`` -> ``detect``, the API, and the server's ``watermark`` extension."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import rnn2gpt
from rnn2gpt.checkpoint import save_checkpoint
from rnn2gpt.cli import EXIT_USER_ERROR, main
from rnn2gpt.config import ModelConfig, RunConfig, TrainConfig
from rnn2gpt.models import build_model
from rnn2gpt.tokenizers import CharTokenizer

KEY = "s3cret-key"
TEXT = "ROMEO: o romeo, wherefore art thou romeo?\nJULIET: the quick brown fox jumps.\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """An untrained char GPT (near-uniform next-token distributions: high entropy)."""
    folder = tmp_path_factory.mktemp("wm") / "tiny"
    tokenizer = CharTokenizer.train(TEXT)
    torch.manual_seed(0)
    shape = ModelConfig(
        arch="gpt",
        vocab_size=tokenizer.vocab_size,
        n_layer=1,
        n_head=2,
        n_embd=16,
        block_size=512,
    )
    config = RunConfig(model=shape, train=TrainConfig(threads=1, progress=False))
    save_checkpoint(folder / "best", model=build_model(shape), tokenizer=tokenizer, config=config)
    return folder


def _generate(run_dir, capsys, *extra) -> str:
    code = main(
        [
            "generate",
            str(run_dir),
            "--prompt",
            "ROMEO:",
            "--max-new-tokens",
            "300",
            "--seed",
            "1",
            "--temperature",
            "1",
            "--json",
            *extra,
        ]
    )
    assert code == 0
    return json.loads(capsys.readouterr().out)["text"]


def _detect(run_dir, capsys, file, *extra) -> dict:
    assert main(["detect", str(run_dir), "--key", KEY, "--input", str(file), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_generate_with_a_key_then_detect(run_dir, tmp_path, capsys):
    marked = tmp_path / "marked.txt"
    marked.write_text("ROMEO:" + _generate(run_dir, capsys, "--watermark", KEY), encoding="utf-8")
    plain = tmp_path / "plain.txt"
    plain.write_text("ROMEO:" + _generate(run_dir, capsys), encoding="utf-8")

    found = _detect(
        run_dir, capsys, marked, "--prompt", "ROMEO:", "--html", str(tmp_path / "v.html")
    )
    assert set(found) >= {"tokens", "green", "z_score", "p_value", "watermarked"}
    assert isinstance(found["tokens"], int) and isinstance(found["green"], int)
    assert found["watermarked"] is True and found["z_score"] >= 4 and found["p_value"] < 1e-4
    assert not _detect(run_dir, capsys, plain, "--prompt", "ROMEO:")["watermarked"]
    assert not _detect(run_dir, capsys, marked.with_name("marked.txt"), "--key", "another key")[
        "watermarked"
    ]
    page = (tmp_path / "v.html").read_text(encoding="utf-8")
    assert "#b7e4b0" in page and "#f4b6b6" in page  # green and red tokens
    assert 'class="prompt"' in page and KEY not in page

    # the prompt is context only: it is not counted
    with_prompt = rnn2gpt.detect_watermark(
        str(run_dir), marked.read_text()[6:], KEY, prompt="ROMEO:"
    )
    whole = rnn2gpt.detect_watermark(str(run_dir), marked.read_text(), KEY)
    assert len(with_prompt.pieces) == len(whole.pieces) - 6


def test_detect_reports_text_outside_the_vocabulary_and_needs_a_key(run_dir, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("the $100 fox, 7 times the fox", encoding="utf-8")
    verdict = rnn2gpt.detect_watermark(str(run_dir), text.read_text(), KEY)
    assert verdict.dropped == 5  # $, 1, 0, 0, 7
    assert main(["detect", str(run_dir), "--input", str(text)]) == EXIT_USER_ERROR
    assert "--key" in capsys.readouterr().err
    assert main(["detect", str(run_dir), "--key", KEY, "--input", str(tmp_path / "none")]) == 2


def test_the_server_watermarks_on_request(run_dir):
    from fastapi.testclient import TestClient

    from rnn2gpt.server import ServerSettings, create_app

    app = create_app([str(run_dir)], settings=ServerSettings(max_batch=2, max_tokens=300))
    try:
        with TestClient(app) as client:
            body = {"prompt": "ROMEO:", "max_tokens": 300, "seed": 2, "temperature": 1.0}
            marked = client.post(
                "/v1/completions", json={**body, "watermark": {"key": KEY, "delta": 2.0}}
            )
            plain = client.post("/v1/completions", json=body)
            bad = client.post("/v1/completions", json={**body, "watermark": {"key": ""}})
    finally:
        for host in app.state.hosts.values():
            host.close()
    assert marked.status_code == plain.status_code == 200 and bad.status_code == 400
    text = marked.json()["choices"][0]["text"]
    assert rnn2gpt.detect_watermark(str(run_dir), text, KEY, prompt="ROMEO:").detection.watermarked
    other = plain.json()["choices"][0]["text"]
    assert not rnn2gpt.detect_watermark(
        str(run_dir), other, KEY, prompt="ROMEO:"
    ).detection.watermarked
