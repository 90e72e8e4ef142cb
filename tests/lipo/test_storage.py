"""`lipo.storage` and `lipo.data.files` on a local path, a `file://` URI and `s3://` served by a local moto server
(an S3-compatible server that installs from PyPI; the `s3` fixture in conftest.py): the same calls, the same
results."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lipo import storage
from lipo.data.files import plan_units, resolve_paths
from lipo.data.readers import read_lists


def _lists(n, start=0):
    return [{"id": f"l{i}", "prompt": f"q{i}", "responses": ["a", "b"], "labels": [1.0, 0.0]}
            for i in range(start, start + n)]


def _roots(tmp_path, s3_root):
    return [str(tmp_path / "plain"), f"file://{tmp_path / 'uri'}", f"{s3_root}/{tmp_path.name}"]


def test_paths_and_uris(tmp_path):
    assert storage.local(f"file://{tmp_path}") == tmp_path and storage.local("s3://b/x") is None
    assert storage.join("s3://b/x/", "y", "z.json") == "s3://b/x/y/z.json"
    assert storage.join(str(tmp_path), "y") == str(tmp_path / "y")
    assert storage.is_remote_uri("gs://b") and not storage.is_remote_uri("file:///x")
    assert storage.normalize("file:///a/b") == "/a/b" and storage.normalize("s3://a") == "s3://a"


def test_write_read_upload_download_everywhere(tmp_path, s3):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("A")
    (src / "sub" / "b.txt").write_text("B")
    for root in _roots(tmp_path, s3):
        target = storage.join(root, "meta.json")
        assert storage.read_text(target) is None and not storage.exists(target)
        storage.write_bytes(target, b'{"x": 1}')
        assert json.loads(storage.read_text(target)) == {"x": 1} and storage.exists(target)
        storage.upload_dir(src, storage.join(root, "model"))
        if storage.local(root) is None:
            copy = storage.download_dir(storage.join(root, "model"), tmp_path / "copy")
            assert (copy / "a.txt").read_text() == "A" and (copy / "sub" / "b.txt").read_text() == "B"
            assert storage.download_dir(storage.join(root, "model"), tmp_path / "copy") == copy  # made once
        else:
            assert (storage.local(root) / "model" / "sub" / "b.txt").read_text() == "B"


def test_reading_lists_from_a_bucket_dir_and_glob(tmp_path, s3):
    """Directories list recursively in order (names starting with _ or . skipped), globs match, Parquet splits by
    row groups, and messages name the file by its URI."""
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(f"{s3}/lists")
    with fs.open_output_stream(f"{root}/a.jsonl") as f:
        f.write("".join(json.dumps(r) + "\n" for r in _lists(3)).encode())
    with fs.open_output_stream(f"{root}/_manifest.json") as f:
        f.write(b"{}")
    with fs.open_output_stream(f"{root}/sub/b.parquet") as f:
        pq.write_table(pa.Table.from_pylist(_lists(20000, 100)), f, row_group_size=5000)
    files = resolve_paths(f"{s3}/lists")
    assert [f.name for f in files] == [f"{s3}/lists/a.jsonl", f"{s3}/lists/sub/b.parquet"]
    assert [f.name for f in resolve_paths(f"{s3}/lists/sub/*.parquet")] == [f"{s3}/lists/sub/b.parquet"]
    units = plan_units(files)
    assert [(u.first_row, u.rows) for u in units] == [(1, None), (1, 10000), (10001, 10000)]
    table, report = read_lists(f"{s3}/lists")
    assert table.num_rows == 20003 and report.rows_read == 20003
    with fs.open_output_stream(f"{root}/bad/c.jsonl") as f:
        f.write(b'{"prompt": "q", "responses": ["a"], "labels": [1.0]}\n')
    with pytest.raises(Exception, match=f"{s3}/lists/bad/c.jsonl: row 1: field 'responses'"):
        read_lists(f"{s3}/lists/bad")
