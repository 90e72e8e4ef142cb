"""The list record: the contract between every pipeline stage (import -> build-lists -> train -> eval).

One record is one prompt with >= 2 candidate responses and one relevance label in [0, 1] per response (LiPO,
arXiv 2402.01878). Optional per-response `rewards` (raw reward-model scores) and `ref_logps` (cached reference
log-probabilities) ride along with the same length.

    rec = ListRecord(prompt="2+2?", responses=["4", "5"], labels=[1.0, 0.0])
    rec.id                       # filled: content hash, see `content_id`
    row = record_to_row(rec)     # dict in LIST_SCHEMA form
    assert row_to_record(row) == rec
    prompt_of(row)               # "2+2?", or [{"role": ..., "content": ...}, ...] for a chat prompt

Validation problems are reported per field: `describe_errors` turns a pydantic `ValidationError` into `Problem`s
such as `labels[2]: must be finite, got NaN`, and `row_to_record` raises `InvalidRecord` (a `DataError`) whose
message names the field. Readers prefix the file and row. A non-finite number is named (`NaN`, `inf`, `-inf`:
`number_text`), never by its Python type alone ("got float"), wherever lipo reads a number.

Chat roles are exactly `system`, `user`, `assistant` and `tool` (`ROLES`: what chat templates render); any other
role (`robot`, `prompter`, `User`) is an error naming the message, e.g. `prompt[1].role`, never passed through to a
template that would drop or misrender the turn.

Prompt representation in Arrow/Parquet (`LIST_SCHEMA`), chosen so both kinds stay typed and no JSON hides inside
a string column:
- plain-text prompt: `prompt` holds the string, `prompt_messages` is null;
- chat prompt: `prompt` is null, `prompt_messages` holds `list<struct<role, content>>`.
Exactly one of the two is set. Input files may also carry chat messages directly in `prompt` (a JSON list or a
Parquet list<struct> column); `row_to_record` accepts both forms, `record_to_row` always writes the typed form.

Message content may also be OpenAI content parts, `[{"type": "text", "text": ...}, ...]`: `content_text`
concatenates the text parts as they are, with no separator (as lipo's OpenAI server does with the parts of a chat
request, `lipo.serving.schemas`, so a prompt reads the same in training data and at serving; the parts carry their
own whitespace). Any other part (`image_url`, `input_audio`, `file`, ...) is an error naming the part, e.g.
`prompt[0].content[1].type`: lipo's models read text only, and dropping an image silently would change the task.

Ids: a row without `id` gets `content_id(prompt, responses)`: the first 16 hex digits of the SHA-1 of the canonical
JSON of prompt *and* responses. Hashing the prompt alone would give the same id to two lists sampled for one
prompt (common across sampling rounds), and ids key joins such as cached reference log-probs; hashing content
(not the file name and row) keeps ids stable when files are renamed, re-sharded or re-ordered.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, NamedTuple

import pyarrow as pa
from pydantic import AfterValidator, BaseModel, ConfigDict, Strict, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from lipo.errors import DataError

MIN_RESPONSES = 2
ROLES = ("system", "user", "assistant", "tool")

_MESSAGE_TYPE = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())])

LIST_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("prompt", pa.string()),  # plain-text prompt, null for chat prompts
        pa.field("prompt_messages", pa.list_(_MESSAGE_TYPE)),  # chat prompt, null for plain-text prompts
        pa.field("responses", pa.list_(pa.string()), nullable=False),
        pa.field("labels", pa.list_(pa.float64()), nullable=False),
        pa.field("rewards", pa.list_(pa.float64())),
        pa.field("ref_logps", pa.list_(pa.float64())),
    ]
)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "object"}.get(type(value), type(value).__name__)


def _fail(kind: str, message: str, field: str | None = None) -> PydanticCustomError:
    # `kind` becomes the short skip reason ("not_finite" -> "not finite"); `field` overrides pydantic's location
    # where it cannot know it (model-level checks, the hand-checked prompt).
    return PydanticCustomError(kind, message.replace("{", "(").replace("}", ")"), {"field": field} if field else None)


def number_text(x: Any) -> str:
    """A number as messages show it: `NaN`, `inf` and `-inf` by name, others as Python writes them."""
    if isinstance(x, float) and math.isnan(x):
        return "NaN"
    return repr(x)


def _finite(x: float) -> float:
    if not math.isfinite(x):
        raise _fail("not_finite", f"must be finite, got {number_text(x)}")
    return x


def check_role(role: Any) -> str | None:
    """Why `role` is not a chat role (a message), or None when it is one of `ROLES`."""
    if not isinstance(role, str) or not role.strip():
        return f"must be a non-empty string, got {_type_name(role) if not isinstance(role, str) else 'an empty string'}"
    if role not in ROLES:
        return f"must be one of {', '.join(ROLES)}, got '{role}'"
    return None


def _unit_interval(x: float) -> float:
    _finite(x)
    if not 0.0 <= x <= 1.0:
        raise _fail("out_of_range", f"must be in [0, 1], got {x!r}")
    return x


# Strict: JSON numbers (int or float) pass, but strings like "0.5" and booleans are rejected, not coerced.
FiniteFloat = Annotated[float, Strict(), AfterValidator(_finite)]
Label = Annotated[float, Strict(), AfterValidator(_unit_interval)]


class BadContent(ValueError):
    """Content that is neither a string nor text content parts; `where` is the path below `content` (`[1].type`)."""

    def __init__(self, where: str, message: str):
        super().__init__(message)
        self.where, self.message = where, message


def content_text(content: Any) -> str:
    """A message's content as text: a string as is, OpenAI content parts as their text parts concatenated."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadContent("", f"must be a string or a list of content parts, got {_type_name(content)}")
    texts = []
    for i, part in enumerate(content):
        if not isinstance(part, Mapping):
            raise BadContent(f"[{i}]", f"must be a content part object, got {_type_name(part)}")
        if part.get("type") != "text":
            raise BadContent(f"[{i}].type", f"only text content parts can be read, got '{part.get('type')}' "
                                            "(lipo's models read text only)")
        if not isinstance(part.get("text"), str):
            raise BadContent(f"[{i}].text", f"must be a string, got {_type_name(part.get('text'))}")
        texts.append(part["text"])
    if not texts:
        raise BadContent("", "must not be an empty list of content parts")
    return "".join(texts)


