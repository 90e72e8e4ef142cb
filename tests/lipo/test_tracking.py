"""`tracking.stage_run` owns a run's life: open (or reattach by name), log the config, FINISHED or FAILED."""

from __future__ import annotations

import pytest

from lipo import tracking


def _runs(uri):
    c = tracking.client(uri)
    exp = c.get_experiment_by_name("lipo")
    return {r.info.run_name: r for r in c.search_runs([exp.experiment_id])}


def test_a_run_finishes_or_fails_with_its_block(tmp_path):
    uri = tracking.resolve_uri(None, str(tmp_path))
    with tracking.stage_run(uri, "lipo", "ok", "train", config={"optim": {"lr": 0.1}}) as run:
        run.log_metrics({"train/loss": 0.5}, step=1)
    with pytest.raises(ZeroDivisionError):
        with tracking.stage_run(uri, "lipo", "broken", "train", parent_run_id=run.run_id):
            1 / 0
    runs = _runs(uri)
    assert runs["ok"].info.status == "FINISHED" and runs["ok"].data.params["optim.lr"] == "0.1"
    assert runs["ok"].data.metrics["train/loss"] == 0.5 and runs["ok"].data.tags[tracking.STAGE_TAG] == "train"
    assert runs["broken"].info.status == "FAILED"
    assert runs["broken"].data.tags["mlflow.parentRunId"] == run.run_id


def test_the_same_name_reattaches_and_disabled_tracking_logs_nothing(tmp_path):
    uri = tracking.resolve_uri(None, str(tmp_path))
    with tracking.stage_run(uri, "lipo", "resumed", "train") as first:
        pass
    with tracking.stage_run(uri, "lipo", "resumed", "train") as second:
        second.log_metrics({"train/loss": 1.0}, step=2)
    assert first.run_id == second.run_id and len(_runs(uri)) == 1
    with tracking.stage_run(uri, "lipo", "off", "build-lists", enabled=False) as off:
        off.log_metrics({"x": 1.0}, step=0)  # a no-op
    assert off.run_id is None and "off" not in _runs(uri)
