"""Where data files are and how to read them in pieces: local paths, globs and pyarrow-filesystem URIs.

    files = resolve_paths(["data/train.jsonl", "s3://bucket/lists/", "gs://b/x/*.parquet"])   # [DataFile]
    units = plan_units(files)             # [ReadUnit]: a JSONL file, or a run of Parquet row groups
    for n, item in unit_rows(unit): ...   # (1-based row number in its file, row dict or Problem)

A path is a local file, directory or glob, or a URI that `pyarrow.fs.FileSystem.from_uri` opens (`file://`,
`s3://`, `gs://`, `hdfs://`, `abfs://`; the object stores need their usual credentials in the environment).
Directories are read recursively in sorted order; names starting with `.` or `_` are skipped (`_manifest.json`,
`_SUCCESS`, `.ipynb_checkpoints`). Messages name a file as the user wrote it (`data/train.jsonl`,
`s3://bucket/lists/part-00000.parquet`).

A `ReadUnit` is the piece of input that one task of a distributed read validates: a whole JSONL file (its line
numbers are only known by reading it from the start), or consecutive row groups of a Parquet file, at least
`UNIT_ROWS` rows, whose first row number comes from the file's footer. Planning reads footers, never rows, so the
driver's work grows with the number of files, not rows. Parallelism is therefore per JSONL file and per Parquet row
group: a data set of one large JSONL file is read by one task; write many files, or Parquet with row groups of
about 10^4 rows, to spread the work (documented in the README, "Running at scale").

This module imports no torch, transformers or Ray.
Tests: tests/lipo/data/test_files.py.
"""

from __future__ import annotations

import codecs
import fnmatch
import glob
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lipo.data.records import Problem
from lipo.errors import DataError

JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
UNIT_ROWS = 8192  # Parquet row groups are grouped into units of at least this many rows
_BATCH_ROWS = 4096
_GLOB_CHARS = frozenset("*?[")

PathSpec = str | os.PathLike[str]


def is_uri(spec: str) -> bool:
    return "://" in spec


