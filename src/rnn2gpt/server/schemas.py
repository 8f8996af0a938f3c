"""Request and response bodies of the HTTP API (pydantic), as the OpenAPI schema shows them.

The completion request follows OpenAI's ``/v1/completions``; the fields OpenAI does not have
(``top_k``, ``min_p``, ``typical_p``, ``repetition_penalty``) are the extensions vLLM and llama.cpp
use; ``watermark`` is this toolkit's own (a key, gamma, delta and context, as ``generate
--watermark``). Bounds are part of the schema, so a client (or a fuzzer) sees them: ``max_tokens`` at most
:data:`MAX_TOKENS_CAP`, ``n`` at most :data:`MAX_N`, ``logprobs`` at most :data:`MAX_LOGPROBS`.
A server may set lower limits of its own (``serve --max-tokens``); those answer 400.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_TOKENS_CAP = 4096
MAX_N = 32
MAX_LOGPROBS = 20
MAX_STOP = 8
MAX_INPUTS = 64


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # unknown OpenAI fields are ignored, as OpenAI does


class StreamOptions(_Body):
    include_usage: bool = False


class WatermarkOptions(_Body):
    """The ``watermark`` extension: mark the completion with a secret key (never logged)."""

    key: str = Field(..., min_length=1, max_length=256, description="the secret")
    gamma: float = Field(0.25, gt=0.0, lt=1.0, description="green fraction of the vocabulary")
    delta: float = Field(2.0, ge=0.0, le=20.0, description="bias added to green logits")
    context: int = Field(1, ge=1, le=8, description="previous tokens that seed the green list")

    def __repr__(self) -> str:
        return f"WatermarkOptions(key=<secret>, gamma={self.gamma}, delta={self.delta})"

    __str__ = __repr__


class CompletionRequest(_Body):
    """``POST /v1/completions``."""

    model: str | None = Field(None, description="a model id from /v1/models (optional with one)")
    prompt: str | list[str] = Field("", description="a prompt or a list of prompts")
    max_tokens: int = Field(16, ge=0, le=MAX_TOKENS_CAP, description="tokens to generate")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1, le=100_000, description="extension; 0 or -1 = off")
    min_p: float = Field(0.0, ge=0.0, lt=1.0, description="extension")
    typical_p: float = Field(1.0, gt=0.0, le=1.0, description="extension")
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0, description="extension; 1 = off")
    n: int = Field(1, ge=1, le=MAX_N, description="completions per prompt")
    stop: str | list[str] | None = Field(None, description=f"up to {MAX_STOP} stop strings")
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    logit_bias: dict[str, float] | None = Field(
        None, description="token id (as a string) -> bias in [-100, 100]"
    )
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description="top alternatives")
    echo: bool = Field(False, description="return the prompt before the completion")
    stream: bool = False
    stream_options: StreamOptions | None = None
    watermark: WatermarkOptions | None = Field(None, description="extension; see rnn2gpt detect")
    user: str | None = None


class LogProbs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: LogProbs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "rnn2gpt"
    task: str = Field(description="lm, translation or summarization")
    architecture: str
    tokenizer: str
    context: int | None = Field(description="tokens the model attends to; null = unbounded")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Seq2SeqRequest(_Body):
    """``POST /v1/translate`` and ``POST /v1/summarize``: beam search in a batch of its own."""

    model: str | None = None
    input: str | list[str] = Field(description=f"a text or up to {MAX_INPUTS} texts")
    num_beams: int | None = Field(None, ge=1, le=16, description="default: 5 (translate), 4")
    max_tokens: int | None = Field(None, ge=1, le=1024, description="longest output in tokens")
    length_penalty: float | None = Field(None, ge=-5.0, le=5.0)


class Seq2SeqResponse(BaseModel):
    object: Literal["translation", "summary"]
    model: str
    outputs: list[str]


class TokenizeRequest(_Body):
    model: str | None = None
    prompt: str = Field(max_length=1_000_000)


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int | None


class DetokenizeRequest(_Body):
    model: str | None = None
    tokens: list[int] = Field(max_length=1_000_000)


class DetokenizeResponse(BaseModel):
    prompt: str


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


def error_body(message: str, kind: str, *, param: str | None = None, code: Any = None) -> dict:
    """OpenAI's error object: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


__all__ = [
    "MAX_INPUTS",
    "MAX_LOGPROBS",
    "MAX_N",
    "MAX_STOP",
    "MAX_TOKENS_CAP",
    "CompletionChoice",
    "CompletionRequest",
    "CompletionResponse",
    "DetokenizeRequest",
    "DetokenizeResponse",
    "ErrorBody",
    "LogProbs",
    "ModelCard",
    "ModelList",
    "Seq2SeqRequest",
    "Seq2SeqResponse",
    "TokenizeRequest",
    "TokenizeResponse",
    "Usage",
    "error_body",
]