class ChatMessage(BaseModel):
    """One chat turn; extra keys (e.g. `name`) are dropped; content parts become text (`content_text`)."""

    model_config = ConfigDict(extra="ignore")

    role: str
    content: str

    @field_validator("role")
    @classmethod
    def _check_role(cls, v: str) -> str:
        problem = check_role(v)
        if problem:
            raise _fail("bad_role", problem)
        return v

    @field_validator("content", mode="before")
    @classmethod
    def _text_of_parts(cls, v: Any) -> Any:
        if not isinstance(v, list):
            return v
        try:
            return content_text(v)
        except BadContent as exc:
            raise _fail("bad_message", exc.message) from None


class ListRecord(BaseModel):
    """One prompt, its candidate responses and a label per response. Extra input fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    prompt: str | list[ChatMessage]
    responses: list[str]
    labels: list[Label]
    rewards: list[FiniteFloat] | None = None
    ref_logps: list[FiniteFloat] | None = None

    @property
    def is_chat(self) -> bool:
        return isinstance(self.prompt, list)

    @field_validator("id", mode="before")
    @classmethod
    def _check_id(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            return str(v)  # numeric ids are common in exported datasets
        if isinstance(v, str) and not v.strip():
            raise _fail("empty", "must not be empty when given")
        return v

    @field_validator("prompt", mode="before")
    @classmethod
    def _check_prompt(cls, v: Any) -> Any:
        # Checked by hand: pydantic's union errors would list both branches and bury the real problem.
        if isinstance(v, str):
            if not v.strip():
                raise _fail("empty", "must not be empty")
            return v
        if not isinstance(v, list):
            raise _fail("bad_type", f"must be a string or a list of chat messages, got {_type_name(v)}")
        if not v:
            raise _fail("empty", "must not be an empty message list")
        return [_check_message(i, m) for i, m in enumerate(v)]

    @field_validator("responses")
    @classmethod
    def _check_responses(cls, v: list[str]) -> list[str]:
        if len(v) < MIN_RESPONSES:
            raise _fail("too_few", f"a list needs at least {MIN_RESPONSES} responses, got {len(v)}")
        return v

    @model_validator(mode="after")
    def _check_lengths_and_fill_id(self) -> ListRecord:
        n = len(self.responses)
        for name in ("labels", "rewards", "ref_logps"):
            values = getattr(self, name)
            if values is not None and len(values) != n:
                raise _fail("length_mismatch", f"length {len(values)} != responses length {n}", field=name)
        if self.id is None:
            self.id = content_id(self.prompt, self.responses)
        return self


def _check_message(i: int, m: Any) -> ChatMessage:
    if isinstance(m, ChatMessage):
        return m
    where = f"prompt[{i}]"
    if not isinstance(m, Mapping):
        raise _fail("bad_message", f"must be a chat message object with role and content, got {_type_name(m)}", where)
    for key in ("role", "content"):
        if key not in m:
            raise _fail("bad_message", "missing", f"{where}.{key}")
    role, content = m["role"], m["content"]
    problem = check_role(role)
    if problem:
        raise _fail("bad_role", problem, f"{where}.role")
    try:
        return ChatMessage(role=role, content=content_text(content))
    except BadContent as exc:
        raise _fail("bad_message", exc.message, f"{where}.content{exc.where}") from None


def _plain_prompt(prompt: str | list[ChatMessage] | list[dict[str, str]]) -> str | list[dict[str, str]]:
    if isinstance(prompt, str):
        return prompt
    return [(m if isinstance(m, ChatMessage) else ChatMessage.model_validate(m)).model_dump() for m in prompt]


def content_id(prompt: str | list[ChatMessage] | list[dict[str, str]], responses: list[str]) -> str:
    """Stable 16-hex-digit id from the content of a list (see the module docstring for why prompt + responses)."""
    blob = json.dumps({"prompt": _plain_prompt(prompt), "responses": responses}, sort_keys=True,
                      ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()[:16]


class Problem(NamedTuple):
    """One validation problem: `field` like `labels[2]`, `message` for humans, `reason` a short key for counting."""

    field: str
    message: str
    reason: str


# Friendlier wording for the pydantic built-in errors a list row can hit; custom errors carry their own message.
_BUILTIN = {
    "missing": ("missing", "missing"),
    "string_type": ("must be a string, got {t}", "not a string"),
    "float_type": ("must be a number, got {t}", "not a number"),
    "list_type": ("must be a list, got {t}", "not a list"),
}


def _loc_to_field(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<record>"


def describe_errors(err: ValidationError) -> list[Problem]:
    """Turn a `ListRecord` ValidationError into per-field problems, in field order."""
    problems = []
    for e in err.errors():
        ctx = e.get("ctx") or {}
        field = ctx.get("field") or _loc_to_field(e["loc"])
        if e["type"] in _BUILTIN:
            template, short = _BUILTIN[e["type"]]
            message = template.format(t=_type_name(e.get("input")))
        else:
            message, short = e["msg"], e["type"].replace("_", " ")
        base = field.split("[", 1)[0].split(".", 1)[0]
        problems.append(Problem(field, message, f"{base}: {short}"))
    return problems


class InvalidRecord(DataError):
    """A row failed `ListRecord` validation; `problems` lists every failure, the message names the first."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        first = problems[0]
        more = len(problems) - 1
        suffix = f" (+{more} more problem{'s' if more > 1 else ''})" if more else ""
        super().__init__(f"field '{first.field}': {first.message}{suffix}")


