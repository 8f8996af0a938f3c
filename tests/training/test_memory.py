"""training/memory.py: freed blocks stay in the process, so a step does not fault them back in."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# A 40 MiB block: above glibc's largest adaptive mmap threshold (32 MiB), so by default every
# allocation of it is a fresh mmap, faulted in page by page when written.
_PROBE = """
import resource, sys
import torch
from rnn2gpt.training.memory import hold_freed_memory
held = hold_freed_memory() if sys.argv[1] == "hold" else None
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.ones(10 << 20)  # 40 MiB, written
    del block
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(held, *faults[1:])
"""


glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="mallopt thresholds need glibc (Linux); elsewhere hold_freed_memory returns False",
)


def _faults_of_blocks_again(mode: str) -> tuple[str, list[int]]:
    """Page faults of four more allocations of the block after its first."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], [int(word) for word in out[1:]]


@glibc_only
def test_a_freed_block_is_reused_without_page_faults():
    held, faults = _faults_of_blocks_again("hold")
    assert held == "True"
    # 40 MiB is 10,240 pages of 4 KiB. Now and then glibc cannot grow the heap in place and
    # moves its top elsewhere (fresh pages once); most allocations reuse the freed block.
    assert sum(count < 500 for count in faults) >= 3, faults


@glibc_only
def test_without_it_the_same_block_is_faulted_in_again():
    held, faults = _faults_of_blocks_again("default")
    assert held == "None"
    assert all(count > 5000 for count in faults), faults


def test_it_is_set_once_and_answers_the_same(monkeypatch):
    from rnn2gpt.training import memory

    calls = []
    monkeypatch.setattr(memory, "_held", None)
    monkeypatch.setattr(memory, "_set_glibc_thresholds", lambda: calls.append(1) or False)
    assert memory.hold_freed_memory() is False
    assert memory.hold_freed_memory() is False
    assert calls == [1]


def test_cpu_training_sets_it(tmp_path, make_run_config, monkeypatch):
    from rnn2gpt.training import setup, train

    calls = []
    monkeypatch.setattr(setup, "hold_freed_memory", lambda: calls.append(1) or True)
    train(make_run_config("gpt", max_steps=2, eval_interval=2), tmp_path / "run")
    assert calls == [1]


def test_doctor_names_the_policy(monkeypatch):
    from rnn2gpt.training import memory

    monkeypatch.setattr(memory, "_held", None)
    monkeypatch.setattr(memory, "_is_glibc", lambda: True)
    assert "stay in the process" in memory.policy()
    monkeypatch.setattr(memory, "_is_glibc", lambda: False)
    assert "own allocation policy" in memory.policy()
    monkeypatch.setattr(memory, "_is_glibc", lambda: True)
    monkeypatch.setattr(memory, "_held", False)  # glibc, but mallopt refused
    assert "own allocation policy" in memory.policy()
