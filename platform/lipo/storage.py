"""Where lipo writes: a local path, a `file://` URI, or object storage (`s3://`, `gs://`, `abfs://`, `hdfs://`)
through `pyarrow.fs`, so one config runs on a laptop and on a cluster whose nodes share only a bucket.

    local("file:///data/runs")            # Path('/data/runs'); None for s3://...
    join("s3://b/runs", "x", "meta.json") # 's3://b/runs/x/meta.json'
    write_bytes(uri, data); read_text(uri); exists(uri); upload_dir(local_dir, uri); download_dir(uri, local_dir)

Writes are atomic either way: locally a hidden temporary name is renamed into place; on an object store a single
PUT is already all-or-nothing (and object stores have no rename), so the object is written directly. Credentials
and endpoints come from the environment as pyarrow reads them (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, ...); on a
cluster, set them in the pods or the job's `runtime_env` so every worker sees them.

Tests: tests/lipo/test_storage.py (local, `file://`, and `s3://` against a local moto server).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit

# pyarrow.fs is imported where it is used: configs import this module, and `lipo --help` stays light.


def is_remote_uri(path: str | os.PathLike) -> bool:
    """`s3://bucket/x`, `gs://...`, `abfs://...`: storage every node reaches. `file://` is a local path."""
    scheme = urlsplit(os.fspath(path)).scheme
    return "://" in os.fspath(path) and len(scheme) > 1 and scheme != "file"


def normalize(spec: str) -> str:
    """`file:///x` -> `/x` (a local path in every respect); anything else unchanged."""
    return spec[len("file://"):] if spec.startswith("file://") else spec


def local(spec: str | os.PathLike) -> Path | None:
    """The absolute local path of `spec`, or None when it is remote."""
    spec = normalize(os.fspath(spec))
    return None if is_remote_uri(spec) else Path(spec).expanduser().resolve()


def join(spec: str | os.PathLike, *parts: str) -> str:
    base = local(spec)
    return str(base.joinpath(*parts)) if base is not None else "/".join([os.fspath(spec).rstrip("/"), *parts])


def _fs(spec: str):
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(spec)


def exists(spec: str) -> bool:
    path = local(spec)
    if path is not None:
        return path.exists()
    import pyarrow.fs as pafs

    fs, p = _fs(spec)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def write_bytes(spec: str, data: bytes) -> None:
    path = local(spec)
    if path is None:
        fs, p = _fs(spec)
        with fs.open_output_stream(p) as out:
            out.write(data)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def read_text(spec: str) -> str | None:
    """The file's text, or None when it does not exist."""
    path = local(spec)
    if path is not None:
        return path.read_text(encoding="utf-8") if path.is_file() else None
    import pyarrow.fs as pafs

    fs, p = _fs(spec)
    if fs.get_file_info(p).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(p) as f:
        return f.read().decode("utf-8")


def upload_dir(src: Path, spec: str) -> None:
    """Copy a local directory's files to `spec` (a remote URI or a local path)."""
    dest = local(spec)
    if dest is not None:
        shutil.copytree(src, dest, dirs_exist_ok=True)
        return
    import pyarrow.fs as pafs

    fs, p = _fs(spec)
    pafs.copy_files(str(src), p, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def download_dir(spec: str, dest: Path) -> Path:
    """A local copy of the directory `spec` at `dest`, made once: copied to a temporary sibling and renamed, so
    two workers of one node that race for it both end with the same whole copy."""
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    import pyarrow.fs as pafs

    fs, p = _fs(spec)
    pafs.copy_files(p, str(tmp), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    try:
        tmp.rename(dest)
    except OSError:  # another worker finished first: its copy is the same
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
