"""Fixtures of the server tests: tiny checkpoints of each kind, an app, and a live server."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from rnn2gpt.checkpoint import save_checkpoint
from rnn2gpt.config import ModelConfig, RunConfig, TrainConfig
from rnn2gpt.models import build_model
from rnn2gpt.tokenizers import CharTokenizer, WordTokenizer

TEXT = "ROMEO: o romeo, wherefore art thou romeo?\nJULIET: the quick brown fox.\n"
SHAPES = {
    "gpt": dict(arch="gpt", n_layer=2, n_head=2, n_embd=32, block_size=64),
    "lstm": dict(arch="lstm", n_layer=1, n_embd=32),
}


def save_language_model(folder: Path, arch: str, seed: int = 0) -> Path:
    """An untrained char model saved as ``folder/best`` (a run folder, as training leaves it)."""
    tokenizer = CharTokenizer.train(TEXT)
    torch.manual_seed(seed)
    model_config = ModelConfig(vocab_size=tokenizer.vocab_size, **SHAPES[arch])
    config = RunConfig(model=model_config, train=TrainConfig(threads=1, progress=False))
    save_checkpoint(
        folder / "best", model=build_model(model_config), tokenizer=tokenizer, config=config
    )
    return folder


def save_translator(folder: Path) -> Path:
    tokenizer = WordTokenizer.train("red green blue cat dog runs sleeps\n")
    torch.manual_seed(0)
    model_config = ModelConfig(
        arch="seq2seq-rnn", vocab_size=tokenizer.vocab_size, n_layer=1, n_embd=16
    )
    config = RunConfig(
        model=model_config, train=TrainConfig(task="translation", threads=1, progress=False)
    )
    save_checkpoint(
        folder / "best", model=build_model(model_config), tokenizer=tokenizer, config=config
    )
    return folder


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    return {
        "gpt": save_language_model(root / "tiny-gpt", "gpt"),
        "lstm": save_language_model(root / "tiny-lstm", "lstm", seed=1),
        "mt": save_translator(root / "tiny-mt"),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving an app on 127.0.0.1 in a background thread."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.02)
        assert self.server.started, "the server did not start"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def live():
    """``live(app) -> LiveServer``; every server is stopped at the end of the test."""
    servers = []

    def start(app) -> LiveServer:
        server = LiveServer(app)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
