"""The tokenised-rows cache: built once by the distributed pass, reused by a rerun, rebuilt when the data, the
limits or the tokenizer change; workers read exactly the rows `task.tokenize` made, by index; duplicate ids across
files are refused or skipped and counted, with the file and row."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lipo.config import load_config
from lipo.data.readers import read_lists
from lipo.errors import DataError, LipoError
from lipo.models.tiny import byte_tokenizer
from lipo.training.config import TrainConfig
from lipo.training.tasks import ListwiseTask
from lipo.training.token_cache import TokenRows, token_cache

pytestmark = pytest.mark.usefixtures("ray_local")


def lists(n, start=0, with_ref=False):
    out = []
    for i in range(start, start + n):
        row = {"id": f"l{i}", "prompt": f"p{i}", "responses": [f"a{i}", f"bb{i}", f"c{i}"], "labels": [1.0, 0.5, 0.0]}
        if with_ref:
            row["ref_logps"] = [-1.0 - i, -2.0, -3.0]
        out.append(row)
    return out


def lists_file(path, n=5, with_ref=False, start=0):
    path.write_text("".join(json.dumps(r) + "\n" for r in lists(n, start, with_ref)))
    return path


def task_of(tmp_path, data, *overrides):
    return ListwiseTask(load_config(TrainConfig, None, [f"output_dir={tmp_path / 'runs'}", f"data.train=[{data}]",
                                                        *overrides]))


def expected_rows(task, path, tok):
    rows, _ = task.tokenize(read_lists(str(path))[0].to_pylist(), tok)
    return rows


def test_rows_round_trip_and_rerun_reuses(tmp_path):
    data = lists_file(tmp_path / "lists.jsonl", with_ref=True)
    task, tok = task_of(tmp_path, data), byte_tokenizer()
    built = token_cache(task, tok)
    assert not built.reused and built.rows == 5 and built.has_ref
    assert built.metrics["data/lists_kept"] == 5.0 and built.metrics["data/rows_read"] == 5.0
    rows = TokenRows(built.path)
    expected = expected_rows(task, data, tok)
    assert len(rows) == 5 and rows.take([3, 0]) == [expected[3], expected[0]]  # by index, in the order asked
    again = token_cache(task_of(tmp_path, data), tok)
    assert again.reused and again.path == built.path and again.metrics == built.metrics


def test_many_units_keep_input_order_and_counts(tmp_path):
    """Parquet row groups and JSONL files tokenised by two actors come back as one table in input order."""
    d = tmp_path / "data"
    d.mkdir()
    lists_file(d / "a.jsonl", n=3)
    pq.write_table(pa.Table.from_pylist(lists(20000, start=100)), d / "b.parquet", row_group_size=5000)
    task, tok = task_of(tmp_path, d), byte_tokenizer()
    built = token_cache(task, tok)
    rows = TokenRows(built.path)
    assert built.rows == len(rows) == 20003
    assert [r["id"] for r in rows.take([0, 2, 3, 20002])] == ["l0", "l2", "l100", "l20099"]
    assert rows.take([3])[0] == expected_rows(task, d / "b.parquet", tok)[0]
    assert built.metrics["data/files"] == 2.0 and built.metrics["data/lists_in"] == 20003.0


def test_changed_data_limits_or_tokenizer_build_a_new_cache(tmp_path):
    data = lists_file(tmp_path / "lists.jsonl")
    tok = byte_tokenizer()
    first = token_cache(task_of(tmp_path, data), tok)
    assert not first.has_ref
    assert token_cache(task_of(tmp_path, data, "data.max_response_tokens=2"), tok).path != first.path
    assert token_cache(task_of(tmp_path, data, "data.tokenize_workers=1"), tok).path == first.path  # not a key
    lists_file(data, n=4)  # an edited file: new size and modification time
    os.utime(data, ns=(os.stat(data).st_atime_ns, os.stat(data).st_mtime_ns + 10**9))
    edited = token_cache(task_of(tmp_path, data), tok)
    assert not edited.reused and edited.path != first.path and edited.rows == 4
    other = byte_tokenizer()
    other.chat_template = "{{ messages[0]['content'] }}"
    assert token_cache(task_of(tmp_path, data), other).path != edited.path


def test_no_usable_rows_is_one_line(tmp_path):
    data = tmp_path / "lists.jsonl"
    data.write_text(json.dumps({"prompt": "p", "responses": ["same", "same"], "labels": [1.0, 0.0]}) + "\n")
    with pytest.raises(LipoError, match="no usable rows left"):
        token_cache(task_of(tmp_path, data), byte_tokenizer())


def test_a_bad_row_names_file_row_and_field(tmp_path):
    rows = lists(4)
    rows[2]["labels"] = [1.0, "x", 0.0]
    data = tmp_path / "bad.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError) as err:
        token_cache(task_of(tmp_path, data), byte_tokenizer())
    assert str(err.value).startswith(f"{data}: row 3: field 'labels[1]'")
    skipped = token_cache(task_of(tmp_path, data, "data.on_invalid=skip"), byte_tokenizer())
    assert skipped.rows == 3 and skipped.metrics["data/rows_skipped"] == 1.0


def test_duplicate_ids_across_files(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    lists_file(d / "a.jsonl", n=3)
    lists_file(d / "b.jsonl", n=3, start=2)  # l2 again, at row 1 of b.jsonl
    with pytest.raises(DataError) as err:
        token_cache(task_of(tmp_path, d), byte_tokenizer())
    assert str(err.value) == (f"{d / 'b.jsonl'}: row 1: field 'id': duplicate id 'l2' (first at {d / 'a.jsonl'} row 3)")
    built = token_cache(task_of(tmp_path, d, "data.on_invalid=skip"), byte_tokenizer())
    rows = TokenRows(built.path)
    assert built.rows == len(rows) == 5 and [r["id"] for r in rows.take(list(range(5)))] == [
        "l0", "l1", "l2", "l3", "l4"]
    assert built.metrics["data/skipped/id_duplicate"] == 1.0 and built.metrics["data/rows_valid"] == 5.0


def test_file_uri_input(tmp_path):
    data = lists_file(tmp_path / "lists.jsonl")
    built = token_cache(task_of(tmp_path, f"file://{data}"), byte_tokenizer())
    assert built.rows == 5


def test_cache_on_object_storage_is_copied_once_per_node(tmp_path, s3, monkeypatch):
    """data.cache_dir on s3://: the parts and meta go to the bucket; a worker maps a local copy of them."""
    import lipo.training.token_cache as tc

    monkeypatch.setattr(tc, "LOCAL_COPIES", tmp_path / "node-local")
    data = lists_file(tmp_path / "lists.jsonl", with_ref=True)
    task, tok = task_of(tmp_path, data, f"data.cache_dir={s3}/{tmp_path.name}/cache"), byte_tokenizer()
    built = token_cache(task, tok)
    assert built.path.startswith(f"{s3}/{tmp_path.name}/cache/tokens-") and built.rows == 5
    rows = TokenRows(built.path)
    assert rows.take([4, 1]) == [expected_rows(task, data, tok)[i] for i in (4, 1)]
    assert (tmp_path / "node-local" / built.path.rsplit("/", 1)[1] / "meta.json").is_file()
    assert token_cache(task, tok).reused
