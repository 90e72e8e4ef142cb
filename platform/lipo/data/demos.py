"""Demonstrations for `lipo sft`: a prompt and its target response, validated like list records.

Rows take the target from `response`, or from `reference` (the SFT target field of prompt files), so the prompts
file of build-lists can double as SFT data.

    table, report = read_demonstrations(["data/demos.jsonl"], on_invalid="skip")
"""

from __future__ import annotations

from typing import Any, Literal, Mapping

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from lipo.data.readers import read_records
from lipo.data.records import ChatMessage, InvalidRecord, ListRecord, content_id, describe_errors

DEMO_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("prompt", pa.string()),
    ("prompt_messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
    ("response", pa.string()),
])


class Demonstration(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    prompt: str | list[ChatMessage]
    response: str

    @model_validator(mode="before")
    @classmethod
    def _reference_as_response(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("response") is None and data.get("reference") is not None:
            data = {**data, "response": data["reference"]}
        return data

    @field_validator("prompt", mode="before")
    @classmethod
    def _check_prompt(cls, v: Any) -> Any:
        return ListRecord._check_prompt(v)  # same rules as list prompts (non-empty text or message list)

    @field_validator("response")
    @classmethod
    def _check_response(cls, v: str) -> str:
        if not v.strip():
            raise PydanticCustomError("empty", "must not be empty")
        return v


def demo_row(item: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    data = dict(item)
    if data.get("prompt_messages") is not None:
        data["prompt"] = data.pop("prompt_messages")
    try:
        demo = Demonstration.model_validate(data)
    except ValidationError as exc:
        raise InvalidRecord(describe_errors(exc)) from None
    did = demo.id or content_id(demo.prompt, [demo.response])
    chat = isinstance(demo.prompt, list)
    messages = [m.model_dump() for m in demo.prompt] if chat else None
    return did, {"id": did, "prompt": None if chat else demo.prompt, "prompt_messages": messages,
                 "response": demo.response}


def read_demonstrations(paths, on_invalid: Literal["error", "skip"] = "error"):
    return read_records(paths, demo_row, DEMO_SCHEMA, on_invalid)
