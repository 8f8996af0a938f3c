"""``rnn2gpt serve``: an OpenAI-compatible HTTP API and a web playground for checkpoints."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve",
        help="serve checkpoints over an OpenAI-compatible HTTP API, with a web playground",
        description="Serve one or more checkpoints: POST /v1/completions (OpenAI's format, "
        "streaming, continuous batching), /v1/translate and /v1/summarize for encoder-decoders, "
        "/tokenize, /detokenize, GET /v1/models, /metrics (Prometheus), /health, and the "
        "playground at /. Needs the server extra: pip install 'rnn2gpt[server]'.",
    )
    p.add_argument("checkpoints", metavar="DIR", nargs="+", help="checkpoint or run folders")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", help="require Authorization: Bearer KEY (all but /health and /)")
    p.add_argument("--max-batch", type=int, default=32, help="slots decoded together (default 32)")
    p.add_argument(
        "--max-queue", type=int, default=128, help="requests that may wait; then 429 (default 128)"
    )
    p.add_argument(
        "--max-tokens", type=int, default=2048, help="the most tokens one request may ask for"
    )
    p.add_argument(
        "--tile",
        type=int,
        metavar="ROWS",
        help="rows computed together per decode step, a divisor of --max-batch (default: "
        "measured per model at start-up); "
        "smaller tiles make a lone request faster on large models, larger ones serve a full "
        "batch faster; results never depend on the load either way",
    )
    p.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="allow browsers on ORIGIN to call the API (repeatable; off by default)",
    )
    p.add_argument(
        "--name",
        action="append",
        metavar="NAME",
        help="a model's name, one per DIR in order (default: its run folder's name)",
    )
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="weights' dtype")
    p.add_argument("--quantize", choices=["int8"], help="int8 weights for the language models")
    return p


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError

    try:
        from ..server import ServerSettings, serve
    except ImportError as exc:
        raise ConfigError(
            f"serving needs the server extra ({exc.name} is missing): pip install 'rnn2gpt[server]'"
        ) from None
    if args.max_batch < 1 or args.max_queue < 0 or args.max_tokens < 1:
        raise ConfigError("--max-batch and --max-tokens must be at least 1, --max-queue at least 0")
    settings = ServerSettings(
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        max_tokens=args.max_tokens,
        tile=args.tile,
        dtype=args.dtype,
        quantize=args.quantize,
    )
    print(f"serving on http://{args.host}:{args.port} (playground at /, API at /v1)", flush=True)
    serve(
        args.checkpoints,
        host=args.host,
        port=args.port,
        names=args.name,
        settings=settings,
        api_key=args.api_key,
        cors_origins=args.cors_origin,
    )
    return 0
