"""Lists -> TRL's DPO pairs: `lipo export --format pairs [--pairs all|best-worst] LISTS... OUTPUT`.

    report = export_pairs(["data/lists.parquet"], "data/dpo.parquet", pairs="best-worst")
    print(report.summary())

Columns (TRL's preference format, as `trl.DPOTrainer` reads it):
- `prompt`, `chosen`, `rejected`: strings when the list's prompt is text (TRL's "standard" format); for a chat
  prompt, `prompt` holds its messages and `chosen` / `rejected` one assistant message each ("conversational").
- `score_chosen`, `score_rejected`: the two responses' `rewards` when the list has rewards, else null (the names
  `HuggingFaceH4/ultrafeedback_binarized` uses; `lipo import --format pairs` reads them back as rewards). TRL
  ignores them.

Which pairs (higher label = chosen; equal labels make no pair, since a tie states no preference):
- `all`: every two responses with different labels: K (K - 1) / 2 pairs when all K labels differ. Within a list the
  responses are taken best first (a stable sort by label, so ties keep their order) and pair (i, j) has i before j.
- `best-worst`: one pair per list, the first response with the highest label against the first with the lowest.
A list whose labels are all equal yields no pair and is counted (`lists_without_pair`).

One output holds one kind of prompt: TRL (and Arrow) need one type per column. The first list decides; a list of the
other kind is an error naming it, so a mixed set is exported in two runs (`lipo import` never mixes kinds within one
source layout).

Output by extension: `.parquet` (row groups as the input batches come) or `.jsonl` / `.json` (one JSON object per
line; the score keys only when the list has rewards). Inputs are the list files `lipo train` reads (files, folders,
globs, URIs), validated by `lipo.data.readers.stream_records` (a bad row or a duplicate id is an error naming its
file, row and field: lists come from lipo, so a bad one is not skipped); pairs are written as each batch is read,
atomically, so memory holds one batch.
Tests: tests/lipo/data/test_exporters.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from lipo.data.files import JSONL_SUFFIXES, PathSpec
from lipo.data.readers import ReadReport, atomic_file, list_row, stream_records
from lipo.data.records import LIST_SCHEMA, prompt_of
from lipo.errors import DataError

PairsMode = Literal["all", "best-worst"]
PAIRS_MODES = ("all", "best-worst")
_MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
_SCORES = [("score_chosen", pa.float64()), ("score_rejected", pa.float64())]
PAIR_SCHEMAS = {  # by prompt kind: chat?
    False: pa.schema([("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string()), *_SCORES]),
    True: pa.schema([("prompt", _MESSAGES), ("chosen", _MESSAGES), ("rejected", _MESSAGES), *_SCORES]),
}


@dataclass
class ExportReport:
    output: Path
    mode: str
    read: ReadReport
    pairs: int = 0
    lists_without_pair: int = 0

    def summary(self) -> str:
        line = f"export pairs ({self.mode}): {self.read.rows_valid} lists -> {self.pairs} pairs in {self.output}"
        if self.lists_without_pair:
            line += f"; {self.lists_without_pair} lists made no pair (all labels equal)"
        return line


def pair_indices(labels: Sequence[float], mode: PairsMode) -> list[tuple[int, int]]:
    """(chosen, rejected) response indices of one list; see the module docstring for the order and the ties."""
    if mode == "best-worst":
        best = max(range(len(labels)), key=labels.__getitem__)  # max / min return the first of equals
        worst = min(range(len(labels)), key=labels.__getitem__)
        return [(best, worst)] if labels[best] > labels[worst] else []
    order = sorted(range(len(labels)), key=lambda i: -labels[i])  # best first, stable
    return [(order[a], order[b]) for a in range(len(order)) for b in range(a + 1, len(order))
            if labels[order[a]] > labels[order[b]]]


def list_pairs(row: Mapping[str, Any], mode: PairsMode) -> Iterator[dict[str, Any]]:
    """The TRL pair rows of one LIST_SCHEMA row."""
    prompt, responses, rewards = prompt_of(row), row["responses"], row.get("rewards")
    chat = isinstance(prompt, list)
    for i, j in pair_indices(row["labels"], mode):
        a, b = responses[i], responses[j]
        yield {"prompt": prompt,
               "chosen": [{"role": "assistant", "content": a}] if chat else a,
               "rejected": [{"role": "assistant", "content": b}] if chat else b,
               "score_chosen": rewards[i] if rewards else None, "score_rejected": rewards[j] if rewards else None}


class _PairWriter:
    """Writes pair rows to Parquet or JSONL; the first row fixes the prompt kind."""

    def __init__(self, tmp: Path, jsonl: bool):
        self.tmp, self.jsonl = tmp, jsonl
        self.chat: bool | None = None
        self._sink: Any = None

    def write(self, rows: list[dict[str, Any]], list_id: str) -> None:
        if not rows:
            return
        chat = isinstance(rows[0]["prompt"], list)
        if self.chat is None:
            self.chat = chat
            self._sink = open(self.tmp, "w", encoding="utf-8") if self.jsonl else pq.ParquetWriter(
                self.tmp, PAIR_SCHEMAS[chat])
        elif chat != self.chat:
            kinds = ("a plain-text prompt", "chat prompts") if self.chat else ("a chat prompt", "plain-text prompts")
            raise DataError(f"list '{list_id}' has {kinds[0]} but the lists before it have {kinds[1]}: a TRL "
                            "data set holds one kind; export the two kinds to separate files")
        if self.jsonl:
            for r in rows:
                keep = r if r["score_chosen"] is not None else {k: r[k] for k in ("prompt", "chosen", "rejected")}
                self._sink.write(json.dumps(keep, ensure_ascii=False) + "\n")
        else:
            self._sink.write_table(pa.Table.from_pylist(rows, schema=PAIR_SCHEMAS[chat]))

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close()


def export_pairs(inputs: PathSpec | Sequence[PathSpec], output: PathSpec, pairs: PairsMode = "all",
                 quiet: bool = False) -> ExportReport:
    """Write the preference pairs of the lists in `inputs` to `output` (.parquet or .jsonl) in TRL's columns."""
    if pairs not in PAIRS_MODES:
        raise DataError(f"--pairs: unknown mode '{pairs}' (choose from {', '.join(PAIRS_MODES)})")
    out = Path(output)
    suffix = out.suffix.lower()
    if suffix not in JSONL_SUFFIXES + (".parquet",):
        raise DataError(f"output {out} must be a .parquet, .jsonl or .json file")
    report = ExportReport(out, pairs, ReadReport())
    with atomic_file(out) as tmp:
        writer = _PairWriter(tmp, jsonl=suffix != ".parquet")
        try:
            for table in stream_records(inputs, list_row, LIST_SCHEMA, "error", report.read):
                for row in table.to_pylist():
                    rows = list(list_pairs(row, pairs))
                    report.pairs += len(rows)
                    report.lists_without_pair += not rows
                    writer.write(rows, row["id"])
        finally:
            writer.close()
        if report.pairs == 0:
            raise DataError(f"no pairs to write to {out}: every list's labels are all equal")
    if not quiet:
        print(f"[lipo] {report.summary()}", flush=True)
    return report
