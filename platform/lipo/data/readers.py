"""Read and validate list datasets (JSONL / Parquet) and write them as Parquet.

    table, report = read_lists(["data/train.jsonl", "data/more/"], on_invalid="skip")
    print(report.summary())              # one line; report.as_metrics() goes to MLflow
    write_lists(table, "out/lists.parquet")

Inputs: files, directories, globs and pyarrow-filesystem URIs (`lipo.data.files`). Rows are numbered from 1 in both
formats: the line number in JSONL (blank lines are skipped but still counted), the row index + 1 in Parquet. Every
row is validated with `ListRecord`; an invalid row raises `DataError` with one line:

    data/train.jsonl: row 7: field 'labels[1]': must be finite, got NaN

or, with `on_invalid="skip"`, is counted in the `ReadReport` (by the reason of its first problem) and dropped.
Duplicate ids are invalid too (ids key joins such as cached reference log-probs). The valid rows come back as
one Arrow table in `LIST_SCHEMA` form with every id filled (see `lipo.data.records`).

Three ways to read:
- `read_records` / `read_lists`: one streaming pass in this process, for what is small by nature (a held-out set,
  a test), returned as one table.
- `stream_records`: the same pass (same checks, duplicate ids included) yielding tables of a few thousand rows, so
  that a caller writing them out as they come (`lipo import`) holds one batch and the seen ids, never the data set.
- `read_unit`: one `ReadUnit` (a JSONL file, or Parquet row groups) validated on its own, as the tasks of a Ray Data
  read do (`lipo.data.distributed`). Its report merges with the others' (`ReadReport.merge`); duplicate ids across
  units are then found from id hashes (`lipo.data.distributed`), since no single task sees every id.

`atomic_file` gives a writer a hidden temporary path that replaces the target only when writing succeeded.
`write_lists` writes ONE Parquet file (not a directory of shards): a single file is simplest to version, hash and
pass between stages. It validates every row and replaces the file atomically, so a crashed write never leaves half
a dataset behind.

This module imports no torch, transformers or Ray (tests/lipo/data/test_readers.py checks), so the CLI stays quick.
Tests: tests/lipo/data/test_readers.py.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from lipo.data.files import PathSpec, ReadUnit, plan_units, resolve_paths, unit_rows
from lipo.data.records import LIST_SCHEMA, InvalidRecord, ListRecord, Problem, record_to_row, row_to_record
from lipo.errors import DataError

MAX_FIRST_ERRORS = 5
_BATCH_ROWS = 4096
_COLUMNS = frozenset(LIST_SCHEMA.names)

__all__ = ["ReadReport", "atomic_file", "list_row", "read_lists", "read_records", "read_unit", "resolve_paths",
           "stream_records", "write_lists"]


@dataclass
class FileCounts:
    rows_read: int = 0
    rows_valid: int = 0
    rows_skipped: int = 0


@dataclass
class ReadReport:
    """What `read_lists` saw: totals, skipped rows by reason, the first few error messages, per-file counts."""

    rows_read: int = 0
    rows_valid: int = 0
    rows_skipped: int = 0
    skipped_by_reason: dict[str, int] = field(default_factory=Counter)
    first_errors: list[str] = field(default_factory=list)
    files: dict[str, FileCounts] = field(default_factory=dict)

    def merge(self, other: "ReadReport") -> None:
        """Add another unit's counts (units merge in input order, so `first_errors` stay the first ones)."""
        self.rows_read += other.rows_read
        self.rows_valid += other.rows_valid
        self.rows_skipped += other.rows_skipped
        self.skipped_by_reason.update(other.skipped_by_reason)
        self.first_errors = (self.first_errors + other.first_errors)[:MAX_FIRST_ERRORS]
        for name, c in other.files.items():
            mine = self.files.setdefault(name, FileCounts())
            mine.rows_read += c.rows_read
            mine.rows_valid += c.rows_valid
            mine.rows_skipped += c.rows_skipped

    def to_json(self) -> dict[str, Any]:
        return {"rows_read": self.rows_read, "rows_valid": self.rows_valid, "rows_skipped": self.rows_skipped,
                "skipped_by_reason": dict(self.skipped_by_reason), "first_errors": self.first_errors,
                "files": {k: [c.rows_read, c.rows_valid, c.rows_skipped] for k, c in self.files.items()}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ReadReport":
        return cls(d["rows_read"], d["rows_valid"], d["rows_skipped"], Counter(d["skipped_by_reason"]),
                   list(d["first_errors"]), {k: FileCounts(*v) for k, v in d["files"].items()})

    def summary(self) -> str:
        """One line, e.g. `read 10 rows from 2 files: 8 valid, 2 skipped (labels: not finite 2)`."""
        n_files = len(self.files)
        line = (f"read {self.rows_read} rows from {n_files} file{'s' if n_files != 1 else ''}: "
                f"{self.rows_valid} valid, {self.rows_skipped} skipped")
        if self.skipped_by_reason:
            reasons = sorted(self.skipped_by_reason.items(), key=lambda kv: (-kv[1], kv[0]))
            line += " (" + ", ".join(f"{r} {c}" for r, c in reasons) + ")"
        return line

    def as_metrics(self) -> dict[str, float]:
        """Flat numeric metrics for MLflow, e.g. `data/rows_read`, `data/skipped/labels_not_finite`."""
        out = {
            "data/files": float(len(self.files)),
            "data/rows_read": float(self.rows_read),
            "data/rows_valid": float(self.rows_valid),
            "data/rows_skipped": float(self.rows_skipped),
            "data/skip_fraction": self.rows_skipped / self.rows_read if self.rows_read else 0.0,
        }
        for reason, count in self.skipped_by_reason.items():
            # MLflow keys allow only [A-Za-z0-9_./ -]; "labels: not finite" -> "labels_not_finite".
            out["data/skipped/" + re.sub(r"[^A-Za-z0-9]+", "_", reason).strip("_")] = float(count)
        return out


# ---------------------------------------------------------------------------------------------------- reading


def list_row(item: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    rec = row_to_record(item)
    return rec.id, record_to_row(rec)


class _Collector:
    """Validates rows one at a time: raises or counts the bad ones, buffers the good ones into Arrow batches.

    `to_row(item) -> (id, row)` validates one item (raising `InvalidRecord`) and returns it in `schema` form.
    """

    def __init__(self, on_invalid: str, to_row: Callable[[Mapping[str, Any]], tuple[str, dict[str, Any]]] = list_row,
                 schema: pa.Schema = LIST_SCHEMA, dedupe: bool = True):
        self.on_invalid, self.dedupe = on_invalid, dedupe
        self.to_row, self.schema = to_row, schema
        self.report = ReadReport()
        self._rows: list[dict[str, Any]] = []
        self._tables: list[pa.Table] = []
        self._seen: dict[str, tuple[str, int]] = {}  # id -> (file, row) where first seen

    def add(self, path: str, n: int, item: Any) -> None:
        counts = self.report.files[path]
        counts.rows_read += 1
        self.report.rows_read += 1
        if isinstance(item, Problem):
            return self._reject(path, n, [item])
        try:
            rid, row = self.to_row(item)
        except InvalidRecord as exc:
            return self._reject(path, n, exc.problems)
        first = self._seen.setdefault(rid, (path, n)) if self.dedupe else (path, n)
        if first != (path, n):
            dup = Problem("id", f"duplicate id '{rid}' (first at {first[0]} row {first[1]})", "id: duplicate")
            return self._reject(path, n, [dup])
        counts.rows_valid += 1
        self.report.rows_valid += 1
        self._rows.append(row)
        if len(self._rows) >= _BATCH_ROWS:
            self._flush()

    def _reject(self, path: str, n: int, problems: list[Problem]) -> None:
        first = problems[0]
        more = len(problems) - 1
        suffix = f" (+{more} more problem{'s' if more > 1 else ''})" if more else ""
        message = f"{path}: row {n}: field '{first.field}': {first.message}{suffix}"
        if self.on_invalid == "error":
            raise DataError(message)
        self.report.rows_skipped += 1
        self.report.files[path].rows_skipped += 1
        self.report.skipped_by_reason[first.reason] += 1  # first problem only, so reasons sum to rows_skipped
        if len(self.report.first_errors) < MAX_FIRST_ERRORS:
            self.report.first_errors.append(message)

    def _flush(self) -> None:
        if self._rows:
            self._tables.append(pa.Table.from_pylist(self._rows, schema=self.schema))
            self._rows = []

    def drain(self) -> Iterator[pa.Table]:
        while self._tables:
            yield self._tables.pop(0)

    def table(self) -> pa.Table:
        self._flush()
        return pa.concat_tables(self._tables) if self._tables else self.schema.empty_table()


def read_lists(
    paths: PathSpec | Sequence[PathSpec], on_invalid: Literal["error", "skip"] = "error"
) -> tuple[pa.Table, ReadReport]:
    """Read, validate and concatenate list files; returns (LIST_SCHEMA table of valid rows, report)."""
    return read_records(paths, list_row, LIST_SCHEMA, on_invalid)


def read_records(
    paths: PathSpec | Sequence[PathSpec],
    to_row: Callable[[Mapping[str, Any]], tuple[str, dict[str, Any]]],
    schema: pa.Schema,
    on_invalid: Literal["error", "skip"] = "error",
) -> tuple[pa.Table, ReadReport]:
    """The generic reader behind `read_lists`: any record type, given its validator and Arrow schema.

    `to_row(item) -> (id, row)` raises `InvalidRecord` for a bad item; other stages (SFT demonstrations, prompts)
    reuse the same file/row/field error reporting and skip counting this way.
    """
    report = ReadReport()
    tables = list(stream_records(paths, to_row, schema, on_invalid, report))
    return (pa.concat_tables(tables) if len(tables) > 1 else tables[0]), report


def stream_records(
    paths: PathSpec | Sequence[PathSpec],
    to_row: Callable[[Mapping[str, Any]], tuple[str, dict[str, Any]]],
    schema: pa.Schema,
    on_invalid: Literal["error", "skip"],
    report: ReadReport,
) -> Iterator[pa.Table]:
    """`read_records`' pass, yielding the valid rows in tables of up to a few thousand rows as they are validated;
    counts go into `report`. Raises `DataError` at the end if no row was valid."""
    if on_invalid not in ("error", "skip"):
        raise ValueError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")
    collector = _Collector(on_invalid, to_row, schema)
    collector.report = report
    wanted = _wanted(schema)
    for unit in plan_units(resolve_paths(paths)):
        for _ in _collect(collector, unit, wanted):
            yield from collector.drain()
    collector._flush()
    yield from collector.drain()
    if report.rows_valid == 0:
        first = report.first_errors[0] if report.first_errors else ""
        raise DataError(f"no valid rows: {report.summary()}; first error: {first}")


def _wanted(schema: pa.Schema) -> frozenset[str]:
    return frozenset(schema.names) | {"prompt", "prompt_messages"}


def _collect(collector: _Collector, unit: ReadUnit, wanted: frozenset[str]) -> Iterator[None]:
    """Add the unit's rows to `collector`, yielding after each so the caller can drain full batches."""
    collector.report.files.setdefault(unit.name, FileCounts())
    for n, item in unit_rows(unit, wanted):
        collector.add(unit.name, n, item)
        yield
    if unit.rows is None and collector.report.files[unit.name].rows_read == 0:  # a JSONL file (Parquet: planning)
        raise DataError(f"{unit.name}: has no rows")


def read_unit(
    unit: ReadUnit,
    to_row: Callable[[Mapping[str, Any]], tuple[str, dict[str, Any]]],
    schema: pa.Schema,
    on_invalid: Literal["error", "skip"],
    report: ReadReport,
) -> Iterator[pa.Table]:
    """One unit's valid rows (`schema` columns) in tables of a few thousand rows, counted into `report` as they go.

    Duplicate ids are not checked here: they may sit in different units (see `lipo.data.distributed`)."""
    collector = _Collector(on_invalid, to_row, schema, dedupe=False)
    collector.report = report
    report.files.setdefault(unit.name, FileCounts())
    for n, item in unit_rows(unit, _wanted(schema)):
        collector.add(unit.name, n, item)
        while collector._tables:
            yield collector._tables.pop(0)
    collector._flush()
    yield from collector._tables
    if unit.rows is None and report.files[unit.name].rows_read == 0:  # a JSONL file (Parquet: at planning)
        raise DataError(f"{unit.name}: has no rows")


def valid_row_number(unit: ReadUnit, to_row: Callable[[Mapping[str, Any]], tuple[str, dict[str, Any]]],
                     schema: pa.Schema, k: int) -> tuple[int, str]:
    """(row number in its file, id) of the unit's k-th (0-based) valid row: for messages about a row that a later
    check (duplicate ids across units) rejects."""
    seen = -1
    for n, item in unit_rows(unit, _wanted(schema)):
        if isinstance(item, Problem):
            continue
        try:
            rid, _ = to_row(item)
        except InvalidRecord:
            continue
        seen += 1
        if seen == k:
            return n, rid
    raise ValueError(f"{unit.name} has no valid row {k}")


# ---------------------------------------------------------------------------------------------------- writing


def _valid_rows(data: pa.Table | Iterable[ListRecord | Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    items: Iterable[Any] = data.to_pylist() if isinstance(data, pa.Table) else data
    seen: set[str] = set()
    for n, item in enumerate(items, start=1):
        try:
            rec = item if isinstance(item, ListRecord) else row_to_record(item)
        except InvalidRecord as exc:
            raise DataError(f"write_lists: row {n}: {exc}") from None
        if rec.id in seen:
            raise DataError(f"write_lists: row {n}: field 'id': duplicate id '{rec.id}'")
        seen.add(rec.id)
        yield record_to_row(rec)


def write_lists(data: pa.Table | Iterable[ListRecord | Mapping[str, Any]], path: PathSpec) -> Path:
    """Validate and write lists to ONE Parquet file with LIST_SCHEMA (atomic replace); returns the path."""
    out = Path(path)
    if out.suffix.lower() != ".parquet":
        raise DataError(f"write_lists: output {out} must be a .parquet file")
    table = pa.Table.from_pylist(list(_valid_rows(data)), schema=LIST_SCHEMA)
    if table.num_rows == 0:
        raise DataError(f"write_lists: no rows to write to {out}")
    with atomic_file(out) as tmp:
        pq.write_table(table, tmp)
    return out


@contextmanager
def atomic_file(path: PathSpec) -> Iterator[Path]:
    """A temporary path beside `path` to write to; it replaces `path` only if the block ends without an error."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")  # hidden, so a directory read never picks it up
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
