"""ListRecord validation, per-field error messages, ids, and the LIST_SCHEMA row round-trip."""

import math

import pyarrow as pa
import pytest
from pydantic import ValidationError

from lipo.data.records import (
    LIST_SCHEMA,
    InvalidRecord,
    ListRecord,
    content_id,
    prompt_of,
    describe_errors,
    record_to_row,
    row_to_record,
    table_to_records,
)
from lipo.errors import DataError

CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"}]


def row(**kw):
    base = {"prompt": "2+2?", "responses": ["4", "5", "four"], "labels": [1.0, 0.0, 0.5]}
    base.update(kw)
    return base


def problem(r):
    with pytest.raises(InvalidRecord) as exc:
        row_to_record(r)
    assert isinstance(exc.value, DataError)
    return str(exc.value), exc.value.problems[0].reason


def test_valid_record_gets_content_id_and_ignores_extra_fields():
    rec = row_to_record(row(reference="4", source="gsm8k"))
    assert rec.id == content_id("2+2?", ["4", "5", "four"])
    assert len(rec.id) == 16 and int(rec.id, 16) >= 0
    assert not hasattr(rec, "reference")
    assert row_to_record(row()).id == rec.id  # stable across calls


def test_id_depends_on_responses_not_only_prompt():
    a = row_to_record(row())
    b = row_to_record(row(responses=["4", "6", "four"]))
    assert a.id != b.id


def test_given_id_is_kept_and_numeric_id_becomes_string():
    assert row_to_record(row(id="q-17")).id == "q-17"
    assert row_to_record(row(id=17)).id == "17"


def test_integer_labels_are_numbers():
    assert row_to_record(row(labels=[1, 0, 1])).labels == [1.0, 0.0, 1.0]


@pytest.mark.parametrize(
    "bad, message, reason",
    [
        ({"labels": [1.0, math.nan, 0.0]}, "field 'labels[1]': must be finite, got NaN", "labels: not finite"),
        ({"labels": [1.0, 0.0, 1.5]}, "field 'labels[2]': must be in [0, 1], got 1.5", "labels: out of range"),
        ({"labels": [1.0, -0.1, 0.0]}, "field 'labels[1]': must be in [0, 1], got -0.1", "labels: out of range"),
        ({"labels": [1.0, "0.5", 0.0]}, "field 'labels[1]': must be a number, got str", "labels: not a number"),
        ({"labels": [1.0, True, 0.0]}, "field 'labels[1]': must be a number, got bool", "labels: not a number"),
        ({"labels": [1.0, 0.0]}, "field 'labels': length 2 != responses length 3", "labels: length mismatch"),
        ({"responses": ["4"], "labels": [1.0]},
         "field 'responses': a list needs at least 2 responses, got 1", "responses: too few"),
        ({"responses": ["4", 5, "x"]}, "field 'responses[1]': must be a string, got int", "responses: not a string"),
        ({"responses": "4"}, "field 'responses': must be a list, got str", "responses: not a list"),
        ({"prompt": "   "}, "field 'prompt': must not be empty", "prompt: empty"),
        ({"prompt": []}, "field 'prompt': must not be an empty message list", "prompt: empty"),
        ({"prompt": None}, "field 'prompt': missing", "prompt: missing"),
        ({"prompt": 3}, "field 'prompt': must be a string or a list of chat messages, got int", "prompt: bad type"),
        ({"prompt": [{"role": "user"}]}, "field 'prompt[0].content': missing", "prompt: bad message"),
        ({"prompt": [CHAT[0], {"role": " ", "content": "x"}]},
         "field 'prompt[1].role': must be a non-empty string, got an empty string", "prompt: bad role"),
        ({"prompt": ["hi"]},
         "field 'prompt[0]': must be a chat message object with role and content, got str", "prompt: bad message"),
        ({"rewards": [0.1, math.inf, 0.0]}, "field 'rewards[1]': must be finite, got inf", "rewards: not finite"),
        ({"ref_logps": [-1.0, -2.0]},
         "field 'ref_logps': length 2 != responses length 3", "ref_logps: length mismatch"),
        ({"id": ""}, "field 'id': must not be empty when given", "id: empty"),
    ],
)
def test_invalid_rows_name_the_field(bad, message, reason):
    assert problem(row(**bad)) == (message, reason)


def test_missing_field_and_multiple_problems():
    r = row()
    del r["labels"]
    assert problem(r) == ("field 'labels': missing", "labels: missing")
    assert problem({"prompt": "x"})[0] == "field 'responses': missing (+1 more problem)"


