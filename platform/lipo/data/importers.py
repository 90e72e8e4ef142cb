"""Turn existing preference data into lipo's list format: `lipo import --format F INPUT OUTPUT.parquet`.

    report = import_file("pairs", "hh-rlhf/train.jsonl", "data/hh.parquet")
    print(report.summary())

Inputs: JSONL, Parquet or Arrow files, folders or globs, a Hugging Face `datasets` folder (`save_to_disk`; `split`
picks a DatasetDict's split, default train) or a hub id when `datasets` is installed (`lipo.data.hf_datasets`).
They are read by `lipo.data.readers.stream_records` and written batch by batch, so the importer holds one batch
and the ids seen (for the duplicate check), not the data set. (The OpenAssistant message tree is the exception:
its threads are joined in memory.) Chat message content may be OpenAI content parts (`lipo.data.records.content_text`):
text parts are concatenated, any other part is an error naming the row and field, e.g. `chosen[1].content[0].type`.

Formats:
- `pairs`: one preference pair per row -> a list of K = 2 with labels [1, 0] (chosen, rejected).
    * TRL standard: `prompt`, `chosen`, `rejected` strings;
    * TRL conversational: `prompt` as chat messages, `chosen` / `rejected` as one assistant message each;
    * TRL implicit prompt: `chosen` / `rejected` as whole conversations sharing every turn but the last;
    * `HuggingFaceH4/ultrafeedback_binarized`: a string `prompt` and `chosen` / `rejected` as whole conversations
      (possibly multi-turn, possibly with a system message). The conversation before the last (assistant) reply
      must match the prompt: a string prompt equals the prefix's last user message, a message-list prompt equals
      the whole prefix (roles and contents; surrounding whitespace is ignored); a mismatch is an error naming the
      field (`chosen: prompt mismatch`). The list's prompt is then the prefix as chat messages: it holds any
      system message and earlier turns, tokenises the same as the string for a lone user turn (a string is one user
      turn under the chat template), and exports back to TRL's conversational columns.
    * Anthropic HH: `chosen` / `rejected` transcripts ("\\n\\nHuman: ... \\n\\nAssistant: ..."); the prompt is the
      shared text up to and including the last "\\n\\nAssistant:", the responses what follows it.
  `score_chosen` / `score_rejected`, when both are finite numbers, become `rewards` (ultrafeedback_binarized's
  scores). When only one is given, or one is not a finite number (NaN, inf, a string), the list is kept without
  rewards and the dropped scores are counted by field and reason (`values_left_out`, e.g. `score_chosen: NaN`):
  the preference itself is still sound, and a whole pair should not be lost for a broken score.
  Other columns (`prompt_id`, `messages`) are not read: ids are content ids, as for every list without an `id`.
- `ultrafeedback`: `instruction` (or `prompt`) and `completions: [{response, overall_score | fine-grained_score}]`
  -> a list of every completion with a response and a numeric rating; rewards = the ratings (the first of
  `RATING_KEYS` that at least two completions have), labels = min-max scaled within the list (`lipo.labels.minmax`;
  equal ratings: 0.5).
  Completions with no response or no numeric rating (UltraFeedback has "N/A") are left out and counted.
- `ranked`: replies with a rank (OpenAssistant), rank 0 or 1 = best, lower is better -> labels
  psi = (K - r) / (K - 1) by rank (`lipo.labels.rank`, ties share their mean rank). Two layouts:
    * grouped rows: `prompt` and `responses` (or `replies`): `[{text | response | content, rank}]`;
    * the OpenAssistant message export: one message per row with `message_id`, `parent_id`, `role`
      (prompter / assistant), `text`, `rank`; each prompter message with >= 2 ranked assistant replies becomes a
      list whose prompt is the conversation up to it (chat messages when it has several turns).
  Replies without a rank are left out and counted.

Every output row is validated as a `ListRecord` and written to one Parquet file in LIST_SCHEMA (atomically), so
`lipo train data.train=[OUTPUT]` reads it as is. A row that cannot be imported is skipped and counted by reason
(`on_invalid="error"` raises instead, naming the file, row and field); public datasets hold a few such rows (HH has
identical chosen/rejected pairs), and one should not stop an import.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from lipo import labels as labelers
from lipo.data.files import DataFile, column_names
from lipo.data.hf_datasets import source_files
from lipo.data.readers import ReadReport, atomic_file, read_records, stream_records, write_lists
from lipo.data.records import (LIST_SCHEMA, BadContent, InvalidRecord, Problem, content_text, number_text,
                               record_to_row, row_to_record)
from lipo.errors import DataError

RATING_KEYS = ("overall_score", "fine-grained_score", "fine_grained_score")
HH_ASSISTANT = "\n\nAssistant:"
_TEXT_KEYS = ("text", "response", "content")


@dataclass
class ImportReport:
    fmt: str
    output: Path
    read: ReadReport
    left_out: Counter = field(default_factory=Counter)  # candidates left out of otherwise valid lists, by reason
    # values left out of otherwise valid lists (a pair's scores, so no rewards), by "field: reason"
    values_left_out: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        line = f"import {self.fmt}: {self.read.summary()}; wrote {self.read.rows_valid} lists to {self.output}"
        if self.left_out:
            line += "; candidates left out: " + ", ".join(f"{k} {v}" for k, v in sorted(self.left_out.items()))
        if self.values_left_out:
            line += "; scores left out (lists kept without rewards): " + ", ".join(
                f"{k} {v}" for k, v in sorted(self.values_left_out.items()))
        return line


def _bad(where: str, message: str, reason: str) -> InvalidRecord:
    return InvalidRecord([Problem(where, message, reason)])


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _not_a_number(v: Any) -> str:
    """Why `v` (not None) is no finite number, as a message ends: `NaN`, `inf`, or its type."""
    if isinstance(v, float) and not isinstance(v, bool):
        return number_text(v)  # NaN / inf / -inf
    return {str: "a string", bool: "a boolean"}.get(type(v), type(v).__name__)


def _list_row(item: Mapping[str, Any], prompt: Any, responses: list[str], labels: list[float],
              rewards: list[float] | None = None) -> tuple[str, dict[str, Any]]:
    rec = row_to_record({"id": item.get("id"), "prompt": prompt, "responses": responses, "labels": labels,
                         "rewards": rewards})
    return rec.id, record_to_row(rec)


# ------------------------------------------------------------------------------------------------------ pairs


def _split_hh(text: str, where: str) -> tuple[str, str]:
    cut = text.rfind(HH_ASSISTANT)
    if cut < 0:
        raise _bad(where, "has no '\\n\\nAssistant:' turn (not an HH transcript)", f"{where}: not a transcript")
    cut += len(HH_ASSISTANT)
    return text[:cut], text[cut:].strip()


def _message(m: Any, where: str) -> dict[str, str]:
    """One chat message as {role, content} with content parts made text; errors name `where` (`chosen[1]`)."""
    field = where.split("[", 1)[0]
    if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
        raise _bad(where, "must be a chat message with a role and content", f"{field}: bad message")
    try:
        return {"role": m["role"], "content": content_text(m.get("content"))}
    except BadContent as exc:
        raise _bad(f"{where}.content{exc.where}", exc.message, f"{field}: bad content") from None


def _completion(v: Any, where: str) -> tuple[list[dict[str, str]] | None, str]:
    """(the conversation before the reply, or None; the reply) of a `chosen` / `rejected` value: a string, or chat
    messages whose last one is the assistant's reply (one message alone: no conversation)."""
    if isinstance(v, str):
        return None, v
    if not isinstance(v, list) or not v:
        raise _bad(where, "must be a string or chat messages ending with the assistant's reply",
                   f"{where}: bad completion")
    messages = [_message(m, f"{where}[{i}]") for i, m in enumerate(v)]
    if messages[-1]["role"] != "assistant":
        raise _bad(f"{where}[{len(v) - 1}].role", f"the last message must be the assistant's reply, got "
                   f"'{messages[-1]['role']}'", f"{where}: bad conversation")
    return messages[:-1] or None, messages[-1]["content"]


