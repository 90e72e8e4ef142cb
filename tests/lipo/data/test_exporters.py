"""`lipo export --format pairs`: lists -> TRL's DPO columns; hand-computed pairs, ties, and the import round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lipo.data.exporters import export_pairs, pair_indices
from lipo.data.importers import import_file
from lipo.data.readers import read_lists, write_lists
from lipo.errors import DataError

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Best fruit?"}]


def test_pair_indices_by_hand():
    # K = 3, labels 1, .5, 0: all pairs with distinct labels = 3 (= K (K - 1) / 2); best-worst = 1
    assert pair_indices([1.0, 0.5, 0.0], "all") == [(0, 1), (0, 2), (1, 2)]
    assert pair_indices([1.0, 0.5, 0.0], "best-worst") == [(0, 2)]
    # not sorted by label: best first is 1 (label 1), 2 (.5), 0 (0)
    assert pair_indices([0.0, 1.0, 0.5], "all") == [(1, 2), (1, 0), (2, 0)]
    assert pair_indices([0.0, 1.0, 0.5], "best-worst") == [(1, 0)]
    # ties make no pair: (0, 1) is tied; best-worst takes the first of the tied best
    assert pair_indices([1.0, 1.0, 0.0], "all") == [(0, 2), (1, 2)]
    assert pair_indices([1.0, 1.0, 0.0], "best-worst") == [(0, 2)]
    assert pair_indices([0.5, 0.5], "all") == [] and pair_indices([0.5, 0.5], "best-worst") == []


def test_export_plain_prompts_to_jsonl(tmp_path):
    lists = write_lists([{"prompt": "2+2?", "responses": ["4", "four?", "5"], "labels": [1.0, 0.5, 0.0],
                          "rewards": [3.0, 1.0, -2.0]},
                         {"prompt": "tie", "responses": ["x", "y"], "labels": [0.5, 0.5]}], tmp_path / "l.parquet")
    report = export_pairs([lists], tmp_path / "pairs.jsonl", quiet=True)
    rows = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert rows == [
        {"prompt": "2+2?", "chosen": "4", "rejected": "four?", "score_chosen": 3.0, "score_rejected": 1.0},
        {"prompt": "2+2?", "chosen": "4", "rejected": "5", "score_chosen": 3.0, "score_rejected": -2.0},
        {"prompt": "2+2?", "chosen": "four?", "rejected": "5", "score_chosen": 1.0, "score_rejected": -2.0}]
    assert report.pairs == 3 and report.lists_without_pair == 1 and report.read.rows_valid == 2
    export_pairs([lists], tmp_path / "bw.jsonl", pairs="best-worst", quiet=True)
    assert [json.loads(line) for line in (tmp_path / "bw.jsonl").read_text().splitlines()] == [rows[1]]


def test_export_chat_prompts_to_conversational_parquet(tmp_path):
    lists = write_lists([{"prompt": CHAT, "responses": ["Mango", "Durian"], "labels": [0.0, 1.0]}],
                        tmp_path / "l.parquet")
    export_pairs([lists], tmp_path / "pairs.parquet", quiet=True)
    table = pq.read_table(tmp_path / "pairs.parquet")
    messages = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    assert table.schema.field("prompt").type == messages and table.schema.field("chosen").type == messages
    assert table.to_pylist() == [{"prompt": CHAT, "chosen": [{"role": "assistant", "content": "Durian"}],
                                  "rejected": [{"role": "assistant", "content": "Mango"}],
                                  "score_chosen": None, "score_rejected": None}]


@pytest.mark.parametrize("prompt,suffix", [("2+2?", ".parquet"), (CHAT, ".jsonl")])
def test_round_trip_export_then_import_gives_the_same_preferences(tmp_path, prompt, suffix):
    lists = [{"prompt": prompt, "responses": ["a", "b", "c", "d"], "labels": [0.0, 1.0, 1 / 3, 1.0],
              "rewards": [0.1, 0.9, 0.4, 0.8]},
             {"prompt": "other" if isinstance(prompt, str) else CHAT[1:], "responses": ["e", "f"],
              "labels": [0.25, 0.75]}]
    src = write_lists(lists, tmp_path / "lists.parquet")
    export_pairs([src], tmp_path / f"pairs{suffix}", quiet=True)
    import_file("pairs", str(tmp_path / f"pairs{suffix}"), str(tmp_path / "back.parquet"), quiet=True)
    back, _ = read_lists([tmp_path / "back.parquet"])

    def key(p):
        return json.dumps(p, sort_keys=True)

    expected = {(key(rec["prompt"]), rec["responses"][i], rec["responses"][j],
                 (rec["rewards"][i], rec["rewards"][j]) if rec.get("rewards") else None)
                for rec in lists for i, j in pair_indices(rec["labels"], "all")}
    # list 1: labels 0, 1, 1/3, 1 -> best first b, d, c, a; (b, d) tied -> 5 pairs; list 2: 1 pair
    assert len(expected) == 6
    got = {(key(r["prompt_messages"] if r["prompt"] is None else r["prompt"]), r["responses"][0], r["responses"][1],
            tuple(r["rewards"]) if r["rewards"] else None) for r in back.to_pylist()}
    assert got == expected and back.num_rows == 6
    assert all(r["labels"] == [1.0, 0.0] for r in back.to_pylist())


def test_export_errors(tmp_path):
    plain = write_lists([{"prompt": "p", "responses": ["a", "b"], "labels": [1.0, 0.0]}], tmp_path / "a.parquet")
    chat = write_lists([{"id": "c1", "prompt": CHAT, "responses": ["a", "b"], "labels": [1.0, 0.0]}],
                       tmp_path / "b.parquet")
    with pytest.raises(DataError, match="list 'c1' has a chat prompt but the lists before it have plain-text"):
        export_pairs([plain, chat], tmp_path / "out.parquet", quiet=True)
    assert not (tmp_path / "out.parquet").exists()  # nothing half-written
    with pytest.raises(DataError, match=r"must be a \.parquet, \.jsonl or \.json file"):
        export_pairs([plain], tmp_path / "out.csv")
    with pytest.raises(DataError, match="--pairs: unknown mode 'top'"):
        export_pairs([plain], tmp_path / "out.jsonl", pairs="top")
    tied = write_lists([{"prompt": "p", "responses": ["a", "b"], "labels": [0.5, 0.5]}], tmp_path / "t.parquet")
    with pytest.raises(DataError, match="no pairs to write"):
        export_pairs([tied], tmp_path / "out.jsonl", quiet=True)
    assert not (tmp_path / "out.jsonl").exists()


def test_input_errors_name_file_row_and_field(tmp_path):
    bad = Path(tmp_path / "lists.jsonl")
    bad.write_text(json.dumps({"prompt": "p", "responses": ["a", "b"], "labels": [1.0, 0.0]}) + "\n"
                   + json.dumps({"prompt": "p", "responses": ["a", "b"], "labels": [1.0, 2.0]}) + "\n")
    with pytest.raises(DataError, match=r"lists\.jsonl: row 2: field 'labels\[1\]': must be in \[0, 1\], got 2\.0"):
        export_pairs([bad], tmp_path / "out.jsonl", quiet=True)
