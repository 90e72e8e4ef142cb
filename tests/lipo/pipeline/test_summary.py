"""`judge_agreement`: the reward model's pairwise agreement with the gold reward on the lists LiPO learns from."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lipo.pipeline.config import GOLD_REWARD
from lipo.pipeline.summary import judge_agreement

MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
SCHEMA = pa.schema([("prompt", pa.string()), ("prompt_messages", MESSAGES), ("responses", pa.list_(pa.string())),
                    ("rewards", pa.list_(pa.float64()))])


def test_agreement_counts_pairs_by_hand(tmp_path):
    rows = [
        # gold 1.0, 0.8, 0.0; rewards order (0,1) and (0,2) alike, (1,2) the other way round: 2 of 3
        {"prompt": "Copy: abcde\n", "prompt_messages": None, "responses": ["abcde", "abxde", "xxxxx"],
         "rewards": [3.0, 1.0, 2.0]},
        # a gold tie (0.8, 0.8) is no pair at all, whatever the rewards say
        {"prompt": "Copy: abcde\n", "prompt_messages": None, "responses": ["abxde", "abcxe"], "rewards": [0.0, 5.0]},
    ]
    pq.write_table(pa.Table.from_pylist(rows[:1], SCHEMA), tmp_path / "part-00000.parquet")
    pq.write_table(pa.Table.from_pylist(rows[1:], SCHEMA), tmp_path / "part-00001.parquet")
    (tmp_path / "_manifest.json").write_text("{}")
    assert judge_agreement(str(tmp_path), GOLD_REWARD) == pytest.approx(2 / 3)


def test_no_untied_pairs_gives_none(tmp_path):
    pq.write_table(pa.Table.from_pylist([{"prompt": "Copy: abcde\n", "prompt_messages": None,
                                          "responses": ["abxde", "abcxe"], "rewards": [0.0, 1.0]}], SCHEMA),
                   tmp_path / "part-00000.parquet")
    assert judge_agreement(str(tmp_path), GOLD_REWARD) is None
