"""Read and validate list datasets (JSONL / Parquet) and write them as Parquet.

    table, report = read_lists(["data/train.jsonl", "data/more/"], on_invalid="skip")
    print(report.summary())              # one line; report.as_metrics() goes to MLflow
    write_lists(table, "out/lists.parquet")

Inputs: files, directories (every *.jsonl / *.json / *.parquet below, recursively, sorted; names starting with `.` or
`_` are skipped) and glob patterns. `.json` is read as JSON Lines like `.jsonl`: one object per line. Rows are
numbered from 1 in both formats: the line number in JSONL (blank lines are skipped but still counted), the row
index + 1 in Parquet. Every row is validated with `ListRecord`; an invalid row raises `DataError` with one line:

    data/train.jsonl: row 7: field 'labels[1]': must be finite, got nan

or, with `on_invalid="skip"`, is counted in the `ReadReport` (by the reason of its first problem) and dropped.
Duplicate ids are invalid too (ids key joins such as cached reference log-probs). The valid rows come back as
one Arrow table in `LIST_SCHEMA` form with every id filled (see `lipo.data.records`).

Why validation is a streaming pass on the driver rather than a Ray Data `map_batches`: it reports the exact file
and row number of a bad row (Ray Data's readers lose both once blocks are split and fused), it fails before any
cluster work starts (no worker start-up or GPU time for a typo in row 7), and it streams (JSONL line by line,
Parquet batch by batch) so a bad row late in a big file costs no more memory than a good one. List datasets are
text, small next to a training run, so one driver pass is cheap. The stages hand the validated table (or rows made
from it) to Ray themselves.

`write_lists` writes ONE Parquet file (not a directory of shards): Ray Data re-shards on read anyway, and a single
file is simplest to version, hash and pass between stages. It validates every row and replaces the file
atomically, so a crashed write never leaves half a dataset behind.

This module imports no torch, transformers or Ray (tests/lipo/data/test_readers.py checks), so the CLI stays quick.
Tests: tests/lipo/data/test_readers.py.
"""

from __future__ import annotations

import codecs
import glob
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from lipo.data.records import LIST_SCHEMA, InvalidRecord, ListRecord, Problem, record_to_row, row_to_record
from lipo.errors import DataError

JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
MAX_FIRST_ERRORS = 5
_BATCH_ROWS = 4096
_COLUMNS = frozenset(LIST_SCHEMA.names)
_GLOB_CHARS = frozenset("*?[")

PathSpec = str | os.PathLike[str]


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


# ---------------------------------------------------------------------------------------------------- inputs


def _format_of(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    what = f"unknown file extension '{suffix}'" if suffix else "no file extension"
    raise DataError(f"{path}: {what} (expected .jsonl, .json or .parquet)")


def _is_data_file(name: str) -> bool:
    return Path(name).suffix.lower() in JSONL_SUFFIXES + PARQUET_SUFFIXES


def _files_under(directory: str) -> list[str]:
    found = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith((".", "_"))]  # .ipynb_checkpoints, _temporary, ...
        found += [os.path.join(root, n) for n in names if not n.startswith((".", "_")) and _is_data_file(n)]
    return sorted(found, key=lambda p: os.path.relpath(p, directory))


def _expand(spec: str) -> list[str]:
    if os.path.isdir(spec):
        files = _files_under(spec)
        if not files:
            raise DataError(f"directory {spec} has no .jsonl, .json or .parquet files")
        return files
    if os.path.isfile(spec):
        _format_of(spec)  # an explicitly named file with an unknown extension is an error, not skipped
        return [spec]
    if _GLOB_CHARS & set(spec):
        files = []
        for match in sorted(glob.glob(spec, recursive=True)):
            files += _files_under(match) if os.path.isdir(match) else [match] if _is_data_file(match) else []
        if not files:
            raise DataError(f"no .jsonl, .json or .parquet files match {spec}")
        return files
    raise DataError(f"file not found: {spec}")


