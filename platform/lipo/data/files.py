"""Where data files are and how to read them in pieces: local paths, globs and pyarrow-filesystem URIs.

    files = resolve_paths(["data/train.jsonl", "s3://bucket/lists/", "gs://b/x/*.parquet"])   # [DataFile]
    units = plan_units(files)             # [ReadUnit]: a JSONL file, or a run of Parquet row groups
    for n, item in unit_rows(unit): ...   # (1-based row number in its file, row dict or Problem)

A path is a local file, directory or glob, or a URI that `pyarrow.fs.FileSystem.from_uri` opens (`file://`,
`s3://`, `gs://`, `hdfs://`, `abfs://`; the object stores need their usual credentials in the environment).
Directories are read recursively in sorted order; names starting with `.` or `_` are skipped (`_manifest.json`,
`_SUCCESS`, `.ipynb_checkpoints`). Messages name a file as the user wrote it (`data/train.jsonl`,
`s3://bucket/lists/part-00000.parquet`).

Formats, by name: `.jsonl` / `.json` (one JSON object per line), also as `.gz` (gzip) or `.zst` (Zstandard), read
through pyarrow's compressed input streams on any filesystem (one read unit per file, like plain JSONL); `.parquet`
and `.arrow` (they compress inside the file, so `x.parquet.gz` is refused by name, as is `.bz2`, `.zip`, ...).
No silent loss: every file a directory listing or a glob finds (hidden names aside) is read or refused by name. A
`README.md` in a data directory is an error, not skipped, since lipo cannot tell it from data in a format it does not
read (a `.csv`, a `.jsonl.bz2`): move it out, give it a `_` or `.` name, or name the data with a glob.

Hugging Face `datasets` folders: a folder written by `Dataset.save_to_disk` (`state.json`, `dataset_info.json`,
`data-NNNNN-of-NNNNN.arrow`) reads as its Arrow files, in the order `state.json` lists them (`_data_files`); the
JSON files beside them are not data. A `DatasetDict` folder (`dataset_dict.json` and one such folder per split)
needs a split: name its subfolder (`saved/train`), or use `lipo import --split` (`lipo.data.hf_datasets`). The
`.arrow` files are Arrow IPC streams (what `datasets`' ArrowWriter writes); IPC files ("ARROW1" magic) read too.
Their rows are numbered from 1 in each file, like Parquet rows.

A `ReadUnit` is the piece of input that one task of a distributed read validates: a whole JSONL or Arrow file (its row
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

COMPRESSIONS = {".gz": "gzip", ".zst": "zstd"}  # file suffix -> pyarrow codec name; JSONL only
_PLAIN_JSONL = (".jsonl", ".json")
JSONL_SUFFIXES = _PLAIN_JSONL + tuple(p + c for p in _PLAIN_JSONL for c in COMPRESSIONS)
PARQUET_SUFFIXES = (".parquet",)
ARROW_SUFFIXES = (".arrow",)
KNOWN = ".jsonl, .json (plain, .gz or .zst), .parquet or .arrow"
# Suffixes of compressed files of any kind: a refusal names the compression instead of an "unknown extension".
_ANY_COMPRESSION = (".gz", ".gzip", ".zst", ".zstd", ".bz2", ".xz", ".lz4", ".zip", ".7z", ".tar", ".br", ".snappy")
HF_STATE, HF_DICT = "state.json", "dataset_dict.json"  # `datasets`' save_to_disk markers (config.py there)
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
    format: str  # jsonl | parquet | arrow
    size: int
    mtime_ns: int
    compression: str | None = None  # JSONL only: "gzip" | "zstd" (a pyarrow codec name); None: a plain file

    def open_fs(self) -> tuple[pafs.FileSystem, str]:
        return open_fs(self.name)[0], self.path


def format_of(name: str) -> tuple[str, str | None]:
    """(format, compression) of a data file, from its name; a `DataError` naming the file for any other name."""
    lower = name.lower()
    for plain in _PLAIN_JSONL:
        for suffix, codec in COMPRESSIONS.items():
            if lower.endswith(plain + suffix):
                if not pa.Codec.is_available(codec):  # pyarrow can be built without a codec
                    raise DataError(f"{name}: this pyarrow build cannot decompress {codec}; decompress the file")
                return "jsonl", codec
        if lower.endswith(plain):
            return "jsonl", None
    if lower.endswith(PARQUET_SUFFIXES):
        return "parquet", None
    if lower.endswith(ARROW_SUFFIXES):
        return "arrow", None
    suffix = PurePosixPath(lower).suffix
    if suffix in _ANY_COMPRESSION:
        inner = PurePosixPath(lower[: -len(suffix)]).suffix or "no extension"
        raise DataError(f"{name}: compressed file ('{inner}' + '{suffix}') not read; lipo reads .jsonl and .json "
                        "compressed as .gz or .zst (Parquet and Arrow compress inside the file)")
    what = f"unknown file extension '{suffix}'" if suffix else "no file extension"
    raise DataError(f"{name}: {what} (expected {KNOWN})")


def _listed(spec: str, info: pafs.FileInfo, name: str) -> DataFile:
    """A file that a directory listing or a glob found: read, or refused by name (never skipped unseen)."""
    try:
        return _data_file(spec, info, name)
    except DataError as exc:
        raise DataError(f"{exc}; it was found in {spec}, and every file found there is read: move it out, give it "
                        "a name starting with '_' or '.', or name the data files with a glob") from None


def _hidden(rel: str) -> bool:
    return any(part.startswith((".", "_")) for part in PurePosixPath(rel).parts)


def _data_file(spec: str, info: pafs.FileInfo, name: str) -> DataFile:
    fmt, compression = format_of(name)
    return DataFile(name, info.path, fmt, info.size or 0, info.mtime_ns or 0, compression)


def read_json_object(fs: pafs.FileSystem, path: str, name: str) -> dict:
    try:
        with fs.open_input_stream(path) as f:
            data = json.loads(f.read().decode("utf-8"))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataError(f"{name}: not a readable JSON file ({exc})".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise DataError(f"{name}: expected a JSON object")
    return data


def saved_dataset(spec: str, fs: pafs.FileSystem, root: str) -> list[DataFile] | None:
    """The Arrow files of a `save_to_disk` Dataset folder; None if `root` is no `datasets` folder; a DatasetDict
    folder is an error naming its splits (the caller picks one)."""
    state, splits = (fs.get_file_info(f"{root}/{n}") for n in (HF_STATE, HF_DICT))
    if splits.type == pafs.FileType.File:
        names = read_json_object(fs, splits.path, _child(spec, root, splits.path)).get("splits")
        raise DataError(f"{spec}: a Hugging Face DatasetDict folder with splits {names}: name a split's subfolder "
                        f"({spec.rstrip('/')}/SPLIT) or pass --split to lipo import")
    if state.type != pafs.FileType.File:
        return None
    data_files = read_json_object(fs, state.path, _child(spec, root, state.path)).get("_data_files")
    if not isinstance(data_files, list) or not data_files:
        raise DataError(f"{_child(spec, root, state.path)}: field '_data_files': missing or empty")
    out = []
    for d in data_files:
        path = f"{root}/{d.get('filename') if isinstance(d, dict) else d}"
        info = fs.get_file_info(path)
        if info.type != pafs.FileType.File:
            raise DataError(f"{_child(spec, root, path)}: listed in {HF_STATE} but not found")
        out.append(DataFile(_child(spec, root, path), path, "arrow", info.size or 0, info.mtime_ns or 0))
    return out


def _under(spec: str, fs: pafs.FileSystem, root: str) -> list[DataFile]:
    saved = saved_dataset(spec, fs, root)
    if saved is not None:
        return saved
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    found = [(os.path.relpath(i.path, root), i) for i in infos if i.type == pafs.FileType.File]
    return [_listed(spec, i, _child(spec, root, i.path)) for rel, i in sorted(found, key=lambda x: x[0])
            if not _hidden(rel)]


def _glob_base(pattern: str, root: str) -> str:
    """The part of a glob before its first wildcard (`root` if none): names below it that are hidden are skipped,
    as in a directory (`data/**/*` does not pick up `data/_SUCCESS`)."""
    parts = PurePosixPath(pattern).parts
    fixed = next(i for i, p in enumerate(parts) if _GLOB_CHARS & set(p))
    return str(PurePosixPath(*parts[:fixed])) if fixed else root


def _glob(spec: str, fs: pafs.FileSystem, pattern: str) -> list[DataFile]:
    if not is_uri(spec):
        expanded = os.path.expanduser(spec)
        base = _glob_base(expanded, ".")
        out = []
        for m in sorted(glob.glob(expanded, recursive=True)):
            if _hidden(os.path.relpath(m, base)):
                continue
            f, p = open_fs(m)
            info = f.get_file_info(p)
            out += _under(m, f, p) if info.type == pafs.FileType.Directory else [_listed(spec, info, m)]
        return out
    base = _glob_base(pattern, "/")
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    hits = sorted(i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatchcase(i.path, pattern)
                  and not _hidden(os.path.relpath(i.path, base)))
    return [_listed(spec, fs.get_file_info(p), _child(spec, "", p)) for p in hits]


def _expand(spec: str) -> list[DataFile]:
    fs, path = open_fs(spec)
    if _GLOB_CHARS & set(spec):
        files = _glob(spec, fs, path)
        if not files:
            raise DataError(f"no {KNOWN} files match {spec}")
        return files
    try:
        info = fs.get_file_info(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{spec}: cannot read this location ({exc})".replace("\n", " ")) from None
    if info.type == pafs.FileType.Directory:
        files = _under(spec, fs, path)
        if not files:
            raise DataError(f"directory {spec} has no {KNOWN} files")
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
    """The read units of `files`, in input order (Parquet footers are read; JSONL and Arrow files are not opened)."""
    return [u for f in files for u in (_parquet_units(f) if f.format == "parquet" else [ReadUnit(f, None, 1, None)])]


def _jsonl_rows(f: DataFile) -> Iterator[tuple[int, object]]:
    """(line number, parsed object or Problem); binary reading keeps line numbers exact and catches bad UTF-8."""
    fs, path = f.open_fs()
    try:
        stream = fs.open_input_stream(path, compression=f.compression)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{f.name}: cannot read file ({exc})".replace("\n", " ")) from None
    with io.BufferedReader(stream, buffer_size=1 << 20) as lines:
        for n, raw in _numbered_lines(f, lines):
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


def _numbered_lines(f: DataFile, lines: io.BufferedReader) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line); a file that fails to decompress (or to read) midway is an error naming it, never a
    read that ends early: a truncated .gz would otherwise lose its tail unseen."""
    try:
        yield from enumerate(lines, start=1)
    except (pa.ArrowException, OSError, EOFError) as exc:
        what = f"cannot decompress ({f.compression})" if f.compression else "cannot read file"
        raise DataError(f"{f.name}: {what}: {exc}".replace("\n", " ")) from None


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


