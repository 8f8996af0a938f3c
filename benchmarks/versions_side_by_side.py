"""Two versions of rnn2gpt side by side on this machine: training and generation speed.

Each contender is a source tree (``--old SRC`` and ``--new SRC``, each the ``src`` folder of a
checkout); every measurement runs in a fresh process with that tree first on ``PYTHONPATH``, and
the two alternate round by round, so a slow moment of the host hits both alike. Per round and
tree, for a GPT (nanoGPT's CPU size: 4L/4H/128, block 64, batch 12) and an LSTM (2x256, batch 16
x 128):

- training: ``rnn2gpt train`` on the bundled Tiny Shakespeare for ``--steps`` steps in fp32 (the
  precision forced, so both versions run the same kernels), its tokens/s as the trainer reports;
- generation: 256 new tokens at batch 1 from the trained checkpoint, loaded as ``rnn2gpt.load``
  prepares it, tokens/s of the best of 3.

    python benchmarks/versions_side_by_side.py --old /tmp/old/src --new src [--rounds 3]

Make the old tree with ``git worktree add /tmp/old <commit>``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

MODELS = {
    "gpt": [
        "model.arch=gpt",
        "model.n_layer=4",
        "model.n_head=4",
        "model.n_embd=128",
        "model.block_size=64",
        "train.batch_size=12",
        "train.seq_len=64",
    ],
    "lstm": [
        "model.arch=lstm",
        "model.n_layer=2",
        "model.n_embd=256",
        "train.batch_size=16",
        "train.seq_len=128",
    ],
}

CHILD = r"""
import json, sys, time, logging
logging.disable(logging.WARNING)
import torch
import rnn2gpt
from rnn2gpt import api
out, steps, settings = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
result = api.train(out=out, max_steps=steps, overwrite=True,
                   overrides=settings + ["train.precision=fp32", "train.eval_interval=100000",
                                         "train.eval_batches=1", "train.progress=false"])
gen = rnn2gpt.load(out)
ids = gen.encode_prompt("ROMEO:")
best = None
for _ in range(3):
    start = time.perf_counter()
    g = gen.complete(["ROMEO:"], max_new_tokens=256, temperature=0.0, stop_at_eos=False)[0][0]
    seconds = time.perf_counter() - start
    best = seconds if best is None else min(best, seconds)
print(json.dumps({"train_tokens_per_sec": result.tokens_per_sec,
                  "gen_tokens_per_sec": len(g.token_ids) / best,
                  "module": rnn2gpt.__file__}))
"""


def measure(src: Path, model: str, steps: int, work: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src.resolve()))
    completed = subprocess.run(
        [sys.executable, "-c", CHILD, str(work / "run"), str(steps), json.dumps(MODELS[model])],
        env=env,
        cwd=work,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise SystemExit(f"{src}: {completed.stderr[-2000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert Path(result["module"]).resolve().is_relative_to(src.resolve()), result["module"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True)
    parser.add_argument("--new", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    results: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.rounds):
            for model in MODELS:
                for name, src in (("old", args.old), ("new", args.new)):
                    work = Path(tmp) / f"{name}-{model}-{round_index}"
                    work.mkdir()
                    results.setdefault((model, name), []).append(
                        measure(src, model, args.steps, work)
                    )
    print(
        f"{'model':<6} {'what':<20} {'old (median, range)':>26} {'new (median, range)':>26} {'new/old':>8}"
    )
    for model in MODELS:
        for key, label in (
            ("train_tokens_per_sec", "train tokens/s"),
            ("gen_tokens_per_sec", "generate tokens/s"),
        ):
            cells = []
            for name in ("old", "new"):
                values = [r[key] for r in results[(model, name)]]
                median = statistics.median(values)
                cells.append((median, f"{median:,.0f} ({min(values):,.0f}-{max(values):,.0f})"))
            ratio = cells[1][0] / cells[0][0]
            print(f"{model:<6} {label:<20} {cells[0][1]:>26} {cells[1][1]:>26} {ratio:>8.3f}")


if __name__ == "__main__":
    main()
