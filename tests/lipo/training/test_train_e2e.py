"""End-to-end training on local Ray: 2 CPU workers, DeepSpeed ZeRO-2/3, the tiny in-memory Llama.

These are the acceptance runs of the trainer: learning (loss falls, full-data pair accuracy > 0.9), exact resume after
a killed worker and after a relaunched driver, gradient-accumulation parity, and what MLflow holds afterwards.

    pytest tests/lipo/training/test_train_e2e.py

CI time (issue 17): one straight 6-step run (the `straight` fixture, module scope) serves both the MLflow test and the
resume test's reference, so the module pays for one Ray Train launch fewer. The MLflow test alone (the lower-bound
lane, Makefile LOWER_TESTS) still runs exactly one short Ray Train + DeepSpeed run that MLflow records.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from tests.conftest import write_toy_lists
from helpers import full_batch, load_weights, max_abs_diff, scores_of, train_config

from lipo.errors import LipoError
from lipo.models.logps import sequence_logps
from lipo.metrics import pairwise_accuracy
from lipo.training.launch import launch
from lipo.training.tasks import ListwiseTask

pytestmark = pytest.mark.slow

# The straight run's settings, shared by the resume test's killed-and-relaunched run (which must match it exactly).
RESUME_ARGS = ("run_name=r", "optim.lr=3e-3", "optim.micro_batch_size=1", "optim.epochs=2", "optim.max_steps=6",
               "checkpoint.every=2", "checkpoint.keep=2")  # 8 lists: 4 steps an epoch, 6 steps


def _run(cfg, fault=None):
    return launch(ListwiseTask(cfg), fault=fault)


@pytest.fixture(scope="module")
def straight(ray_local, tmp_path_factory):
    """One uninterrupted 6-step run named `r` into its own MLflow store: (dir, lists, store uri, result)."""
    tmp = tmp_path_factory.mktemp("straight")
    lists = write_toy_lists(tmp / "lists.jsonl")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    result = _run(train_config(tmp, lists, f"output_dir={tmp / 'straight'}", f"tracking.uri={uri}", *RESUME_ARGS))
    return tmp, lists, uri, result


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_run_learns_to_rank(ray_local, tmp_path, toy_lists, stage):
    from transformers import AutoModelForCausalLM

    cfg = train_config(tmp_path, toy_lists, f"deepspeed.stage={stage}", f"run_name=z{stage}", "optim.lr=1e-2",
                       "optim.micro_batch_size=2", "optim.max_steps=30", "optim.epochs=100")
    result = _run(cfg)
    from lipo import tracking

    c = tracking.client(result.tracking_uri)
    losses = [m.value for m in sorted(c.get_metric_history(result.run_id, "train/loss"), key=lambda m: m.step)]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5  # the loss falls
    batch = full_batch(toy_lists)
    policy = AutoModelForCausalLM.from_pretrained(result.model_dir)
    acc = pairwise_accuracy(scores_of(policy, batch), batch["labels"], batch["list_mask"]).item()
    assert acc > 0.9, f"full-data pairwise accuracy {acc:.3f}"  # the untrained policy scores all 0: 0.5


def test_mlflow_holds_run_params_metrics_and_model(straight, tmp_path):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoModelForCausalLM

    from lipo import tracking
    from lipo.models.tiny import tiny_llama
    from lipo.training import checkpoints as ck

    tmp, lists, uri, result = straight
    assert result.tracking_uri == uri
    c = tracking.client(result.tracking_uri)
    run = c.get_run(result.run_id)
    assert run.info.run_name == "r" and run.info.status == "FINISHED"
    assert run.data.params["objective.name"] == "lambda" and run.data.params["optim.lr"] == "0.003"
    steps = [m.step for m in c.get_metric_history(result.run_id, "train/pair_accuracy")]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]
    for key in ("train/ndcg", "train/margin", "train/log_ratio", "train/lr", "train/grad_norm", "train/tokens_per_s"):
        assert key in run.data.metrics
    # The exported model, fetched back from MLflow, scores exactly like the weights in the last DeepSpeed checkpoint.
    from lipo.serving.model_source import resolve

    local = Path(resolve(f"runs:/{result.run_id}", result.tracking_uri, cache_dir=str(tmp_path / "dl")))
    assert (local.parent / "MLmodel").is_file()  # the transformers flavour, its checkpoint under model/
    exported = AutoModelForCausalLM.from_pretrained(local).eval()
    run_dir = tmp / "straight" / "r"
    last = ck.newest(str(run_dir))
    assert last.step == 6
    trained = tiny_llama(seed=0)
    trained.load_state_dict(get_fp32_state_dict_from_zero_checkpoint(str(run_dir / last.name), tag="state"))
    batch = full_batch(lists)
    with torch.no_grad():
        a, b = sequence_logps(exported, batch), sequence_logps(trained.eval(), batch)
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    assert (a - sequence_logps(tiny_llama(seed=0), batch)).abs().max() > 1e-3  # training moved the weights


def test_resume_after_killed_worker_and_relaunched_driver(straight, tmp_path, capsys):
    """One killed-and-resumed run against a straight one, both named `r` in one MLflow store (issue 16, 11 and 12).

    A worker dies at step 3 and Ray Train restarts the group; it dies again at step 5, past `max_failures`, and
    the fit fails. Before the driver is relaunched, a newer checkpoint torn mid-upload is added. The relaunch
    resumes from the newest complete one (step 4), and ends with weights equal to the straight run's, `keep`
    checkpoints, and an MLflow run of its own (another output_dir) whose history holds each step once, with the
    straight run's losses.
    """
    from lipo import tracking
    from lipo.training import checkpoints as ck

    _, lists, uri, ref = straight  # the straight run: its own output_dir, the store this run logs to as well
    faults = [{"step": s, "rank": 1, "marker": str(tmp_path / f"killed-at-{s}")} for s in (3, 5)]
    cfg = train_config(tmp_path, lists, "checkpoint.max_failures=1", f"tracking.uri={uri}", *RESUME_ARGS)
    with pytest.raises(LipoError, match="rerun with run_name=r to resume"):
        _run(cfg, faults)
    assert all(Path(f["marker"]).exists() for f in faults)
    run_dir = tmp_path / "runs" / "r"
    newest = ck.newest(str(run_dir))
    assert newest.step == 4
    torn = run_dir / "checkpoint_9999-torn"  # killed while uploading: rank 1's optimizer shard is missing
    shutil.copytree(run_dir / newest.name, torn)
    next(torn.rglob("zero_pp_rank_1_*optim_states.pt")).unlink()
    capsys.readouterr()
    resumed = _run(cfg)
    out = capsys.readouterr().out
    assert "removed 1 incomplete: checkpoint_9999-torn (state/zero_pp_rank_1_mp_rank_00_optim_states.pt of rank 1 " \
           "is missing)" in out
    assert f"resuming from the newest complete checkpoint: step 4 ({newest.name})" in out
    assert max_abs_diff(load_weights(ref.model_dir), load_weights(resumed.model_dir)) < 1e-5
    complete, incomplete = ck.scan(str(run_dir))
    assert [f.step for f in complete] == [4, 6] and incomplete == {}  # pruned to checkpoint.keep
    # Two runs named r: the output_dir tells them apart. Each holds steps 1..6 once, with the same losses.
    assert resumed.run_id != ref.run_id
    c = tracking.client(uri)
    for key in ("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s"):
        steps = sorted(m.step for m in c.get_metric_history(resumed.run_id, key))
        assert steps == [1, 2, 3, 4, 5, 6], (key, steps)  # no duplicate after the resumes, no gap
    ref_loss, loss = ({m.step: m.value for m in c.get_metric_history(r.run_id, "train/loss")} for r in (ref, resumed))
    assert loss == pytest.approx(ref_loss, abs=1e-6)


def test_gradient_accumulation_matches_larger_micro_batch(ray_local, tmp_path, toy_lists):
    from lipo.models.tiny import tiny_llama

    # eps=1 keeps Adam's first step proportional to the gradient (with tiny eps it is ~lr*sign(g)).
    args = ("optim.lr=1.0", "optim.eps=1.0", "optim.max_steps=1", "optim.grad_clip=0")
    acc = _run(train_config(tmp_path, toy_lists, "run_name=accum", "optim.micro_batch_size=1",
                            "optim.grad_accum=4", *args))
    big = _run(train_config(tmp_path, toy_lists, "run_name=big", "optim.micro_batch_size=4",
                            "optim.grad_accum=1", *args))
    w_acc, w_big = load_weights(acc.model_dir), load_weights(big.model_dir)
    init = {k: v for k, v in tiny_llama(seed=0).state_dict().items()}
    assert max_abs_diff(w_acc, init) > 1e-4  # a real update happened
    assert max_abs_diff(w_acc, w_big) < 1e-5