def _arrow_reader(f: DataFile) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """(schema, batches) of an Arrow IPC stream or file; only the schema is read until the batches are."""
    fs, path = f.open_fs()
    source = fs.open_input_file(path)
    if source.read(6) == b"ARROW1":  # the IPC file format; `datasets` writes the stream format (no magic)
        reader = pa.ipc.open_file(source)
        return reader.schema, (reader.get_batch(i) for i in range(reader.num_record_batches))
    source.seek(0)
    stream = pa.ipc.open_stream(source)
    return stream.schema, iter(stream)


def _arrow_rows(f: DataFile, wanted: frozenset[str]) -> Iterator[tuple[int, object]]:
    """(1-based row number, row dict) of an Arrow IPC file, batch by batch; only the `wanted` columns are kept."""
    n = 0
    try:
        schema, batches = _arrow_reader(f)
        columns = [c for c in schema.names if c in wanted]
        if not columns:
            found = ", ".join(schema.names) or "none"
            raise DataError(f"{f.name}: none of the expected columns {sorted(wanted)} (found: {found})")
        for batch in batches:
            for row in batch.select(columns).to_pylist():
                n += 1
                yield n, row
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{f.name}: not a readable Arrow IPC file ({exc})".replace("\n", " ")) from None


def unit_rows(unit: ReadUnit, wanted: frozenset[str]) -> Iterator[tuple[int, object]]:
    """The rows of one unit: (row number in its file, dict or `Problem` for a line that is not a JSON object)."""
    if unit.file.format == "arrow":
        return _arrow_rows(unit.file, wanted)
    return _jsonl_rows(unit.file) if unit.file.format == "jsonl" else _parquet_rows(unit, wanted)


def column_names(f: DataFile) -> list[str] | None:
    """The columns of a Parquet or Arrow file (its schema only), or the keys of a JSONL file's first object (None
    if that line is not a JSON object)."""
    fs, path = f.open_fs()
    if f.format == "parquet":
        return pq.ParquetFile(fs.open_input_file(path)).schema_arrow.names
    if f.format == "arrow":
        try:
            return _arrow_reader(f)[0].names
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{f.name}: not a readable Arrow IPC file ({exc})".replace("\n", " ")) from None
    for _, item in _jsonl_rows(f):
        return list(item) if isinstance(item, dict) else None
    return None
