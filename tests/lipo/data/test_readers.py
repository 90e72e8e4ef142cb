"""read_lists / write_lists on real files written to tmp_path."""

import gzip
import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lipo.data.readers import read_lists, resolve_paths, write_lists
from lipo.data.records import LIST_SCHEMA, row_to_record
from lipo.errors import DataError

CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "naïve 2+2? ✓"}]


def good(i, **kw):
    r = {"prompt": f"q{i}", "responses": [f"a{i}", f"b{i}"], "labels": [1.0, 0.0]}
    r.update(kw)
    return r


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def expect_error(paths, message):
    with pytest.raises(DataError) as exc:
        read_lists(paths)
    assert str(exc.value) == message
    assert "\n" not in str(exc.value)


def as_records(table):
    return [row_to_record(r) for r in table.to_pylist()]


def test_jsonl_reads_back_equal_with_ids_and_chat(tmp_path):
    rows = [good(0), good(1, prompt=CHAT, id="chat-1", rewards=[0.3, -2.0], reference="x"), good(2)]
    p = write_jsonl(tmp_path / "train.jsonl", rows)
    table, report = read_lists(p)
    assert table.schema.equals(LIST_SCHEMA)
    assert as_records(table) == [row_to_record(r) for r in rows]
    assert table.column("id").to_pylist()[1] == "chat-1"
    assert all(i for i in table.column("id").to_pylist())
    assert table.column("prompt_messages").to_pylist()[1] == CHAT
    assert (report.rows_read, report.rows_valid, report.rows_skipped) == (3, 3, 0)


def test_parquet_in_input_form_and_written_form(tmp_path):
    # Input form, as an exporter writes it: text prompts in `prompt`, or chat messages as a list<struct> `prompt`.
    plain, chat = tmp_path / "plain.parquet", tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist([good(i, source="web") for i in range(5)]), plain)
    pq.write_table(pa.Table.from_pylist([good(i, prompt=CHAT) for i in range(5, 7)]), chat)
    table, report = read_lists([str(plain), str(chat)])
    assert table.column("prompt").to_pylist() == [f"q{i}" for i in range(5)] + [None, None]
    assert table.column("prompt_messages").to_pylist()[5:] == [CHAT, CHAT]
    assert report.rows_valid == 7

    # Written form (LIST_SCHEMA) round-trips chat prompts and optional columns, and a table rewrites unchanged.
    rows = [good(0, prompt=CHAT, ref_logps=[-1.5, -9.0]), good(1)]
    out = write_lists([row_to_record(r) for r in rows], tmp_path / "out" / "lists.parquet")
    assert pq.read_schema(out).equals(LIST_SCHEMA)
    again, _ = read_lists(str(out))
    assert as_records(again) == [row_to_record(r) for r in rows]
    assert read_lists(str(write_lists(again, tmp_path / "again.parquet")))[0].equals(again)
    assert [p.name for p in out.parent.iterdir()] == ["lists.parquet"]  # no temp file left behind


@pytest.mark.parametrize(
    "bad, field_problem",
    [
        ({"prompt": "q", "responses": ["a", "b"]}, "field 'labels': missing"),
        (good(9, labels=[1.0, 1.5]), "field 'labels[1]': must be in [0, 1], got 1.5"),
        (good(9, labels=[1.0, 0.5, 0.0]), "field 'labels': length 3 != responses length 2"),
        (good(9, responses=["only"], labels=[1.0]), "field 'responses': a list needs at least 2 responses, got 1"),
        (good(9, prompt=""), "field 'prompt': must not be empty"),
    ],
)
def test_bad_row_in_third_line_names_file_row_field(tmp_path, bad, field_problem):
    p = write_jsonl(tmp_path / "train.jsonl", [good(0), good(1), bad, good(3)])
    expect_error(p, f"{p}: row 3: {field_problem}")