def resolve_paths(paths: PathSpec | Sequence[PathSpec]) -> list[str]:
    """Files, directories and globs -> the data files to read, in order, each once."""
    specs = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not specs:
        raise DataError("no input paths given")
    out, seen = [], set()
    for spec in specs:
        for path in _expand(os.fspath(spec)):
            key = os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                out.append(path)
    return out


def _jsonl_rows(path: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object or Problem); binary reading keeps line numbers exact and catches bad UTF-8."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the with below; open errors need their own message
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror})") from None
    with f:
        for n, raw in enumerate(f, start=1):
            if n == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield n, Problem("<json>", f"line is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset "
                                           f"{exc.start})", "<json>: not utf-8")
                continue
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                yield n, Problem("<json>", f"malformed JSON: {exc.msg} at column {exc.colno}", "<json>: malformed")
                continue
            if not isinstance(obj, dict):
                yield n, Problem("<json>", f"expected one JSON object per line, got {type(obj).__name__}",
                                 "<json>: not an object")
                continue
            yield n, obj


def _parquet_rows(path: str, wanted: frozenset[str] = _COLUMNS) -> Iterator[tuple[int, Any]]:
    """(1-based row number, row dict), batch by batch; only the `wanted` columns are read."""
    try:
        pf = pq.ParquetFile(path)
        columns = [c for c in pf.schema_arrow.names if c in wanted]
        if not columns:
            found = ", ".join(pf.schema_arrow.names) or "none"
            raise DataError(f"{path}: none of the expected columns {sorted(wanted)} (found: {found})")
        n = 0
        for batch in pf.iter_batches(batch_size=_BATCH_ROWS, columns=columns):
            for row in batch.to_pylist():
                n += 1
                yield n, row
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})".replace("\n", " ")) from None


# ---------------------------------------------------------------------------------------------------- reading


def _list_row(item: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    rec = row_to_record(item)
    return rec.id, record_to_row(rec)


class _Collector:
    """Validates rows one at a time: raises or counts the bad ones, buffers the good ones into Arrow batches.

    `to_row(item) -> (id, row)` validates one item (raising `InvalidRecord`) and returns it in `schema` form.
    """

    def __init__(self, on_invalid: str, to_row: Callable[[Mapping[str, Any]], tuple[str, dict[str, Any]]] = _list_row,
                 schema: pa.Schema = LIST_SCHEMA):
        self.on_invalid = on_invalid
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
        first = self._seen.setdefault(rid, (path, n))
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

    def table(self) -> pa.Table:
        self._flush()
        return pa.concat_tables(self._tables) if self._tables else self.schema.empty_table()


def read_lists(
    paths: PathSpec | Sequence[PathSpec], on_invalid: Literal["error", "skip"] = "error"
) -> tuple[pa.Table, ReadReport]:
    """Read, validate and concatenate list files; returns (LIST_SCHEMA table of valid rows, report)."""
    return read_records(paths, _list_row, LIST_SCHEMA, on_invalid)


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
    if on_invalid not in ("error", "skip"):
        raise ValueError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")
    collector = _Collector(on_invalid, to_row, schema)
    wanted = frozenset(schema.names) | {"prompt", "prompt_messages"}
    for path in resolve_paths(paths):
        collector.report.files[path] = FileCounts()
        rows = _jsonl_rows(path) if _format_of(path) == "jsonl" else _parquet_rows(path, wanted)
        for n, item in rows:
            collector.add(path, n, item)
        if collector.report.files[path].rows_read == 0:
            raise DataError(f"{path}: has no rows")
    table = collector.table()
    if table.num_rows == 0:
        first = collector.report.first_errors[0] if collector.report.first_errors else ""
        raise DataError(f"no valid rows: {collector.report.summary()}; first error: {first}")
    return table, collector.report


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
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")  # hidden, so a directory read never picks it up
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