def open_fs(spec: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI; a local path is made absolute (Ray workers do not
    share the driver's working directory)."""
    if not is_uri(spec):
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(spec))
    try:
        return pafs.FileSystem.from_uri(spec)
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise DataError(f"{spec}: cannot open this location ({exc})".replace("\n", " ")) from None


def _child(spec: str, root: str, path: str) -> str:
    """How to name `path` (found under `root` in the filesystem of `spec`) in messages: in the user's terms."""
    if not is_uri(spec):
        return os.path.join(spec, os.path.relpath(path, root)) if path != root else spec
    scheme = spec.split("://", 1)[0]
    return f"{scheme}://{path}"


@dataclass(frozen=True)
class DataFile:
    name: str  # as the user would write it: what messages show
    path: str  # inside its filesystem (absolute for local files)
    format: str  # jsonl | parquet
    size: int
    mtime_ns: int

    def open_fs(self) -> tuple[pafs.FileSystem, str]:
        return open_fs(self.name)[0], self.path


def _format_of(name: str) -> str:
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    what = f"unknown file extension '{suffix}'" if suffix else "no file extension"
    raise DataError(f"{name}: {what} (expected .jsonl, .json or .parquet)")


def _is_data_file(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in JSONL_SUFFIXES + PARQUET_SUFFIXES


def _hidden(rel: str) -> bool:
    return any(part.startswith((".", "_")) for part in PurePosixPath(rel).parts)


def _data_file(spec: str, info: pafs.FileInfo, name: str) -> DataFile:
    return DataFile(name, info.path, _format_of(name), info.size or 0, info.mtime_ns or 0)


def _under(spec: str, fs: pafs.FileSystem, root: str) -> list[DataFile]:
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    found = [(os.path.relpath(i.path, root), i) for i in infos if i.type == pafs.FileType.File]
    return [_data_file(spec, i, _child(spec, root, i.path)) for rel, i in sorted(found, key=lambda x: x[0])
            if not _hidden(rel) and _is_data_file(rel)]


def _glob(spec: str, fs: pafs.FileSystem, pattern: str) -> list[DataFile]:
    if not is_uri(spec):
        matches = sorted(glob.glob(os.path.expanduser(spec), recursive=True))
        out = []
        for m in matches:
            f, p = open_fs(m)
            info = f.get_file_info(p)
            out += _under(m, f, p) if info.type == pafs.FileType.Directory else (
                [_data_file(m, info, m)] if _is_data_file(m) else [])
        return out
    parts = PurePosixPath(pattern).parts
    fixed = next(i for i, p in enumerate(parts) if _GLOB_CHARS & set(p))
    base = str(PurePosixPath(*parts[:fixed])) if fixed else "/"
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    hits = sorted(i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatchcase(i.path, pattern)
                  and _is_data_file(i.path) and not _hidden(os.path.relpath(i.path, base)))
    return [_data_file(spec, fs.get_file_info(p), _child(spec, "", p)) for p in hits]


def _expand(spec: str) -> list[DataFile]:
    fs, path = open_fs(spec)
    if _GLOB_CHARS & set(spec):
        files = _glob(spec, fs, path)
        if not files:
            raise DataError(f"no .jsonl, .json or .parquet files match {spec}")
        return files
    try:
        info = fs.get_file_info(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{spec}: cannot read this location ({exc})".replace("\n", " ")) from None
    if info.type == pafs.FileType.Directory:
        files = _under(spec, fs, path)
        if not files:
            raise DataError(f"directory {spec} has no .jsonl, .json or .parquet files")
        return files
    if info.type == pafs.FileType.File:
        return [_data_file(spec, info, spec)]  # a named file with an unknown extension is an error, not skipped
    raise DataError(f"file not found: {spec}")


def resolve_paths(paths: PathSpec | DataFile | Sequence[PathSpec | DataFile]) -> list[DataFile]:
    """Files, directories, globs and URIs -> the data files to read, in order, each once (a `DataFile` stays)."""
    specs = [paths] if isinstance(paths, (str, os.PathLike, DataFile)) else list(paths)
    if not specs:
        raise DataError("no input paths given")
    out, seen = [], set()
    for spec in specs:
        for f in [spec] if isinstance(spec, DataFile) else _expand(os.fspath(spec)):
            key = (f.name.split("://", 1)[0], f.path) if is_uri(f.name) else ("", os.path.realpath(f.path))
            if key not in seen:
                seen.add(key)
                out.append(f)
    return out


# ---------------------------------------------------------------------------------------------------- units


@dataclass(frozen=True)
class ReadUnit:
    file: DataFile
    row_groups: tuple[int, ...] | None  # Parquet: the row groups of this unit; None: the whole file
    first_row: int  # 1-based row number (in its file) of the unit's first row
    rows: int | None  # Parquet: rows in the unit; JSONL: unknown until read

    @property
    def name(self) -> str:
        return self.file.name


def _parquet_units(f: DataFile) -> list[ReadUnit]:
    fs, path = f.open_fs()
    try:
        meta = pq.ParquetFile(fs.open_input_file(path)).metadata
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{f.name}: not a readable Parquet file ({exc})".replace("\n", " ")) from None
    if meta.num_rows == 0:
        raise DataError(f"{f.name}: has no rows")
    units, groups, rows, first = [], [], 0, 1
    for g in range(meta.num_row_groups):
        groups.append(g)
        rows += meta.row_group(g).num_rows
        if rows >= UNIT_ROWS or g == meta.num_row_groups - 1:
            units.append(ReadUnit(f, tuple(groups), first, rows))
            first, groups, rows = first + rows, [], 0
    return units


def plan_units(files: list[DataFile]) -> list[ReadUnit]:
    """The read units of `files`, in input order (Parquet footers are read; JSONL files are not opened)."""
    return [u for f in files for u in (_parquet_units(f) if f.format == "parquet" else [ReadUnit(f, None, 1, None)])]


def _jsonl_rows(f: DataFile) -> Iterator[tuple[int, object]]:
    """(line number, parsed object or Problem); binary reading keeps line numbers exact and catches bad UTF-8."""
    fs, path = f.open_fs()
    try:
        stream = fs.open_input_stream(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{f.name}: cannot read file ({exc})".replace("\n", " ")) from None
    with io.BufferedReader(stream, buffer_size=1 << 20) as lines:
        for n, raw in enumerate(lines, start=1):
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


def _parquet_rows(unit: ReadUnit, wanted: frozenset[str]) -> Iterator[tuple[int, object]]:
    """(1-based row number, row dict), batch by batch; only the `wanted` columns are read."""
    f = unit.file
    fs, path = f.open_fs()
    try:
        pf = pq.ParquetFile(fs.open_input_file(path))
        columns = [c for c in pf.schema_arrow.names if c in wanted]
        if not columns:
            found = ", ".join(pf.schema_arrow.names) or "none"
            raise DataError(f"{f.name}: none of the expected columns {sorted(wanted)} (found: {found})")
        groups = unit.row_groups if unit.row_groups is not None else range(pf.metadata.num_row_groups)
        n = unit.first_row - 1
        for batch in pf.iter_batches(batch_size=_BATCH_ROWS, row_groups=list(groups), columns=columns):
            for row in batch.to_pylist():
                n += 1
                yield n, row
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{f.name}: not a readable Parquet file ({exc})".replace("\n", " ")) from None


def unit_rows(unit: ReadUnit, wanted: frozenset[str]) -> Iterator[tuple[int, object]]:
    """The rows of one unit: (row number in its file, dict or `Problem` for a line that is not a JSON object)."""
    return _jsonl_rows(unit.file) if unit.file.format == "jsonl" else _parquet_rows(unit, wanted)
