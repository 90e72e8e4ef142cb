"""Hugging Face `datasets` inputs: `save_to_disk` folders read with pyarrow alone, and hub ids through `datasets`.

The folders are written by hand in the layout `datasets`' `save_to_disk` writes (read from its source:
`state.json` with `_data_files`, `dataset_info.json`, `data-NNNNN-of-NNNNN.arrow` Arrow IPC streams, and
`dataset_dict.json` + one folder per split for a DatasetDict), so no test needs `datasets` or the network. The hub
path is tested with a stand-in `datasets` module whose `load_dataset` returns local cache files.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pyarrow as pa
import pytest

from lipo.data.importers import import_file
from lipo.data.readers import read_lists
from lipo.errors import DataError

MESSAGES = pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))  # `datasets`' field order
UFB_SCHEMA = pa.schema([("prompt", pa.string()), ("prompt_id", pa.string()), ("chosen", MESSAGES),
                        ("rejected", MESSAGES), ("messages", MESSAGES), ("score_chosen", pa.float64()),
                        ("score_rejected", pa.float64())])


def ufb_row(q: str, good: str, bad: str, sc: float = 8.0, sr: float = 2.0, asked: str | None = None) -> dict:
    def conv(reply):
        return [{"content": asked or q, "role": "user"}, {"content": reply, "role": "assistant"}]
    return {"prompt": q, "prompt_id": q, "chosen": conv(good), "rejected": conv(bad), "messages": conv(good),
            "score_chosen": sc, "score_rejected": sr}


def write_arrow(path: Path, rows: list[dict], schema: pa.Schema, file_format: bool = False) -> Path:
    table = pa.Table.from_pylist(rows, schema=schema)
    with pa.OSFile(str(path), "wb") as sink:
        writer = (pa.ipc.new_file if file_format else pa.ipc.new_stream)(sink, schema)
        for batch in table.to_batches(max_chunksize=2):  # several record batches, as `datasets` writes them
            writer.write_batch(batch)
        writer.close()
    return path


def save_dataset(folder: Path, shards: list[list[dict]], schema: pa.Schema = UFB_SCHEMA, split: str = "train") -> Path:
    folder.mkdir(parents=True)
    names = [f"data-{i:05d}-of-{len(shards):05d}.arrow" for i in range(len(shards))]
    for name, rows in zip(names, shards):
        write_arrow(folder / name, rows, schema)
    state = {"_data_files": [{"filename": n} for n in names], "_fingerprint": "0", "_format_columns": None,
             "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False, "_split": split}
    (folder / "state.json").write_text(json.dumps(state))
    (folder / "dataset_info.json").write_text(json.dumps({"citation": "", "features": {}}))
    return folder


def save_dataset_dict(folder: Path, splits: dict[str, list[list[dict]]]) -> Path:
    for split, shards in splits.items():
        save_dataset(folder / split, shards, split=split)
    (folder / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}))
    return folder


def lists_of(tmp_path: Path, source: str, **kwargs) -> tuple[list[dict], object]:
    report = import_file("pairs", source, str(tmp_path / "out.parquet"), quiet=True, **kwargs)
    return read_lists([tmp_path / "out.parquet"])[0].to_pylist(), report


def test_dataset_dict_folder_split_and_shards_in_state_order(tmp_path):
    saved = save_dataset_dict(tmp_path / "ufb", {
        "train_prefs": [[ufb_row("Q1", "a1", "b1"), ufb_row("Q2", "a2", "b2"), ufb_row("Q3", "a3", "b3")],
                        [ufb_row("Q4", "a4", "b4", asked="not Q4"), ufb_row("Q5", "a5", "b5", sc=5.0, sr=4.5)]],
        "test_prefs": [[ufb_row("T1", "x", "y")]]})
    lists, report = lists_of(tmp_path, str(saved), split="train_prefs")
    assert [r["prompt_messages"][0]["content"] for r in lists] == ["Q1", "Q2", "Q3", "Q5"]
    assert lists[3]["responses"] == ["a5", "b5"] and lists[3]["rewards"] == [5.0, 4.5]
    assert lists[0]["prompt_messages"] == [{"role": "user", "content": "Q1"}]
    # rows are numbered per shard file, like Parquet files
    assert report.read.first_errors == [f"{saved}/train_prefs/data-00001-of-00002.arrow: row 1: field 'chosen': "
                                        "its last user message 'not Q4' does not match 'prompt' 'Q4'"]
    test_lists, _ = lists_of(tmp_path, str(saved), split="test_prefs")
    assert test_lists[0]["responses"] == ["x", "y"]
    with pytest.raises(DataError, match=r"no split 'train' in this DatasetDict \(splits: train_prefs, test_prefs\)"):
        lists_of(tmp_path, str(saved))  # default split: train


def test_dataset_folder_reads_as_arrow_files_anywhere_lists_are_read(tmp_path):
    rows = [{"prompt": "p", "responses": ["a", "b"], "labels": [1.0, 0.0]},
            {"prompt": "q", "responses": ["c", "d"], "labels": [0.0, 1.0]}]
    schema = pa.schema([("prompt", pa.string()), ("responses", pa.list_(pa.string())),
                        ("labels", pa.list_(pa.float64()))])
    folder = save_dataset(tmp_path / "lists", [rows[:1], rows[1:]], schema)
    table, report = read_lists([folder])  # state.json / dataset_info.json are not read as JSONL
    assert table.column("prompt").to_pylist() == ["p", "q"] and len(report.files) == 2
    ipc_file = write_arrow(tmp_path / "lists.arrow", rows, schema, file_format=True)  # the IPC *file* format
    assert read_lists([ipc_file])[0].column("responses").to_pylist() == [["a", "b"], ["c", "d"]]
    save_dataset_dict(tmp_path / "dd", {"train": [[ufb_row("Q", "a", "b")]]})
    with pytest.raises(DataError, match=r"a Hugging Face DatasetDict folder with splits \['train'\]"):
        read_lists([tmp_path / "dd"])
    with pytest.raises(DataError, match="a Dataset folder of split 'train', not 'test'"):
        lists_of(tmp_path, str(folder), split="test")
    with pytest.raises(DataError, match="--split test: only a Hugging Face datasets folder or hub id has splits"):
        lists_of(tmp_path, str(ipc_file), split="test")


def test_hub_id_without_datasets_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError
    with pytest.raises(DataError, match=r"org/no-such-set: no such file or folder; .*\(pip install datasets\)"):
        lists_of(tmp_path, "org/no-such-set")
    with pytest.raises(DataError, match="file not found: org/pairs.jsonl"):  # a missing file is not a hub id
        lists_of(tmp_path, "org/pairs.jsonl")


def test_hub_id_reads_the_cache_files_datasets_loaded(tmp_path, monkeypatch):
    cache = write_arrow(tmp_path / "ultrafeedback_binarized-train_prefs.arrow", [ufb_row("Q", "a", "b")], UFB_SCHEMA)
    calls = []

    def load_dataset(path, split):
        calls.append((path, split))
        if split != "train_prefs":
            raise ValueError(f'Unknown split "{split}". Should be one of [\'train_prefs\'].')
        return types.SimpleNamespace(cache_files=[{"filename": str(cache)}], _indices=None)

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    lists, _ = lists_of(tmp_path, "HuggingFaceH4/ultrafeedback_binarized", split="train_prefs")
    assert lists[0]["responses"] == ["a", "b"] and lists[0]["rewards"] == [8.0, 2.0]
    with pytest.raises(DataError, match=r"cannot load split 'train' from the Hugging Face hub \(ValueError: Unknown"):
        lists_of(tmp_path, "HuggingFaceH4/ultrafeedback_binarized")
    assert calls == [("HuggingFaceH4/ultrafeedback_binarized", "train_prefs"),
                     ("HuggingFaceH4/ultrafeedback_binarized", "train")]
