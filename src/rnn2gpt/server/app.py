"""The HTTP layer: FastAPI routes that translate requests for the models a server holds.

It never decodes by itself: completions go to each language model's scheduler
(:mod:`rnn2gpt.generation.scheduler`), translations and summaries to the encoder-decoder's runner.
Every limit answers with a status code and OpenAI's error body
(``{"error": {"message", "type", "param", "code"}}``): 400 for a request the model cannot take,
401 without the API key, 404 for an unknown model, 429 with ``Retry-After`` when the queue is
full. No input gives a 5xx.

Routes: ``GET /health``, ``GET /v1/models``, ``POST /v1/completions`` (streaming with SSE),
``POST /v1/translate``, ``POST /v1/summarize``, ``POST /tokenize``, ``POST /detokenize``,
``GET /metrics`` (Prometheus), the OpenAPI schema (``/openapi.json``, ``/docs``) and the
playground at ``/``.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import ConfigError, Rnn2GptError
from . import completions
from .hosts import Host, ServerSettings, load_hosts
from .metrics import ServerMetrics
from .schemas import (
    MAX_INPUTS,
    CompletionRequest,
    CompletionResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    ErrorBody,
    ModelList,
    Seq2SeqRequest,
    Seq2SeqResponse,
    TokenizeRequest,
    TokenizeResponse,
    error_body,
)

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
# What anyone may fetch without the API key: the health check and the playground's own files.
_PUBLIC = {"/health", "/", "/static/app.js", "/static/style.css", "/favicon.ico"}
_ERRORS = {
    400: {"model": ErrorBody, "description": "a request the model cannot take"},
    401: {"model": ErrorBody, "description": "missing or wrong API key"},
    404: {"model": ErrorBody, "description": "unknown model"},
    429: {"model": ErrorBody, "description": "the queue is full; retry after Retry-After s"},
}


class ApiError(Exception):
    """An answer other than 200, with OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.param, self.code = status, kind, param, code
        self.headers = headers or {}


