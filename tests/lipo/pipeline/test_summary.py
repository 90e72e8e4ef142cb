"""`judge_agreement`: the reward model's pairwise agreement with the gold reward on the lists LiPO learns from;
`report_summary`: what the pipeline's parent run shows."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from lipo import tracking

from lipo.bootstrap import gold_reward_spec
from lipo.pipeline.summary import judge_agreement, report_summary


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
    assert judge_agreement(str(path), gold_reward_spec("copy")) == pytest.approx((2 + 0.5) / 4)


def test_no_untied_pairs_gives_none(tmp_path):
    path = write_lists(tmp_path / "lists.jsonl", [(["abxde", "abcxe"], [0.0, 1.0])])
    assert judge_agreement(str(path), gold_reward_spec("copy")) is None


def test_parent_run_shows_win_rates_and_each_childs_final_metrics(tmp_path, capsys):
    uri = tracking.resolve_uri(None, str(tmp_path))
    ev = {"eval/win_rate": 0.625, "eval/win_rate_ci_low": 0.5, "eval/win_rate_ci_high": 0.75, "eval/prompts": 16.0,
          "eval/fn_win_rate": 0.5, "eval/fn_win_rate_ci_low": 0.25, "eval/fn_win_rate_ci_high": 0.7, "eval/kl": 0.1}
    res = {
        "sft": {"metrics": {"train/loss": 1.5, "train/lr": 1e-4, "data/response_truncated": 0.0}},
        "reward_model": {"metrics": {"train/loss": 0.6, "train/pair_accuracy": 0.7, "eval/pair_accuracy": 0.8,
                                     "eval/pairs": 40.0, "train/tokens_per_s": 900.0}},
        "train": {"metrics": {"train/loss": 0.4, "train/pair_accuracy": 0.9, "train/grad_norm": 2.0},
                  "model_dir": "runs/x/model"},
        "build_lists": {"counts": {"lists": 8, "prompts": 8, "candidates": 32}, "output_dir": "runs/x/lists"},
        "evaluate": {"metrics": ev, "report_dir": "runs/x/eval"},
    }
    with tracking.stage_run(uri, "lipo", "q", "pipeline") as parent:
        report_summary(parent, SimpleNamespace(name="q", world=None), res, [])
    m = tracking.client(uri).get_run(parent.run_id).data.metrics
    assert {k: v for k, v in m.items() if not k.startswith("summary/")} == {
        **ev,  # the evaluation's metrics as they are: win rates with their CIs
        "sft/loss": 1.5,  # a child's train/x as <prefix>/x, its held-out eval/x as <prefix>/heldout_x
        "rm/loss": 0.6, "rm/pair_accuracy": 0.7, "rm/heldout_pair_accuracy": 0.8, "rm/heldout_pairs": 40.0,
        "train/loss": 0.4, "train/pair_accuracy": 0.9,  # learning rate, throughput, grad norm stay in the child
    }
    assert m["summary/win_rate"] == 0.625 and m["summary/lists"] == 8
    assert "win rate vs SFT, proxy reward model: 0.625 (95% CI 0.500-0.750, 16 prompts)" in capsys.readouterr().out
