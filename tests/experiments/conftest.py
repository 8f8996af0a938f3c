"""Fixtures of the experiment tests: the analysis tests' tiny corpus."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "analysis"))
from analysis_helpers import tiny_text  # noqa: E402


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(tiny_text(), encoding="utf-8")
    return path
