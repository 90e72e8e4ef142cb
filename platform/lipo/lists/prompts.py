"""The prompts build-lists reads: the validator, the per-prompt seeds and the shard descriptor.

    validator = PromptValidator(cfg, tokenizer)      # `to_row` for lipo.data.readers (read_unit / read_records)
    table, report = read_prompts(cfg, tokenizer)     # in-process reading, for tests and benchmarks
    shards = plan_shards(table, cfg.seed, cfg.output.shard_size)   # in-memory shards, likewise

A build validates its prompts in a distributed pass instead (`lipo.lists.staging`), which writes them, with their
seeds, to staged Parquet files whose row groups are the shards.

Input rows (JSONL or Parquet, see `lipo.data.readers` for files, directories and globs):
- `prompt`: text, or chat messages `[{role, content}]` (also accepted as a `prompt_messages` column); required, and
  validated by the same rules as list records (`lipo.data.records`);
- `id` (optional): a stable key; a row without one gets `content_id(prompt, [])` (with generate: null,
  `content_id(prompt, responses)`, the id `read_lists` would give the same row);
- `reference` (optional): the SFT target, a string;
- `responses` (required when `generate` is null) and the `score.field` column (with the `existing` scorer).

A bad row raises `DataError` naming the file, row and field (`prompts.jsonl: row 7: field 'prompt': must not be
empty`), or with `on_invalid: skip` is dropped and counted by reason; a duplicate id is a bad row. A prompt longer
than `input.max_prompt_tokens` (measured with the reference tokenizer, through its chat template) is kept and
flagged `prompt_truncated` (generation and training both keep its last tokens), or with `input.long_prompts:
invalid` is a bad row.

Shards are chunks of up to S = `output.shard_size` consecutive valid prompts of one input unit (a JSONL file, or
Parquet row groups), numbered in input order; with one input unit this is shard i = prompts [i*S, (i+1)*S). Each
prompt's sampling seed is a hash of (config seed, prompt id), never of its row position, so a prompt gets the same
candidates whichever shard, batch or rerun it lands in.

Each shard carries two digests: `ids_sha` (its prompt ids in order: the pipeline checks that a block is exactly its
shard) and `content_sha` (every column of its validated prompt rows: id, prompt or messages, reference, responses,
the scorer's column, seed, truncation flag). The content digest is what a rerun compares (`lipo.lists.manifest`), so
editing a prompt's text under the same id redoes that prompt's shard instead of keeping a stale list.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from lipo.data.readers import ReadReport, read_records
from lipo.data.records import (LIST_SCHEMA, InvalidRecord, Problem, content_id, number_text, record_to_row,
                               row_to_record)
from lipo.data.tokenize import encode_prompt
from lipo.lists.config import BuildListsConfig

_PLACEHOLDER = ["a", "b"]  # stands in for responses when only the prompt of a row is being validated


def prompt_schema(field: str) -> pa.Schema:
    """Columns of the validated prompt table; `field` is the `existing` scorer's input column."""
    return pa.schema([
        ("id", pa.string()),
        ("prompt", pa.string()),
        LIST_SCHEMA.field("prompt_messages"),
        ("reference", pa.string()),
        ("responses", pa.list_(pa.string())),
        (field, pa.list_(pa.float64())),
        ("prompt_truncated", pa.bool_()),
    ])


def _bad(field: str, message: str, reason: str) -> InvalidRecord:
    return InvalidRecord([Problem(field, message, reason)])


def _type_name(v: Any) -> str:
    return "null" if v is None else type(v).__name__


