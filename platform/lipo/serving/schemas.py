"""Request and response bodies: OpenAI's completions and chat completions, plus lipo's reward and log-prob endpoints.

    POST /v1/completions       CompletionRequest      -> Completion        (OpenAI shape; SSE chunks when `stream`)
    POST /v1/chat/completions  ChatCompletionRequest  -> ChatCompletion    (OpenAI shape; SSE chunks when `stream`)
    GET  /v1/models                                   -> ModelList         (OpenAI shape)
    POST /v1/score             ScoreRequest           -> ScoreResponse     {"rewards": [r_1, ..., r_K]}
    POST /v1/compare           CompareRequest         -> CompareResponse   {"probability": P(first beats second)}
    POST /v1/logprobs          LogprobsRequest        -> LogprobsResponse  summed response-token log-probs

OpenAI fields: `OPENAI_FIELDS` is the one table of every request field of the two endpoints in OpenAI's API
reference (2025), each `supported` (a field of the request model), `ignored` (accepted, changes nothing here:
`user`, `store`, ...) or `refused` (accepted only with a value that changes nothing, e.g. `presence_penalty: 0`; any
other value is a 422 naming the field, because ignoring it would silently change the answer). The README's
compatibility table is `compat_table()` (print it: `python -c "from lipo.serving.schemas import compat_table;
print(compat_table())"`); tests/lipo/serving/test_openai_client.py checks that the README holds it and that the
`supported` rows are exactly the request models' fields. A field in no row is unknown: with a null value it is
dropped (clients send unset options as null), with any other value it is a 422 naming it ("unknown field"): it may
be a typo or another server's extension (vLLM's `top_k`, `repetition_penalty`), and lipo cannot know whether
ignoring it would change the answer.

lipo's own endpoints forbid unknown fields outright. Server-side bounds (max n, max tokens, ...) come from the config
and are checked in `lipo.serving.security`.

Request isolation (issue 16): every string anywhere in a body (keys and ignored fields too) must be UTF-8 (JSON's
`\\ud800` escape carries a lone surrogate, which no tokenizer takes), else a 422 naming its path
(`messages.0.content`); `seed` is 0..2^53 (`MAX_SEED`). Bounds only the tokenizer and model know are checked by the
replica per request, before batching (`lipo.serving.deployments`), also as 422s naming the field.

Errors use OpenAI's body, `{"error": {"message", "type", "param", "code"}}`, so the `openai` client shows them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

# Row seeds are (seed + i) * 1000 + j in int64 (`lipo.models.generate.sample_seed`): 2^53 (JavaScript's safe integers,
# so any JSON client sends it exactly) keeps them in range for i < 2^47; the replica checks them again.
MAX_SEED = 2**53
MAX_STOPS = 4


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


def refusal(field: str, message: str) -> PydanticCustomError:
    """A validation error with this message (which names `field`); the 422 handler makes `field` its `param`."""
    return PydanticCustomError("refused_field", "{message}", {"message": message, "field": field})


def _safe(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def not_utf8(value: Any) -> tuple[str, str] | None:
    """(dotted path, problem) of the first string in a JSON value (keys too) that UTF-8 cannot encode, or None."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as exc:
                return path or "body", f"a lone surrogate U+{ord(v[exc.start]):04X} at character {exc.start}"
        elif isinstance(v, dict):
            for k, item in reversed(list(v.items())):
                sub = f"{path}.{_safe(str(k))}" if path else _safe(str(k))
                stack += [(sub, item), (sub, k)]  # the key first (popped first), then its value
        elif isinstance(v, list):
            stack += [(f"{path}.{i}" if path else str(i), item) for i, item in reversed(list(enumerate(v)))]
    return None


class _Body(_Request):
    """A whole request body: a string anywhere in it that is not UTF-8 is a 422 naming its path, before any other
    check (error messages must not echo it either: the JSON answer is UTF-8)."""

    @model_validator(mode="before")
    @classmethod
    def _utf8(cls, data: Any) -> Any:
        return check_utf8(data)


def check_utf8(data: Any) -> Any:
    bad = not_utf8(data)
    if bad is not None:
        raise refusal(bad[0], f"{bad[0]}: text is not valid UTF-8 ({bad[1]})")
    return data


# --------------------------------------------------------------------------------------------- the field table


def _null(v: Any, body: dict) -> bool:
    return v is None


def _absent(v: Any, body: dict) -> bool:
    return v is None or v is False or v in ("", [], {})


def _zero(v: Any, body: dict) -> bool:
    return v is None or v == 0


