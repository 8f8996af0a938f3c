"""Settings shared by the whole test suite."""

from __future__ import annotations

import os

import pytest
import torch

# Nothing in the tests may reach the network (the Hugging Face hub included).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one intra-op thread; with two, spin-waiting OpenMP threads on a
    shared 2-core machine can make each tiny op hundreds of times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