def test_nan_label_literal(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_text(json.dumps(good(0)) + '\n{"prompt": "q", "responses": ["a", "b"], "labels": [1.0, NaN]}\n')
    expect_error(str(p), f"{p}: row 2: field 'labels[1]': must be finite, got NaN")


def test_non_utf8_line(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_bytes(json.dumps(good(0)).encode() + b'\n{"prompt": "\xff\xfe", "responses": []}\n')
    expect_error(str(p), f"{p}: row 2: field '<json>': line is not valid UTF-8 (byte 0xff at offset 12)")


def test_malformed_json_and_non_object(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_text(json.dumps(good(0)) + '\n{"prompt": "q" "responses": []}\n')
    expect_error(str(p), f"{p}: row 2: field '<json>': malformed JSON: Expecting ',' delimiter at column 16")
    p.write_text(json.dumps([good(0)]) + "\n")
    expect_error(str(p), f"{p}: row 1: field '<json>': expected one JSON object per line, got list")


def test_blank_lines_count_toward_row_numbers_and_bom_is_ignored(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + (json.dumps(good(0)) + "\n\n" + json.dumps(good(1, labels=[2, 0]))).encode())
    expect_error(str(p), f"{p}: row 3: field 'labels[0]': must be in [0, 1], got 2.0")


def test_bad_row_in_second_of_two_files(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [good(0), good(1), good(2)])
    b = tmp_path / "b.parquet"
    pq.write_table(pa.Table.from_pylist([good(3), good(4, labels=[0.5, None])]), b)
    expect_error([a, str(b)], f"{b}: row 2: field 'labels[1]': must be a number, got null")


def test_empty_missing_and_unknown_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    expect_error(str(empty), f"{empty}: has no rows")
    expect_error(str(tmp_path / "nope.jsonl"), f"file not found: {tmp_path / 'nope.jsonl'}")
    csv = tmp_path / "lists.csv"
    csv.write_text("prompt,responses\n")
    expect_error(str(csv), f"{csv}: unknown file extension '.csv' "
                           "(expected .jsonl, .json (plain, .gz or .zst), .parquet or .arrow)")
    empty_pq = tmp_path / "empty.parquet"
    pq.write_table(LIST_SCHEMA.empty_table(), empty_pq)
    expect_error(str(empty_pq), f"{empty_pq}: has no rows")
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="junk.parquet: not a readable Parquet file"):
        read_lists(str(junk))


def test_duplicate_ids_are_invalid(tmp_path):
    p = write_jsonl(tmp_path / "train.jsonl", [good(0), good(1), good(0, labels=[0.0, 1.0])])
    table, _ = read_lists(write_jsonl(tmp_path / "ok.jsonl", [good(0), good(1)]))
    first_id = table.column("id")[0].as_py()
    expect_error(p, f"{p}: row 3: field 'id': duplicate id '{first_id}' (first at {p} row 1)")


def test_skip_counts_by_reason_and_keeps_valid_rows(tmp_path):
    rows = [good(0), good(1, labels=[float("nan"), 0.0]), good(2), good(3, responses=["x"], labels=[1.0]),
            good(4, labels=[1.0, float("inf")])]
    a = write_jsonl(tmp_path / "a.jsonl", rows)
    b = tmp_path / "b.jsonl"
    b.write_text(json.dumps(good(5)) + "\n{oops\n")
    table, report = read_lists([a, str(b)], on_invalid="skip")
    assert table.column("prompt").to_pylist() == ["q0", "q2", "q5"]
    assert (report.rows_read, report.rows_valid, report.rows_skipped) == (7, 3, 4)
    assert report.rows_read == report.rows_valid + report.rows_skipped
    assert dict(report.skipped_by_reason) == {"labels: not finite": 2, "responses: too few": 1, "<json>: malformed": 1}
    assert report.first_errors[0] == f"{a}: row 2: field 'labels[0]': must be finite, got NaN"
    assert len(report.first_errors) == 4
    assert (report.files[a].rows_read, report.files[a].rows_skipped, report.files[str(b)].rows_valid) == (5, 3, 1)
    assert report.summary() == (
        "read 7 rows from 2 files: 3 valid, 4 skipped (labels: not finite 2, <json>: malformed 1, responses: too few 1)"
    )
    metrics = report.as_metrics()
    assert metrics["data/rows_read"] == 7.0 and metrics["data/rows_skipped"] == 4.0
    assert metrics["data/skipped/labels_not_finite"] == 2.0 and metrics["data/skipped/json_malformed"] == 1.0
    assert all(isinstance(v, float) for v in metrics.values())


def test_skip_with_no_valid_rows_is_an_error(tmp_path):
    p = write_jsonl(tmp_path / "bad.jsonl", [good(0, labels=[3, 0])])
    with pytest.raises(DataError, match=r"no valid rows: read 1 rows from 1 file: 0 valid, 1 skipped"):
        read_lists(p, on_invalid="skip")


def test_directories_and_globs_sorted_with_hidden_files_skipped(tmp_path):
    d = tmp_path / "lists"
    (d / "sub").mkdir(parents=True)
    write_jsonl(d / "b.jsonl", [good(1)])
    write_jsonl(d / "a.json", [good(0)])
    write_lists([row_to_record(good(2))], d / "sub" / "c.parquet")
    (d / "_SUCCESS").write_text("")
    (d / ".hidden.jsonl").write_text("not json\n")
    (d / "README.md").write_text("# notes\n")
    # a file of no readable format in a directory is refused by name, never skipped unseen (issue 16, point 9)
    with pytest.raises(DataError, match=rf"^{d / 'README.md'}: unknown file extension '\.md' .* it was found in {d},"):
        read_lists(str(d))
    (d / "README.md").rename(d / "_README.md")  # the documented way to keep it there: a hidden name
    table, report = read_lists(str(d))
    assert table.column("prompt").to_pylist() == ["q0", "q1", "q2"]
    assert len(report.files) == 3
    assert [f.name for f in resolve_paths(str(d / "*.json*"))] == [str(d / "a.json"), str(d / "b.jsonl")]
    assert resolve_paths([str(d / "a.json"), str(d)])[0].name == str(d / "a.json")  # each file once
    assert len(resolve_paths([str(d / "a.json"), str(d)])) == 3
    expect_error(str(d / "*.txt"),
                 f"no .jsonl, .json (plain, .gz or .zst), .parquet or .arrow files match {d / '*.txt'}")
    (tmp_path / "void").mkdir()
    expect_error(str(tmp_path / "void"),
                 f"directory {tmp_path / 'void'} has no .jsonl, .json (plain, .gz or .zst), .parquet or .arrow files")


def test_write_lists_validates(tmp_path):
    with pytest.raises(DataError, match=r"must be a \.parquet file"):
        write_lists([row_to_record(good(0))], tmp_path / "x.jsonl")
    with pytest.raises(DataError) as exc:
        write_lists([good(0), good(1, labels=[1.0])], tmp_path / "x.parquet")
    assert str(exc.value) == "write_lists: row 2: field 'labels': length 1 != responses length 2"
    with pytest.raises(DataError, match="no rows to write"):
        write_lists([], tmp_path / "x.parquet")
    assert not os.listdir(tmp_path)


def test_readers_import_no_torch_or_ray():
    code = "import sys, lipo.data.readers; assert not {'torch', 'ray', 'transformers'} & set(sys.modules)"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# ------------------------------------------------------------------------ compressed JSONL, no file skipped unseen


def _compressed(path, rows, codec):
    """`rows` as JSONL compressed with pyarrow's codec ("gzip" / "zstd"): the streams lipo reads them with."""
    with pa.CompressedOutputStream(str(path), codec) as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows).encode())
    return path


