"""`judge_agreement`: the reward model's pairwise agreement with the gold reward on the lists LiPO learns from."""

from __future__ import annotations

import json

import pytest

from lipo.pipeline.resolve import GOLD_REWARD
from lipo.pipeline.summary import judge_agreement


def write_lists(path, rows):
    """Build-lists-like list records (labels are the reward model's, irrelevant here: the judge re-grades)."""
    with open(path, "w", encoding="utf-8") as f:
        for i, (responses, rewards) in enumerate(rows):
            f.write(json.dumps({"id": f"l{i}", "prompt": "Copy: abcde\n", "responses": responses,
                                "labels": [0.5] * len(responses), "rewards": rewards}) + "\n")
    return path


def test_agreement_counts_pairs_by_hand(tmp_path):
    path = write_lists(tmp_path / "lists.jsonl", [
        # gold 1.0, 0.8, 0.0; rewards order (0,1) and (0,2) alike, (1,2) the other way round: 2 of 3
        (["abcde", "abxde", "xxxxx"], [3.0, 1.0, 2.0]),
        # a gold tie (0.8, 0.8) is no pair at all, whatever the rewards say
        (["abxde", "abcxe"], [0.0, 5.0]),
        # gold 1.0 vs 0.6 with tied rewards: half a pair, as in the reward model's held-out accuracy
        (["abcde", "abxye"], [1.0, 1.0]),
    ])
    assert judge_agreement(str(path), GOLD_REWARD) == pytest.approx((2 + 0.5) / 4)


def test_no_untied_pairs_gives_none(tmp_path):
    path = write_lists(tmp_path / "lists.jsonl", [(["abxde", "abcxe"], [0.0, 1.0])])
    assert judge_agreement(str(path), GOLD_REWARD) is None