@dataclass(frozen=True)
class FieldRule:
    action: Literal["supported", "ignored", "refused"]
    where: tuple[str, ...]  # "completions", "chat"
    note: str  # README text; for `refused`, the 422 message after "field: "
    neutral: Callable[[Any, dict], bool] = _null  # refused fields: the values that change nothing (accepted)
    accepts: str = ""  # refused fields: the non-null values `neutral` accepts, in words, for the README


C, CH, BOTH = ("completions",), ("chat",), ("completions", "chat")
_TOOLS = "tools are not supported (the answer would be plain text, not a tool call)"

OPENAI_FIELDS: dict[str, FieldRule] = {
    "model": FieldRule("supported", BOTH, "the served policy's `name` (`GET /v1/models`)"),
    "prompt": FieldRule("supported", C, "a string or a list of strings (token-id prompts are refused)"),
    "messages": FieldRule("supported", CH, "system / developer / user / assistant; text content or text parts"),
    "max_tokens": FieldRule("supported", BOTH, "up to `limits.max_tokens`"),
    "max_completion_tokens": FieldRule("supported", CH, "wins over `max_tokens`"),
    "temperature": FieldRule("supported", BOTH, "0 = greedy"),
    "top_p": FieldRule("supported", BOTH, "nucleus sampling"),
    "n": FieldRule("supported", BOTH, "n x prompts up to `limits.max_n`"),
    "seed": FieldRule("supported", BOTH, "reproducible: choice j of prompt i is the shared sampler's seed + i"),
    "stop": FieldRule("supported", BOTH, f"up to {MAX_STOPS} strings"),
    "stream": FieldRule("supported", BOTH, "Server-Sent Events, sent as the tokens are generated (with `logprobs`: "
                                           "once the answer is whole)"),
    "stream_options": FieldRule("supported", BOTH, "`include_usage`; ignored when not streaming"),
    "logprobs": FieldRule("supported", BOTH, "completions: 0..5 top tokens; chat: true/false. Raw model "
                                             "log-probs, before temperature / top-p"),
    "top_logprobs": FieldRule("supported", CH, "0..20, with `logprobs: true`"),
    "user": FieldRule("ignored", BOTH, "no per-user state"),
    "metadata": FieldRule("ignored", CH, "nothing is stored"),
    "store": FieldRule("ignored", CH, "nothing is stored"),
    "service_tier": FieldRule("ignored", CH, "one tier"),
    "prompt_cache_key": FieldRule("ignored", CH, "cache hint only"),
    "safety_identifier": FieldRule("ignored", CH, "no per-user state"),
    "prediction": FieldRule("ignored", CH, "a latency hint; the answer does not depend on it"),
    "parallel_tool_calls": FieldRule("ignored", CH, "meaningless without `tools` (which are refused)"),
    "presence_penalty": FieldRule("refused", BOTH, "penalties are not implemented; send 0 or leave it out", _zero,
                                  "0"),
    "frequency_penalty": FieldRule("refused", BOTH, "penalties are not implemented; send 0 or leave it out", _zero,
                                  "0"),
    "logit_bias": FieldRule("refused", BOTH, "logit_bias is not implemented; send {} or leave it out",
                            _absent, "`{}`"),
    "best_of": FieldRule("refused", C, "best_of > n is not implemented; leave it out or set it equal to n",
                         lambda v, body: v is None or v == body.get("n", 1), "equal to `n`"),
    "echo": FieldRule("refused", C, "echo is not implemented; send false or leave it out",
                      _absent, "false"),
    "suffix": FieldRule("refused", C, "suffix (insertion) is not implemented; leave it out",
                        _absent, '`""`'),
    "response_format": FieldRule("refused", CH, 'only {"type": "text"} is supported (no JSON mode or schema)',
                                 lambda v, body: v is None or v == {"type": "text"}, '`{"type": "text"}`'),
    "tools": FieldRule("refused", CH, _TOOLS, _absent, "`[]`"),
    "functions": FieldRule("refused", CH, _TOOLS, _absent, "`[]`"),
    "tool_choice": FieldRule("refused", CH, _TOOLS, lambda v, body: v in (None, "none", "auto"),
                                  '`"none"`, `"auto"`'),
    "function_call": FieldRule("refused", CH, _TOOLS, lambda v, body: v in (None, "none", "auto"),
                                  '`"none"`, `"auto"`'),
    "modalities": FieldRule("refused", CH, 'only ["text"] output is supported',
                            lambda v, body: v is None or v == ["text"], '`["text"]`'),
    "audio": FieldRule("refused", CH, "audio output is not supported"),
    "reasoning_effort": FieldRule("refused", CH, "the policy has no reasoning modes; leave it out"),
    "verbosity": FieldRule("refused", CH, "the policy has no verbosity modes; leave it out"),
    "web_search_options": FieldRule("refused", CH, "web search is not supported"),
}