def test_compressed_jsonl_in_a_directory_is_read_not_skipped(tmp_path):
    """Issue 16, point 9: a directory with a .jsonl.gz read "24 rows from 1 file", losing the gzip file's rows."""
    assert pa.Codec.is_available("zstd") and pa.Codec.is_available("gzip")  # pyarrow's own codecs: no new dependency
    d = tmp_path / "lists"
    d.mkdir()
    write_jsonl(d / "a.jsonl", [good(0), good(1)])
    _compressed(d / "b.jsonl.gz", [good(2), good(3), good(4)], "gzip")
    _compressed(d / "c.JSON.zst", [good(5)], "zstd")
    table, report = read_lists(str(d))
    assert sorted(table.column("prompt").to_pylist()) == [f"q{i}" for i in range(6)]
    assert report.summary() == "read 6 rows from 3 files: 6 valid, 0 skipped"
    assert [(f.format, f.compression) for f in resolve_paths(str(d))] == [
        ("jsonl", None), ("jsonl", "gzip"), ("jsonl", "zstd")]
    # row numbers inside a compressed file are its decompressed line numbers
    bad = _compressed(tmp_path / "bad.jsonl.gz", [good(0), good(1, labels=[1.0, float("nan")])], "gzip")
    expect_error(str(bad), f"{bad}: row 2: field 'labels[1]': must be finite, got NaN")
    fake = tmp_path / "fake.jsonl.zst"
    fake.write_bytes(b"this is not zstd at all\n")
    with pytest.raises(DataError, match=rf"^{fake}: cannot decompress \(zstd\): "):
        read_lists(str(fake))
    whole = gzip.compress("".join(json.dumps(good(i)) + "\n" for i in range(3000)).encode())
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(whole[: len(whole) // 2])  # a truncated download: an error, not the first half read quietly
    with pytest.raises(DataError, match=rf"^{cut}: cannot decompress \(gzip\): "):
        read_lists(str(cut))


def test_unreadable_files_found_by_a_listing_are_refused_by_name(tmp_path):
    d = tmp_path / "lists"
    d.mkdir()
    write_jsonl(d / "a.jsonl", [good(0)])
    (d / "b.jsonl.bz2").write_bytes(b"BZh")  # a compression lipo does not read: named, not skipped
    with pytest.raises(DataError) as exc:
        read_lists(str(d))
    assert str(exc.value).startswith(f"{d / 'b.jsonl.bz2'}: compressed file ('.jsonl' + '.bz2') not read; lipo reads "
                                     ".jsonl and .json compressed as .gz or .zst")
    assert f"it was found in {d}" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(DataError, match=r"b\.jsonl\.bz2: compressed file"):
        read_lists(str(d / "*"))  # a glob that finds it refuses it too
    assert len(read_lists(str(d / "*.jsonl"))[0]) == 1  # a glob that leaves it out is the user's explicit choice
    gz_parquet = tmp_path / "x.parquet.gz"
    gz_parquet.write_bytes(b"\x1f\x8b")
    expect_error(str(gz_parquet), f"{gz_parquet}: compressed file ('.parquet' + '.gz') not read; lipo reads .jsonl "
                                  "and .json compressed as .gz or .zst (Parquet and Arrow compress inside the file)")


def test_compressed_jsonl_from_a_bucket(s3):
    """The same streams on a pyarrow-filesystem URI (a local S3 server)."""
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(f"{s3}/gz-lists")
    with fs.open_output_stream(f"{root}/a.jsonl.gz", compression=None) as f:
        f.write(gzip.compress("".join(json.dumps(good(i)) + "\n" for i in range(3)).encode()))
    with fs.open_output_stream(f"{root}/b.jsonl.zst", compression="zstd") as f:
        f.write((json.dumps(good(3)) + "\n").encode())
    table, report = read_lists(f"{s3}/gz-lists")
    assert table.column("prompt").to_pylist() == ["q0", "q1", "q2", "q3"] and len(report.files) == 2
