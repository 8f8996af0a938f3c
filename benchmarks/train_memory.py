"""Page faults of CPU training steps, with and without ``training/memory.py``'s hold on freed
memory, in separate processes run in alternating pairs (glibc's setting is process-wide and cannot
be undone, so the two cannot alternate inside one process).

Each process runs ``rnn2gpt train --preset PRESET`` for ``--steps`` steps with evaluation pushed
past the run, times every ``_step`` (its loss read back) and counts its page faults
(``getrusage``), and reports the medians after the first fifth. ``default`` replaces
``hold_freed_memory`` with a no-op, so glibc keeps its own thresholds.

    python benchmarks/train_memory.py [--pairs 3] [--preset shakespeare-char-lstm --steps 50]
        [-- extra rnn2gpt train arguments, e.g. --data-dir ../shared/data/ptb]

Benchmark one job at a time: two on two cores slow each other far more than 2x.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

# Runs inside each child process: argv = mode, preset, steps, extra arguments.
CHILD = """
import json, resource, statistics, sys, tempfile, time
mode, preset, steps, extra = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
from rnn2gpt.cli import main as cli
from rnn2gpt.training import setup, trainer
if mode == "default":
    setup.hold_freed_memory = lambda: False
times, faults, real = [], [], trainer.Trainer._step
def step(self):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    loss = real(self)
    loss.item()
    times.append(time.perf_counter() - start)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return loss
trainer.Trainer._step = step
with tempfile.TemporaryDirectory() as out:
    cli(["train", "--preset", preset, "--out", out + "/run", "--set", f"train.max_steps={steps}",
         "--set", "train.eval_interval=1000000", "--set", "train.eval_batches=1",
         "--set", "train.progress=false", *extra])
skip = max(3, steps // 5)
print("RESULT " + json.dumps({"ms": statistics.median(times[skip:]) * 1e3,
                              "faults": statistics.median(faults[skip:])}))
"""


def run(mode: str, preset: str, steps: int, extra: list[str]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, preset, str(steps), *extra],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="shakespeare-char-lstm")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--pairs", type=int, default=3)
    args, extra = parser.parse_known_args()
    extra = [word for word in extra if word != "--"]
    rows = []
    for pair in range(1, args.pairs + 1):
        default = run("default", args.preset, args.steps, extra)
        held = run("hold", args.preset, args.steps, extra)
        rows.append((pair, default, held))
        print(
            f"| {args.preset} | {pair} | {default['faults']:,.0f} | {held['faults']:,.0f} "
            f"| {default['ms']:.1f} ms | {held['ms']:.1f} ms | {default['ms'] / held['ms']:.3f}x |",
            flush=True,
        )
    ratios = [d["ms"] / h["ms"] for _, d, h in rows]
    print(f"median speedup {statistics.median(ratios):.3f}x over {len(rows)} pairs")


if __name__ == "__main__":
    main()
