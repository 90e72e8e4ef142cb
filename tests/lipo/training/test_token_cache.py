"""The tokenised-rows cache: built once, reused by a rerun, rebuilt when the data, the limits or the tokenizer
change; workers read exactly the rows `task.rows` made, by index."""

from __future__ import annotations

import json
import os

import pytest

from lipo.config import load_config
from lipo.errors import LipoError
from lipo.models.tiny import byte_tokenizer
from lipo.training.config import TrainConfig
from lipo.training.tasks import ListwiseTask
from lipo.training.token_cache import TokenRows, token_cache


def lists_file(path, n=5, with_ref=False):
    with open(path, "w") as f:
        for i in range(n):
            row = {"id": f"l{i}", "prompt": f"p{i}", "responses": [f"a{i}", f"bb{i}", f"c{i}"],
                   "labels": [1.0, 0.5, 0.0]}
            if with_ref:
                row["ref_logps"] = [-1.0 - i, -2.0, -3.0]
            f.write(json.dumps(row) + "\n")
    return path


def task_of(tmp_path, data, *overrides):
    return ListwiseTask(load_config(TrainConfig, None, [f"output_dir={tmp_path / 'runs'}", f"data.train=[{data}]",
                                                        *overrides]))


def test_rows_round_trip_and_rerun_reuses(tmp_path):
    data = lists_file(tmp_path / "lists.jsonl", with_ref=True)
    task, tok = task_of(tmp_path, data), byte_tokenizer()
    built = token_cache(task, tok)
    assert not built.reused and built.rows == 5 and built.has_ref
    assert built.metrics["data/lists_kept"] == 5.0
    expected, _, _ = task.rows(tok)
    rows = TokenRows(built.path)
    assert len(rows) == 5 and rows.take([3, 0]) == [expected[3], expected[0]]  # by index, in the order asked
    again = token_cache(task_of(tmp_path, data), tok)
    assert again.reused and again.path == built.path and again.metrics == built.metrics


def test_changed_data_limits_or_tokenizer_build_a_new_cache(tmp_path):
    data = lists_file(tmp_path / "lists.jsonl")
    tok = byte_tokenizer()
    first = token_cache(task_of(tmp_path, data), tok)
    assert not first.has_ref
    assert token_cache(task_of(tmp_path, data, "data.max_response_tokens=2"), tok).path != first.path
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