def test_describe_errors_on_direct_construction():
    with pytest.raises(ValidationError) as exc:
        ListRecord(prompt="x", responses=["a", "b"], labels=[0.0, math.nan])
    [p] = describe_errors(exc.value)
    assert (p.field, p.message, p.reason) == ("labels[1]", "must be finite, got NaN", "labels: not finite")


def test_both_prompt_columns_set_is_a_conflict():
    assert problem(row(prompt_messages=CHAT))[1] == "prompt: conflict"


def test_text_prompt_row_round_trip():
    rec = row_to_record(row(rewards=[2.0, -1.0, 0.5], ref_logps=[-3.0, -4.5, -2.0]))
    out = record_to_row(rec)
    assert out["prompt"] == "2+2?" and out["prompt_messages"] is None
    assert row_to_record(out) == rec


def test_chat_prompt_round_trip_through_arrow():
    rec = row_to_record(row(prompt=[dict(m, name="ignored") for m in CHAT]))
    assert rec.is_chat and rec.prompt[1].content == "2+2?"
    out = record_to_row(rec)
    assert out["prompt"] is None and out["prompt_messages"] == CHAT
    assert prompt_of(out) == CHAT and prompt_of(record_to_row(row_to_record(row()))) == "2+2?"
    table = pa.Table.from_pylist([out, record_to_row(row_to_record(row()))], schema=LIST_SCHEMA)
    assert list(table_to_records(table)) == [rec, row_to_record(row())]


def test_chat_id_differs_from_text_id_and_accepts_dict_messages():
    assert content_id("hi", ["a", "b"]) != content_id([{"role": "user", "content": "hi"}], ["a", "b"])
    assert content_id(CHAT, ["4", "5", "four"]) == row_to_record(row(prompt=CHAT)).id


def test_list_schema_columns():
    assert LIST_SCHEMA.names == ["id", "prompt", "prompt_messages", "responses", "labels", "rewards", "ref_logps"]
    assert LIST_SCHEMA.field("labels").type == pa.list_(pa.float64())
    assert not LIST_SCHEMA.field("id").nullable


def test_content_parts_in_a_chat_prompt_become_text():
    """OpenAI content parts: text parts concatenated; any other part names its index and type."""
    parts = [{"type": "text", "text": "Translate: "}, {"type": "text", "text": "cat", "extra": None}]
    rec = row_to_record(row(prompt=[CHAT[0], {"role": "user", "content": parts}]))
    assert rec.prompt[1].content == "Translate: cat"
    assert rec.id == content_id([CHAT[0], {"role": "user", "content": "Translate: cat"}], ["4", "5", "four"])
    image = [{"type": "text", "text": "What?"}, {"type": "image_url", "image_url": {"url": "x"}}]
    for content, msg in [
        (image, "field 'prompt[1].content[1].type': only text content parts can be read, got 'image_url'"),
        ([{"type": "text", "text": 3}], "field 'prompt[1].content[0].text': must be a string, got int"),
        ([], "field 'prompt[1].content': must not be an empty list of content parts"),
        (7, "field 'prompt[1].content': must be a string or a list of content parts, got int"),
    ]:
        message, reason = problem(row(prompt=[CHAT[0], {"role": "user", "content": content}]))
        assert message.startswith(msg) and reason == "prompt: bad message"


def test_roles_are_exactly_system_user_assistant_and_tool():
    """Issue 16, point 13: `robot` (or `User`, `prompter`) is an error naming the message's role field."""
    ok = [{"role": r, "content": "x"} for r in ("system", "user", "assistant", "tool")] + [CHAT[1]]
    assert [m["role"] for m in prompt_of(record_to_row(row_to_record(row(prompt=ok))))] == [
        "system", "user", "assistant", "tool", "user"]
    for bad in ("robot", "User", "prompter"):
        assert problem(row(prompt=[CHAT[0], {"role": bad, "content": "x"}])) == (
            f"field 'prompt[1].role': must be one of system, user, assistant, tool, got '{bad}'", "prompt: bad role")
    with pytest.raises(ValidationError, match="must be one of system, user, assistant, tool, got 'robot'"):
        ListRecord(prompt=[{"role": "robot", "content": "x"}], responses=["a", "b"], labels=[1.0, 0.0])


@pytest.mark.parametrize("value, shown", [(math.nan, "NaN"), (math.inf, "inf"), (-math.inf, "-inf")])
def test_non_finite_numbers_are_named_in_every_numeric_field(value, shown):
    """Issue 16, point 13: the message names NaN / inf, not only the type."""
    for name, values in (("labels", [1.0, value, 0.0]), ("rewards", [0.0, value, 1.0]),
                         ("ref_logps", [-1.0, value, -2.0])):
        assert problem(row(**{name: values})) == (f"field '{name}[1]': must be finite, got {shown}",
                                                  f"{name}: not finite")