def compat_table() -> str:
    """The README's OpenAI compatibility table (markdown), generated from `OPENAI_FIELDS`."""
    where = {C: "completions", CH: "chat", BOTH: "both"}

    def action(r: FieldRule) -> str:
        return r.action if r.action != "refused" else f"422 unless null{' or ' + r.accepts if r.accepts else ''}"

    rows = [f"| `{name}` | {where[r.where]} | {action(r)} | {r.note} |" for name, r in OPENAI_FIELDS.items()]
    return "\n".join(["| field | endpoint | lipo | note |", "|---|---|---|---|", *rows])


class _OpenAIRequest(_Request):
    endpoint: ClassVar[str]

    @model_validator(mode="before")
    @classmethod
    def _classify_fields(cls, data: Any) -> Any:
        """Drop ignored fields, null unknown ones and neutral values of refused ones; 422 on the rest of the
        refused fields. Other unknown fields stay, so `extra="forbid"` names them. First, as for every body
        (`_Body`): every string in it, ignored fields included, must be UTF-8."""
        if not isinstance(data, dict):
            return data
        check_utf8(data)
        kept, refused = {}, []
        for name, value in data.items():
            rule = OPENAI_FIELDS.get(name)
            rule = rule if rule is not None and cls.endpoint in rule.where else None  # another endpoint's: unknown
            if name in cls.model_fields or (rule is None and value is not None):
                kept[name] = value
            elif rule is not None and rule.action == "refused" and not rule.neutral(value, data):
                refused.append((name, rule.note))
        if refused:
            raise refusal(refused[0][0], "; ".join(f"{name}: {note}" for name, note in refused))
        return kept


class StreamOptions(_Request):
    include_usage: bool = False  # a last chunk with `usage` and no choices
    include_obfuscation: bool | None = None  # OpenAI's padding against side channels; nothing to pad here


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"]  # developer: OpenAI's newer name of system
    content: str | list[TextPart]  # text parts are joined; images and audio are 422s naming the part
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _join_parts(cls, v: str | list[TextPart]) -> str:
        return v if isinstance(v, str) else "".join(p.text for p in v)


Prompt = str | list[ChatMessage]


class _Sampling(_OpenAIRequest):
    model: str
    temperature: float = Field(1.0, ge=0.0, le=2.0)  # 0: greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)  # choice j of prompt i uses seed (seed + i) * 1000 + j
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None  # read only when streaming

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences")
        return v

    def stops(self) -> list[str]:
        return [] if self.stop is None else [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(_Sampling):
    endpoint: ClassVar[str] = "completions"
    prompt: str | list[str] = Field(min_length=1)
    max_tokens: int = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=5)  # None: no logprobs; k: the sampled token and the k most likely

    def top_k_logprobs(self) -> int | None:
        return self.logprobs


class ChatCompletionRequest(_Sampling):
    endpoint: ClassVar[str] = "chat"
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer OpenAI name of max_tokens
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> "ChatCompletionRequest":
        if self.top_logprobs and not self.logprobs:
            raise refusal("top_logprobs", "top_logprobs: needs logprobs: true")
        return self

    def top_k_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class ScoreRequest(_Body):
    model: str | None = None
    prompt: Prompt
    responses: list[str] = Field(min_length=1)


class CompareRequest(_Body):
    model: str | None = None
    prompt: Prompt
    first: str
    second: str


class LogprobsRequest(_Body):
    model: str
    prompt: Prompt
    responses: list[str] = Field(min_length=1)


# --------------------------------------------------------------------------------------------- responses


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy shape, one entry per returned token."""

    tokens: list[str]  # each token decoded alone
    token_logprobs: list[float]  # log p(token | prefix) under the model, before temperature and top-p
    top_logprobs: list[dict[str, float]]  # the k most likely tokens and the sampled one (up to k + 1 entries)
    text_offset: list[int]  # where each token starts in the choice's `text` (0: its first character)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
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


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]  # the token's UTF-8 bytes (of its decoded text)


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]  # the `top_logprobs` most likely tokens at this position


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]
    refusal: None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
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