def _snip(text: str, n: int = 40) -> str:
    text = text.strip()
    return repr(text if len(text) <= n else text[:n] + "...")


def _check_prefix(prompt: str | list[dict[str, str]], prefix: list[dict[str, str]], where: str) -> None:
    """The conversation before the reply must match the prompt (see the module docstring)."""
    if isinstance(prompt, str):
        users = [m["content"] for m in prefix if m["role"] == "user"]
        if not users or users[-1].strip() != prompt.strip():
            got = _snip(users[-1]) if users else "none"
            raise _bad(where, f"its last user message {got} does not match 'prompt' {_snip(prompt)}",
                       f"{where}: prompt mismatch")
    elif [(m["role"], m["content"].strip()) for m in prompt] != [(m["role"], m["content"].strip()) for m in prefix]:
        raise _bad(where, f"its {len(prefix)} messages before the last reply do not match the {len(prompt)} "
                   "messages of 'prompt'", f"{where}: prompt mismatch")


def _pair_prompt(item: Mapping[str, Any], chosen: Any, rejected: Any) -> tuple[Any, str, str]:
    """(prompt, chosen reply, rejected reply) of a pairs row in any of the layouts of the module docstring."""
    prompt = item.get("prompt")
    if prompt is None and isinstance(chosen, str) and isinstance(rejected, str):  # Anthropic HH transcripts
        (prompt, a), (p2, b) = _split_hh(chosen, "chosen"), _split_hh(rejected, "rejected")
        if p2 != prompt:
            raise _bad("rejected", "its conversation differs from chosen before the last reply",
                       "rejected: other prompt")
        return prompt, a, b
    (pc, a), (pr, b) = _completion(chosen, "chosen"), _completion(rejected, "rejected")
    if prompt is None and (pc is None or pr is None):
        raise _bad("prompt", "missing (and chosen/rejected are not full conversations)", "prompt: missing")
    if isinstance(prompt, list):  # content parts -> text, so it compares with the conversation
        prompt = [_message(m, f"prompt[{i}]") for i, m in enumerate(prompt)]
    for where, prefix in (("chosen", pc), ("rejected", pr)):
        if prefix is not None and isinstance(prompt, (str, list)):  # another type: ListRecord names the problem
            _check_prefix(prompt, prefix, where)
    if pc is not None and pr is not None and pc != pr:  # a string prompt checks only the last user message
        raise _bad("rejected", "its conversation differs from chosen before the last reply", "rejected: other prompt")
    return pc or pr or prompt, a, b


