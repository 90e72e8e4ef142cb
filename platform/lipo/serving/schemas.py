"""Request and response bodies: an OpenAI-compatible subset, plus lipo's reward and log-prob endpoints.

    POST /v1/completions       CompletionRequest      -> Completion        (OpenAI shape)
    POST /v1/chat/completions  ChatCompletionRequest  -> ChatCompletion    (OpenAI shape)
    GET  /v1/models                                   -> ModelList         (OpenAI shape)
    POST /v1/score             ScoreRequest           -> ScoreResponse     {"rewards": [r_1, ..., r_K]}
    POST /v1/compare           CompareRequest         -> CompareResponse   {"probability": P(first beats second)}
    POST /v1/logprobs          LogprobsRequest        -> LogprobsResponse  summed response-token log-probs

Request models forbid unknown fields, so a typo is a 422 that names the field rather than a silently ignored
option. Server-side bounds (max n, max tokens, ...) come from the config and are checked in `lipo.serving.security`.
Errors use OpenAI's body, `{"error": {"message", "type", "param", "code"}}`, so the `openai` client shows them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

# Sample seeds are (seed + i) * 1000 + j in int64 on the device: seeds up to 2^53 keep that in range (2^63 / 1000 is
# about 2^53.03), and a larger one is a clear 422 instead of an overflow inside the replica.
MAX_SEED = 2**53


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChatMessage(_Request):
    role: Literal["system", "user", "assistant"]
    content: str
    name: str | None = None


Prompt = str | list[ChatMessage]


def _reject_stream(v: bool) -> bool:
    if v:
        raise ValueError("streaming is not supported; send stream=false")
    return v


def _check_stops(v: str | list[str] | None) -> str | list[str] | None:
    if isinstance(v, list) and len(v) > 4:
        raise ValueError("at most 4 stop sequences")
    return v


NoStream = Annotated[bool, AfterValidator(_reject_stream)]
Stops = Annotated[str | list[str] | None, AfterValidator(_check_stops)]


class CompletionRequest(_Request):
    model: str
    prompt: str | list[str] = Field(min_length=1)
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)  # 0: greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)  # choice j of prompt i uses seed (seed + i) * 1000 + j
    stop: Stops = None
    stream: NoStream = False
    user: str | None = None


class ChatCompletionRequest(_Request):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer OpenAI name of max_tokens
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stop: Stops = None
    stream: NoStream = False
    user: str | None = None


class ScoreRequest(_Request):
    model: str | None = None
    prompt: Prompt
    responses: list[str] = Field(min_length=1)


class CompareRequest(_Request):
    model: str | None = None
    prompt: Prompt
    first: str
    second: str


class LogprobsRequest(_Request):
    model: str
    prompt: Prompt
    responses: list[str] = Field(min_length=1)


# --------------------------------------------------------------------------------------------- responses


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "lipo"
    role: Literal["policy", "reward"]  # lipo extension: what the model does
    kind: str | None = None  # reward models: pointwise | pairwise


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ScoreResponse(BaseModel):
    model: str
    kind: Literal["pointwise", "pairwise"]
    rewards: list[float]


class CompareResponse(BaseModel):
    model: str
    kind: Literal["pointwise", "pairwise"]
    probability: float


class LogprobsResponse(BaseModel):
    model: str
    logprobs: list[float]
    tokens: list[int]  # response tokens scored, EOS included (as in training)


def error_body(message: str, status: int, param: str | None = None) -> dict:
    """OpenAI's error body; `type` follows OpenAI's names for the common statuses."""
    kinds = {401: "authentication_error", 404: "not_found_error", 408: "timeout_error", 413: "invalid_request_error",
             422: "invalid_request_error", 503: "overloaded_error"}
    return {"error": {"message": message, "type": kinds.get(status, "server_error"), "param": param, "code": status}}
