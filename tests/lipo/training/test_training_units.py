"""Training pieces that need no Ray: config names against the losses, how a failed fit is reported, task objects."""

from __future__ import annotations

from typing import get_args

import pytest
from ray.exceptions import RayActorError
from ray.train.v2._internal.exceptions import UserExceptionWithTraceback, WorkerHealthCheckFailedError
from ray.train.v2.api.exceptions import WorkerGroupError

from lipo.config import load_config
from lipo.errors import DataError, LipoError
from lipo.losses import LAMBDA_WEIGHTS, LOSSES
from lipo.training.config import LambdaWeightName, ObjectiveName, RewardTrainConfig, TrainConfig
from lipo.training.launch import training_failure
from lipo.training.reward import PairwiseForm, PointwiseForm, RewardTask
from lipo.training.tasks import ListwiseTask


def test_config_names_are_the_losses_names():
    assert set(get_args(ObjectiveName)) == set(LOSSES)
    assert set(get_args(LambdaWeightName)) == set(LAMBDA_WEIGHTS)


def test_a_user_mistake_in_a_worker_is_one_line():
    mistake = DataError("lists.jsonl row 4: field 'labels' is not a list")
    exc = WorkerGroupError("worker 1 failed", {1: UserExceptionWithTraceback(mistake, "Traceback ...")})
    err = training_failure(exc, "r1")
    assert isinstance(err, LipoError) and str(err) == "training run 'r1': lists.jsonl row 4: field 'labels' is not a list"


def test_a_dead_worker_says_how_to_resume_and_a_bug_keeps_its_exception():
    peer = RuntimeError("gloo: Connection reset by peer")  # what the surviving worker sees
    dead = WorkerHealthCheckFailedError("A worker health check failed.", RayActorError())
    died = training_failure(WorkerGroupError("gone", {0: UserExceptionWithTraceback(peer, ""), 1: dead}), "r2")
    assert isinstance(died, LipoError) and "run_name=r2 to resume" in str(died)
    bug = WorkerGroupError("oops", {0: UserExceptionWithTraceback(ZeroDivisionError("division by zero"), "")})
    assert training_failure(bug, "r3") is bug


def test_tasks_are_objects_holding_their_config():
    cfg = load_config(TrainConfig, None, ["data.train=[x.jsonl]", "objective.name=list_mle"])
    task = ListwiseTask(cfg)
    assert task.stage == "train" and task.objective is LOSSES["list_mle"]
    rm = load_config(RewardTrainConfig, None, ["data.train=[x.jsonl]", "reward.kind=pairwise", "reward.max_tokens=64"])
    assert RewardTask(rm).form == PairwiseForm(rm.reward.pair_template, 64)
    assert RewardTask(rm.model_copy(update={"reward": rm.reward.model_copy(update={"kind": "pointwise"})})).form \
        == PointwiseForm(64)


@pytest.mark.parametrize("kind", ["pointwise", "pairwise"])
def test_reward_rows_hold_every_unequal_pair(kind, tmp_path):
    from lipo.data.readers import read_lists
    from lipo.models.tiny import byte_tokenizer

    data = tmp_path / "lists.jsonl"
    data.write_text('{"id": "a", "prompt": "p", "responses": ["x", "y", "z"], "labels": [1.0, 0.0, 0.0]}\n'
                    '{"id": "b", "prompt": "p", "responses": ["x", "y"], "labels": [0.5, 0.5]}\n')
    cfg = load_config(RewardTrainConfig, None, [f"data.train=[{data}]", f"reward.kind={kind}",
                                                "reward.eval_fraction=0"])
    table, _ = read_lists(str(data))
    rows, counts = RewardTask(cfg).tokenize(table.to_pylist(), byte_tokenizer())
    assert counts["data/dropped_lists_without_pairs"] == 1.0 and len(rows) == 1  # list b: all labels tied
    assert rows[0]["id"] == "a" and counts["data/heldout_lists"] == 0.0
    if kind == "pointwise":
        assert len(rows[0]["text_ids"]) == 3 and rows[0]["labels"] == [1.0, 0.0, 0.0]
    else:  # (x,y), (x,z) and both reversed: 4 ordered pairs; x first wins
        assert rows[0]["targets"] == [1.0, 1.0, 0.0, 0.0]