SCORE_KEYS = ("score_chosen", "score_rejected")


def _pair_rewards(item: Mapping[str, Any], values_left_out: Counter) -> list[float] | None:
    """[score_chosen, score_rejected] when both are finite numbers; None when neither is given; otherwise None with
    every given score counted by why it went unused (`score_chosen: NaN`; a sound score whose partner is missing or
    broken: `score_rejected: partner unusable`), so no score disappears uncounted."""
    raw = [item.get(k) for k in SCORE_KEYS]
    scores = [_number(v) for v in raw]
    if all(v is None for v in raw):
        return None
    if None not in scores:
        return scores
    for key, v, x in zip(SCORE_KEYS, raw, scores):
        if v is not None:
            values_left_out[f"{key}: {_not_a_number(v) if x is None else 'partner unusable'}"] += 1
    return None


class PairsRow:
    def __init__(self, values_left_out: Counter):
        self.values_left_out = values_left_out

    def __call__(self, item: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        chosen, rejected = item.get("chosen"), item.get("rejected")
        for name, v in (("chosen", chosen), ("rejected", rejected)):
            if v is None:
                raise _bad(name, "missing", f"{name}: missing")
        prompt, a, b = _pair_prompt(item, chosen, rejected)
        if not a.strip() or not b.strip():
            raise _bad("chosen" if not a.strip() else "rejected", "empty response", "responses: empty")
        if a == b:
            raise _bad("rejected", "identical to chosen: no preference", "responses: identical")
        # A row found invalid later (ListRecord) never counts its scores here: it is counted as skipped instead.
        dropped = Counter()
        rec = _list_row(item, prompt, [a, b], [1.0, 0.0], _pair_rewards(item, dropped))
        self.values_left_out.update(dropped)
        return rec


# ---------------------------------------------------------------------------------------------- ultrafeedback


class UltraFeedbackRow:
    def __init__(self, left_out: Counter):
        self.left_out = left_out

    def __call__(self, item: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        prompt = item.get("instruction", item.get("prompt"))
        completions = item.get("completions")
        if not isinstance(completions, list):
            raise _bad("completions", "missing" if completions is None else "must be a list", "completions: missing")
        usable = [c for c in completions if isinstance(c, Mapping) and isinstance(c.get("response"), str)
                  and c["response"].strip()]
        key = next((k for k in RATING_KEYS if sum(_number(c.get(k)) is not None for c in usable) >= 2), None)
        if key is None:
            raise _bad("completions", "fewer than 2 completions with a response and a numeric rating "
                       f"({' / '.join(RATING_KEYS)})", "completions: too few rated")
        rated = [(c["response"], _number(c.get(key))) for c in usable if _number(c.get(key)) is not None]
        self.left_out.update(+Counter({"no response": len(completions) - len(usable),
                                       "no numeric rating": len(usable) - len(rated)}))  # +: drops zero counts
        responses, ratings = [r for r, _ in rated], [s for _, s in rated]
        return _list_row({"id": item.get("id")}, prompt, responses, labelers.minmax(ratings), ratings)


# ----------------------------------------------------------------------------------------------------- ranked


def _reply(v: Any, where: str) -> tuple[str, float | None]:
    if not isinstance(v, Mapping):
        raise _bad(where, "must be an object with text and rank", "responses: bad reply")
    text = next((v[k] for k in _TEXT_KEYS if isinstance(v.get(k), str)), None)
    if text is None and isinstance(v.get("content"), list):  # OpenAI content parts
        text = _message({"role": "assistant", "content": v["content"]}, where)["content"]
    if text is None:
        given = next((k for k in _TEXT_KEYS if v.get(k) is not None), None)  # there, but not text: say so
        raise _bad(f"{where}.{given or 'text'}", f"must be a string, got {type(v[given]).__name__}" if given
                   else "missing", "responses: no text")
    rank = v.get("rank")
    if rank is not None and _number(rank) is None:
        raise _bad(f"{where}.rank", f"must be a finite number, got {_not_a_number(rank)}", "responses: bad rank")
    return text, _number(rank)


def _ranked_list(item: Mapping[str, Any], prompt: Any, replies: list[tuple[str, float | None]],
                 left_out: Counter) -> tuple[str, dict[str, Any]]:
    ranked = sorted(((t, r) for t, r in replies if r is not None), key=lambda x: x[1])
    left_out.update(+Counter({"no rank": len(replies) - len(ranked)}))
    if len(ranked) < 2:
        raise _bad("responses", f"{len(ranked)} ranked replies; a list needs 2", "responses: too few ranked")
    responses = [t for t, _ in ranked]
    return _list_row(item, prompt, responses, labelers.rank([-r for _, r in ranked]))


class RankedRow:
    def __init__(self, left_out: Counter):
        self.left_out = left_out

    def __call__(self, item: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        key = "responses" if "responses" in item else "replies"
        replies = item.get(key)
        if not isinstance(replies, list):
            raise _bad("responses", "missing" if replies is None else "must be a list", "responses: missing")
        return _ranked_list(item, item.get("prompt"), [_reply(v, f"{key}[{i}]") for i, v in enumerate(replies)],
                            self.left_out)


MESSAGE_SCHEMA = pa.schema([("message_id", pa.string()), ("parent_id", pa.string()), ("role", pa.string()),
                            ("text", pa.string()), ("rank", pa.float64())])


def message_row(item: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    for key in ("message_id", "role", "text"):
        if not isinstance(item.get(key), str):
            raise _bad(key, "missing" if item.get(key) is None else "must be a string", f"{key}: missing")
    if item["role"] not in ("prompter", "assistant"):
        raise _bad("role", f"must be prompter or assistant, got '{item['role']}'", "role: unknown")
    parent = item.get("parent_id")
    if parent is not None and not isinstance(parent, str):  # not read as "no parent": that would make it a root
        raise _bad("parent_id", f"must be a string or null, got {type(parent).__name__}", "parent_id: not a string")
    text, rank = _reply(item, "<message>")
    return item["message_id"], {"message_id": item["message_id"], "parent_id": parent, "role": item["role"],
                                "text": text, "rank": rank}


def _thread(by_id: dict[str, dict], message_id: str) -> list[dict[str, str]] | None:
    """The conversation from the root to `message_id` as chat messages; None if a parent is missing or loops."""
    turns, node, seen = [], by_id.get(message_id), set()
    while node is not None and node["message_id"] not in seen:
        seen.add(node["message_id"])
        turns.append({"role": "user" if node["role"] == "prompter" else "assistant", "content": node["text"]})
        if node["parent_id"] is None:
            return turns[::-1]
        node = by_id.get(node["parent_id"])
    return None


def oasst_lists(messages: pa.Table, left_out: Counter) -> list[dict[str, Any]]:
    """Lists from an OpenAssistant message table: one per prompter message with >= 2 ranked assistant replies."""
    by_id = {m["message_id"]: m for m in messages.to_pylist()}
    children: dict[str, list[dict]] = {}
    for m in by_id.values():
        if m["parent_id"] is not None and m["role"] == "assistant":
            children.setdefault(m["parent_id"], []).append(m)
    rows = []
    for pid, replies in children.items():
        turns = _thread(by_id, pid)
        if turns is None or turns[0]["role"] != "user" or turns[-1]["role"] != "user":
            left_out["broken thread"] += len(replies)
            continue
        prompt = turns[0]["content"] if len(turns) == 1 else turns
        try:
            rows.append(_ranked_list({"id": pid}, prompt, [(r["text"], r["rank"]) for r in replies], left_out)[1])
        except InvalidRecord:  # the unranked replies were counted by _ranked_list
            left_out.update(+Counter({"fewer than 2 ranked replies": sum(r["rank"] is not None for r in replies)}))
    return rows


# ----------------------------------------------------------------------------------------------------- driver


def _reading_schema(schema: pa.Schema, columns: tuple[str, ...]) -> pa.Schema:
    # read_records reads the Parquet columns its schema names; source columns ride along as null-typed columns so
    # they are read, and are dropped again after validation.
    return pa.schema(list(schema) + [pa.field(c, pa.null()) for c in columns if c not in schema.names])


def _is_message_export(files: list[DataFile]) -> bool:
    try:
        return "message_id" in (column_names(files[0]) or [])
    except DataError:
        return False  # unreadable: the read itself reports it, with its file and row


FormatName = Literal["pairs", "ultrafeedback", "ranked"]
_SOURCE_COLUMNS: dict[str, tuple[str, ...]] = {
    "pairs": ("chosen", "rejected", "score_chosen", "score_rejected"),
    "ultrafeedback": ("instruction", "completions"),
    "ranked": ("replies",),
}
# format -> the row importer, given the report's counters (candidates left out, values left out)
_ROW_IMPORTERS: dict[str, Callable[[Counter, Counter], Callable[[Mapping[str, Any]], tuple[str, dict[str, Any]]]]] = {
    "pairs": lambda left_out, values_left_out: PairsRow(values_left_out),
    "ultrafeedback": lambda left_out, values_left_out: UltraFeedbackRow(left_out),
    "ranked": lambda left_out, values_left_out: RankedRow(left_out),
}


def import_file(fmt: str, source: str | list[str], output: str, on_invalid: Literal["error", "skip"] = "skip",
                quiet: bool = False, split: str | None = None) -> ImportReport:
    """Import `source` in format `fmt` into one LIST_SCHEMA Parquet file `output`; returns what happened.

    `split`: the split of a Hugging Face DatasetDict folder or hub id (default train; see `lipo.data.hf_datasets`)."""
    if fmt not in _ROW_IMPORTERS:
        raise DataError(f"--format: unknown format '{fmt}' (choose from {', '.join(_ROW_IMPORTERS)})")
    if not str(output).endswith(".parquet"):
        raise DataError(f"output {output} must be a .parquet file")
    left_out: Counter = Counter()
    values_left_out: Counter = Counter()
    files = [f for s in ([source] if isinstance(source, str) else source) for f in source_files(s, split)]
    if fmt == "ranked" and _is_message_export(files):
        messages, report = read_records(files, message_row, MESSAGE_SCHEMA, on_invalid)
        rows = oasst_lists(messages, left_out)
        if not rows:
            raise DataError(f"{files[0].name}: no prompter message has 2 or more ranked assistant replies")
        table = pa.Table.from_pylist(rows, schema=LIST_SCHEMA)
        report.rows_valid = table.num_rows  # lists, not messages, are what was written
        out = write_lists(table, output)
    else:
        report, out = ReadReport(), Path(output)
        schema = _reading_schema(LIST_SCHEMA, _SOURCE_COLUMNS[fmt])
        with atomic_file(out) as tmp, pq.ParquetWriter(tmp, LIST_SCHEMA) as writer:
            to_row = _ROW_IMPORTERS[fmt](left_out, values_left_out)
            for table in stream_records(files, to_row, schema, on_invalid, report):
                writer.write_table(table.select(LIST_SCHEMA.names).cast(LIST_SCHEMA))
    result = ImportReport(fmt, out, report, left_out, values_left_out)
    if not quiet:
        print(f"[lipo] {result.summary()}", flush=True)
        for line in report.first_errors:
            print(f"[lipo]   skipped: {line}", flush=True)
    return result