class PromptValidator:
    """`to_row` for `read_records`: one input row -> (id, prompt-table row); raises `InvalidRecord`."""

    def __init__(self, cfg: BuildListsConfig, tokenizer):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.needs_responses = cfg.generate is None
        self.field = cfg.score.field if cfg.score.name == "existing" else None

    def __call__(self, item: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        responses = item.get("responses") if self.needs_responses else _PLACEHOLDER
        n = len(responses) if isinstance(responses, list) else 2
        # The list-record validator checks prompt, chat messages, id and responses with the messages lists use.
        rec = row_to_record({"id": item.get("id"), "prompt": item.get("prompt"),
                             "prompt_messages": item.get("prompt_messages"), "responses": responses,
                             "labels": [0.0] * n})
        reference = item.get("reference")
        if reference is not None and not isinstance(reference, str):
            raise _bad("reference", f"must be a string, got {_type_name(reference)}", "reference: not a string")
        given = self._given(item, n) if self.field else None
        rid = rec.id if item.get("id") is not None else content_id(
            rec.prompt, list(rec.responses) if self.needs_responses else [])
        row = record_to_row(rec)
        n_tokens = len(encode_prompt(row["prompt"] if row["prompt"] is not None else row["prompt_messages"],
                                     self.tokenizer))
        limit = self.cfg.input.max_prompt_tokens
        if n_tokens > limit and self.cfg.input.long_prompts == "invalid":
            raise _bad("prompt", f"{n_tokens} tokens, over input.max_prompt_tokens={limit}", "prompt: too long")
        out = {"id": rid, "prompt": row["prompt"], "prompt_messages": row["prompt_messages"],
               "reference": reference, "responses": row["responses"] if self.needs_responses else None,
               "prompt_truncated": n_tokens > limit}
        if self.field:
            out[self.field] = given
        return rid, out

    def _given(self, item: Mapping[str, Any], n: int) -> list[float]:
        f = self.field
        values = item.get(f)
        if values is None:
            raise _bad(f, "missing (the existing scorer reads it)", f"{f}: missing")
        if not isinstance(values, list):
            raise _bad(f, f"must be a list of numbers, got {_type_name(values)}", f"{f}: not a list")
        if len(values) != n:
            raise _bad(f, f"length {len(values)} != responses length {n}", f"{f}: length mismatch")
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise _bad(f"{f}[{i}]", f"must be a number, got {_type_name(v)}", f"{f}: not a number")
            if not math.isfinite(v):
                raise _bad(f"{f}[{i}]", f"must be finite, got {number_text(v)}", f"{f}: not finite")
        return [float(v) for v in values]


def given_column(table: pa.Table, field: str) -> pa.Table:
    """The scorer's input column renamed `given`, the name the pipeline's rows use."""
    return table.rename_columns(["given" if n == field else n for n in table.column_names])


def read_prompts(cfg: BuildListsConfig, tokenizer) -> tuple[pa.Table, ReadReport]:
    """Validated prompts (`prompt_schema` columns, the scorer column renamed `given`) and what was skipped, read in
    this process: for tests and benchmarks. A build reads them distributed (`lipo.lists.staging`)."""
    table, report = read_records(cfg.input.prompts, PromptValidator(cfg, tokenizer), prompt_schema(cfg.score.field),
                                 cfg.on_invalid)
    if cfg.input.limit is not None:
        table = table.slice(0, cfg.input.limit)
    return given_column(table, cfg.score.field), report


def prompt_seed(seed: int, prompt_id: str) -> int:
    """A 32-bit sampling seed from the config seed and the prompt id (stable across Python runs and machines)."""
    return int(hashlib.sha256(f"{seed}\x00{prompt_id}".encode()).hexdigest()[:8], 16)


@dataclass(frozen=True)
class Shard:
    """One shard: up to `output.shard_size` consecutive valid prompts of one input unit, numbered globally.

    In a build it is a small descriptor: the prompts sit in row group `row_group` of the staged file of unit `unit`
    (`lipo.lists.staging`), less the rows at `skip` (later copies of duplicate ids under `on_invalid: skip`) and
    cut to `rows` (`input.limit`). `table` holds the rows themselves only for in-memory shards (`plan_shards`:
    tests and benchmarks)."""

    index: int
    ids_sha: str  # hash of the shard's prompt ids, in order: the pipeline's check that a block is this shard
    rows: int
    unit: int = -1
    row_group: int = -1
    skip: tuple[int, ...] = ()
    table: pa.Table | None = None
    content_sha: str = ""  # hash of the shard's prompt rows, every column: what a rerun compares (content_digest)

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}"


def ids_digest(ids: list[str]) -> str:
    return hashlib.sha1("\n".join(ids).encode("utf-8")).hexdigest()[:16]


def content_digest(table: pa.Table) -> str:
    """Hash of a shard's prompt rows (every column, in order), as canonical JSON: the same rows give the same digest on
    any machine and pyarrow version, and any edit (text, messages, reference, responses, scores, id) changes it."""
    h = hashlib.sha1()
    for batch in table.to_batches():
        for row in batch.to_pylist():
            h.update(json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
            h.update(b"\n")
    return h.hexdigest()[:16]


def with_seeds(table: pa.Table, seed: int) -> pa.Table:
    """`table` with its `seed` column: each prompt's sampling seed, from its id (`prompt_seed`)."""
    seeds = [prompt_seed(seed, i) for i in table.column("id").to_pylist()]
    return table.append_column("seed", pa.array(seeds, pa.int64()))


def plan_shards(table: pa.Table, seed: int, shard_size: int) -> list[Shard]:
    """In-memory shards of an already-read prompt table (`read_prompts`), for tests and benchmarks."""
    table = with_seeds(table, seed)
    slices = [table.slice(start, shard_size) for start in range(0, table.num_rows, shard_size)]
    return [Shard(i, ids_digest(t.column("id").to_pylist()), t.num_rows, table=t, content_sha=content_digest(t))
            for i, t in enumerate(slices)]