def row_to_record(row: Mapping[str, Any]) -> ListRecord:
    """Validate one row (LIST_SCHEMA form, or chat messages directly in `prompt`); raises `InvalidRecord`."""
    data = dict(row)
    messages = data.pop("prompt_messages", None)
    if messages is not None:
        if data.get("prompt") is not None:
            raise InvalidRecord([Problem("prompt", "both 'prompt' and 'prompt_messages' are set; keep one",
                                         "prompt: conflict")])
        data["prompt"] = messages
    elif data.get("prompt", 0) is None:
        del data["prompt"]  # a null prompt reads as "missing", same as an absent one
    try:
        return ListRecord.model_validate(data)
    except ValidationError as exc:
        raise InvalidRecord(describe_errors(exc)) from None


def record_to_row(rec: ListRecord) -> dict[str, Any]:
    """A record as a LIST_SCHEMA row dict (id always set; chat prompts in `prompt_messages`)."""
    chat = rec.is_chat
    return {
        "id": rec.id,
        "prompt": None if chat else rec.prompt,
        "prompt_messages": _plain_prompt(rec.prompt) if chat else None,
        "responses": list(rec.responses),
        "labels": list(rec.labels),
        "rewards": None if rec.rewards is None else list(rec.rewards),
        "ref_logps": None if rec.ref_logps is None else list(rec.ref_logps),
    }


def prompt_of(row: Mapping[str, Any]) -> str | list[dict[str, str]]:
    """The prompt of a LIST_SCHEMA row (e.g. a Ray Data row): the text, or the chat messages as plain dicts."""
    messages = row.get("prompt_messages")
    if messages is not None:
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
    return row["prompt"]


def table_to_records(table: pa.Table) -> Iterator[ListRecord]:
    """Validate and yield the records of a LIST_SCHEMA table, batch by batch."""
    for batch in table.to_batches():
        for row in batch.to_pylist():
            yield row_to_record(row)
