"""Worker process of the architecture comparison: trains one model, reports its measurements.

``python -m rnn2gpt.experiments.compare.worker JOB.json`` reads the job :func:`runner.run_comparison`
wrote (the model's name and config, its run folder, the generation settings, where to write the
result), runs :func:`runner.run_model` with memory measurement on, and writes the result JSON.
A user error (bad data, bad setting) is written as ``{"error": message}`` and exits with 2, so the
parent can show the one-line message. The module is not imported by ``rnn2gpt.experiments.compare``, so
running it with ``-m`` imports it exactly once.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from ...config import RunConfig
from ...errors import Rnn2GptError
from .runner import run_model


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m rnn2gpt.experiments.compare.worker JOB.json", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    result_file = Path(job["result"])
    logging.basicConfig(level=int(job.get("log_level", logging.INFO)), format="%(message)s")
    try:
        run = run_model(
            job["name"],
            RunConfig.from_dict(job["config"], source=str(argv[0])),
            job["run_dir"],
            prompt=job.get("prompt", ""),
            seed=int(job.get("seed", 0)),
            gen_tokens=int(job.get("gen_tokens", 200)),
            overwrite=bool(job.get("overwrite", False)),
            measure_memory=True,
        )
    except Rnn2GptError as exc:
        result_file.write_text(json.dumps({"error": str(exc)}), encoding="utf-8")
        return 2
    result_file.write_text(json.dumps(run.to_dict(), indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
