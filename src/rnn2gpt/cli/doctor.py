"""``rnn2gpt doctor``: what this CPU offers and which fast paths train and generate will use."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "doctor",
        help="what this CPU offers and which fast paths train and generate will use",
        description="Describe this machine: the CPU and its features, the PyTorch build, which "
        "precision and fast paths `train` and `generate` will use and why, and a short "
        "measurement of matmul GFLOP/s and weight-read GB/s to predict training time. "
        "RNN2GPT_FASTPATHS=off turns every fast path off.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-bench", action="store_true", help="skip the measurement")
    p.add_argument(
        "--bench-seconds",
        type=float,
        default=10.0,
        metavar="S",
        help="how long the measurement runs (default 10)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    from ..api import doctor_report

    report = doctor_report(None if args.no_bench else args.bench_seconds)
    if args.json:
        print(json.dumps(report))
        return 0
    cpu, build = report["cpu"], report["torch"]
    features = ", ".join(f"{name} {'yes' if on else 'no'}" for name, on in cpu["features"].items())
    cap = f", oneDNN capped at {cpu['onednn_isa_cap']}" if cpu["onednn_isa_cap"] else ""
    lines = [
        f"cpu        {cpu['model']}",
        f"features   {features}",
        f"pytorch    {build['version']} at {cpu['capability']}{cap}; "
        f"oneDNN {'yes' if build['onednn'] else 'no'}; {build['threads']} threads",
        f"fastpaths  {report['fastpaths']} (RNN2GPT_FASTPATHS)",
        f"train      precision=auto runs {report['train']['precision_reason']}",
        f"train      kernels: {report['train']['kernels']}",
        f"train      memory: {report['train']['memory']}",
    ]
    lines += [f"generate   {name}: {path}" for name, path in report["generate"].items()]
    bench = report["bench"]
    if bench is not None:
        lines.append(
            f"measured   fp32 matmul {bench['fp32_gflops']:.0f} GFLOP/s, bf16 matmul "
            f"{bench['bf16_gflops']:.0f} GFLOP/s, weight read {bench['weight_read_gbps']:.1f} GB/s"
        )
        lines.append(
            "           training a model of N parameters runs about 6*N FLOPs per token at "
            "about half the matmul rate of its precision"
        )
    print("\n".join(lines))
    return 0
