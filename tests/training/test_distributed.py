"""DDP training under torchrun (gloo on CPU), and the single-process fallbacks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from rnn2gpt.checkpoint import load_checkpoint
from rnn2gpt.training.distributed import (
    DistContext,
    any_rank,
    mean_over_ranks,
    setup_distributed,
    wrap_model,
)

SCRIPT = """
import gc, json, sys
from torch.distributed import is_initialized
from torch.nn.parallel import DistributedDataParallel
from rnn2gpt.config import RunConfig
from rnn2gpt.training import train
result = train(RunConfig.from_dict(json.loads(sys.argv[1])), sys.argv[2])
# Nothing still holds the process group once train() is back (gloo's threads are joined then,
# not at interpreter shutdown): the group is left and no DDP model outlives the run.
leftover = sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())
# One write per line: with PYTHONUNBUFFERED, print() writes each piece apart, and the two ranks'
# pieces would interleave.
sys.stdout.write(f"LEFT {int(is_initialized())} {leftover}\\n")
sys.stdout.write(f"RESULT {result.steps} {result.tokens} {result.best_val_loss}\\n")
sys.stdout.flush()
"""


def test_single_process_helpers_are_plain(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = setup_distributed()
    assert not ctx.enabled and ctx.is_main and ctx.world_size == 1
    model = torch.nn.Linear(2, 2)
    assert wrap_model(model, ctx) is model
    assert mean_over_ranks(1.5, ctx) == 1.5
    assert any_rank([True, False], DistContext()) == [True, False]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt", "lstm", "lstm-adaptive"])
def test_two_process_gloo_training(tmp_path, make_run_config, arch):
    # lstm-adaptive: a word LSTM with an adaptive softmax, whose loss comes through
    # forward(..., targets=) and its hand-written backward, under DDP's gradient hooks.
    extra = {}
    if arch == "lstm-adaptive":
        arch, extra = "lstm", {"tokenizer": "word", "model": {"adaptive_cutoffs": (8,)}}
    config = make_run_config(arch, max_steps=12, eval_interval=6, log_interval=3, **extra)
    script = tmp_path / "run_ddp.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            json.dumps(config.to_dict()),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [line.split() for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert len(results) == 2, proc.stdout + proc.stderr[-4000:]  # both ranks finished...
    assert results[0] == results[1]  # ...and agree on steps, tokens and the best loss
    left = [line.split() for line in proc.stdout.splitlines() if line.startswith("LEFT")]
    assert left == [["LEFT", "0", "0"]] * 2, proc.stdout
    if not extra:  # (the word corpus's short stream ends passes with partial batches)
        assert int(results[0][2]) == 12 * 4 * 16 * 2  # each of 2 ranks draws its own batches
    best = load_checkpoint(out / "best")
    assert best.trainer_state["world_size"] == 2
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert sum(json.loads(line)["event"] == "eval" for line in lines) == 2  # rank 0 logs alone