def create_app(
    directories: Sequence[str] = (),
    *,
    names: Sequence[str] | None = None,
    settings: ServerSettings | None = None,
    api_key: str | None = None,
    cors_origins: Sequence[str] = (),
    hosts: dict[str, Host] | None = None,
) -> FastAPI:
    """A server for the checkpoints in ``directories`` (named after their run folders, or
    ``names``). Models are loaded before the app is returned, so a bad checkpoint fails here."""
    settings = settings or ServerSettings()
    metrics = ServerMetrics()
    hosts = hosts if hosts is not None else load_hosts(directories, names, settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        for host in hosts.values():
            host.close()

    app = FastAPI(
        title="rnn2gpt",
        version=__version__,
        description="OpenAI-compatible completions with continuous batching, translation and "
        "summarization, for models trained with rnn2gpt.",
        lifespan=lifespan,
    )
    app.state.hosts = hosts
    app.state.metrics = metrics
    app.state.settings = settings
    app.add_middleware(GuardAndCount, api_key=api_key, metrics=metrics)
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
        )

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return _error_response(exc)

    @app.exception_handler(Rnn2GptError)
    async def user_error(request: Request, exc: Rnn2GptError):
        return _error_response(ApiError(400, str(exc), "invalid_request_error"))

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = [str(p) for p in first.get("loc", ()) if p != "body"]
        message = first.get("msg", "invalid request")
        param = ".".join(where) or None
        text = f"{param}: {message}" if param else message
        return _error_response(ApiError(400, text, "invalid_request_error", param=param))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return _error_response(ApiError(exc.status_code, str(exc.detail), kind))

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception):  # a bug: say so, keep the server up
        logger.exception("unexpected error on %s", request.url.path)
        return _error_response(ApiError(500, f"internal error: {exc}", "server_error"))

    def host_for(model: str | None, capability: str) -> Host:
        if model is None:
            able = [h for h in hosts.values() if capability in h.capabilities]
            if len(able) == 1:
                return able[0]
            raise ApiError(
                400,
                f"name the model: one of {', '.join(hosts)}",
                "invalid_request_error",
                param="model",
            )
        host = hosts.get(model)
        if host is None:
            raise ApiError(
                404,
                f"no model {model!r}; this server has {', '.join(hosts)}",
                "invalid_request_error",
                param="model",
                code="model_not_found",
            )
        if capability not in host.capabilities:
            can = ", ".join(sorted(host.capabilities - {"tokenize"}))
            raise ApiError(
                400,
                f"model {model!r} does not do {capability} (it does {can})",
                "invalid_request_error",
                param="model",
            )
        return host

    @app.get("/health", tags=["server"])
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": len(hosts)}

    @app.get("/v1/models", response_model=ModelList, tags=["openai"], responses=_ERRORS)
    async def list_models() -> ModelList:
        return ModelList(data=[host.card() for host in hosts.values()])

    @app.post(
        "/v1/completions",
        response_model=CompletionResponse,
        tags=["openai"],
        responses={**_ERRORS, 200: {"description": "a completion, or an SSE stream of chunks"}},
    )
    async def create_completion(body: CompletionRequest, request: Request):
        host = host_for(body.model, "completions")
        try:
            job = completions.start_job(host, body, settings)
        except completions.TooBusy as exc:
            raise ApiError(
                429,
                f"the server is busy ({exc}); retry shortly",
                "rate_limit_error",
                code="queue_full",
                headers={"Retry-After": "1"},
            ) from None
        metrics.prompt_tokens.labels(model=host.name).inc(job.prompt_tokens)
        if body.stream:
            return StreamingResponse(
                completions.stream(job, request.is_disconnected),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            result = await completions.collect(job, request.is_disconnected)
        finally:
            job.cancel()
        if result is None:
            return Response(status_code=499)  # the client is gone; nobody reads this
        return JSONResponse(result)

    async def seq2seq(body: Seq2SeqRequest, capability: str, kind: str) -> Seq2SeqResponse:
        host = host_for(body.model, capability)
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        if not texts or len(texts) > MAX_INPUTS:
            raise ApiError(
                400, f"give 1 to {MAX_INPUTS} input texts", "invalid_request_error", param="input"
            )
        from ..tasks import run_seq2seq

        def run() -> list[str]:
            with host.lock:  # one beam batch at a time per model
                return run_seq2seq(
                    host.engine,
                    texts,
                    task=host.config.train.task,
                    num_beams=body.num_beams,
                    max_new_tokens=body.max_tokens,
                    length_penalty=body.length_penalty,
                )

        outputs = await run_in_threadpool(run)
        return Seq2SeqResponse(object=kind, model=host.name, outputs=outputs)

    @app.post("/v1/translate", response_model=Seq2SeqResponse, tags=["seq2seq"], responses=_ERRORS)
    async def translate(body: Seq2SeqRequest) -> Seq2SeqResponse:
        """Translate each input with a translation checkpoint (beam search, 5 beams unless told)."""
        return await seq2seq(body, "translate", "translation")

    @app.post("/v1/summarize", response_model=Seq2SeqResponse, tags=["seq2seq"], responses=_ERRORS)
    async def summarize(body: Seq2SeqRequest) -> Seq2SeqResponse:
        """Summarize each input with a summarization checkpoint (4 beams, 64 tokens unless told)."""
        return await seq2seq(body, "summarize", "summary")

    @app.post("/tokenize", response_model=TokenizeResponse, tags=["tokens"], responses=_ERRORS)
    async def tokenize(body: TokenizeRequest) -> TokenizeResponse:
        host = host_for(body.model, "tokenize")
        ids = host.tokenizer.encode(body.prompt)
        return TokenizeResponse(tokens=ids, count=len(ids), max_model_len=host.context)

    @app.post("/detokenize", response_model=DetokenizeResponse, tags=["tokens"], responses=_ERRORS)
    async def detokenize(body: DetokenizeRequest) -> DetokenizeResponse:
        host = host_for(body.model, "tokenize")
        vocab = host.tokenizer.vocab_size
        bad = [t for t in body.tokens if not 0 <= t < vocab]
        if bad:
            raise ConfigError(f"token {bad[0]} is outside the vocabulary (0..{vocab - 1})")
        return DetokenizeResponse(prompt=host.tokenizer.decode(body.tokens))

    @app.get("/metrics", tags=["server"], response_class=Response)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)  # no icon, and no error in the browser's console

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> FileResponse:
        if name not in ("app.js", "style.css"):
            raise ApiError(404, f"no file {name}", "not_found_error")
        return FileResponse(STATIC / name)

    return app


class GuardAndCount:
    """ASGI middleware: the API key check (401) and the request counter by endpoint and status.

    Plain ASGI rather than ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware wraps
    streaming responses in a way that can make a connected client look disconnected, which
    would cancel its stream.
    """

    def __init__(self, app: Any, *, api_key: str | None, metrics: ServerMetrics) -> None:
        self.app, self.api_key, self.metrics = app, api_key, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if self.api_key and path not in _PUBLIC and scope["method"] != "OPTIONS":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, f"Bearer {self.api_key}".encode()):
                response = _error_response(
                    ApiError(
                        401,
                        "a valid API key is needed: Authorization: Bearer KEY",
                        "authentication_error",
                        code="invalid_api_key",
                    )
                )
                self.metrics.requests.labels(endpoint=path, status="401").inc()
                await response(scope, receive, send)
                return
        status = {"code": 500}

        async def send_and_note(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", "other")
            self.metrics.requests.labels(endpoint=endpoint, status=str(status["code"])).inc()


def _error_response(exc: ApiError) -> JSONResponse:
    body = error_body(str(exc), exc.kind, param=exc.param, code=exc.code)
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


def serve(
    directories: Sequence[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    names: Sequence[str] | None = None,
    settings: ServerSettings | None = None,
    api_key: str | None = None,
    cors_origins: Sequence[str] = (),
) -> None:
    """Load the models and serve them until Ctrl-C (``rnn2gpt serve``)."""
    import uvicorn

    settings = settings or ServerSettings()
    app = create_app(
        directories, names=names, settings=settings, api_key=api_key, cors_origins=cors_origins
    )
    for name, loaded in app.state.hosts.items():
        tile = getattr(loaded.engine, "tile", None)  # a language model's scheduler
        shape = f", decoded in tiles of {tile} of {settings.max_batch} slots" if tile else ""
        print(f"model {name}: {loaded.config.model.arch}{shape}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


__all__ = ["ApiError", "create_app", "serve"]
