"""`tracking.stage_run` owns a run's life: open (or reattach by name), log the config, FINISHED or FAILED; experiments
open on their runs in the MLflow UI; stages log their data as MLflow datasets with digests."""

from __future__ import annotations

import hashlib
import json

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


def test_experiments_open_on_their_runs_and_a_chosen_kind_stays(tmp_path):
    """The MLflow 3 UI shows an experiment tagged `mlflow.experimentKind = custom_model_development` as a training
    experiment (runs), not the GenAI overview."""
    uri = tracking.resolve_uri(None, str(tmp_path))
    c = tracking.client(uri)
    tracking.open_run(uri, "lipo", "a", "train")
    assert c.get_experiment_by_name("lipo").tags["mlflow.experimentKind"] == "custom_model_development"
    old = c.create_experiment("made-by-hand")  # before lipo set the tag: it gets it on lipo's first run
    chosen = c.create_experiment("chosen", tags={"mlflow.experimentKind": "genai_development"})
    tracking.open_run(uri, "made-by-hand", "b", "train")
    tracking.open_run(uri, "chosen", "c", "train")
    assert c.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    assert c.get_experiment(chosen).tags["mlflow.experimentKind"] == "genai_development"


def test_datasets_carry_digests_that_read_no_rows(tmp_path):
    uri = tracking.resolve_uri(None, str(tmp_path))
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "part-00000.parquet").write_bytes(b"not read")  # the manifest decides the digest, not the rows
    (lists / "manifest.json").write_text('{"counts": {"lists": 3}}')
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "p0", "prompt": "hi"}\n')
    st = prompts.stat()
    with tracking.stage_run(uri, "lipo", "build", "build-lists") as run:
        run.log_datasets([str(prompts)], "input", name="prompts")
        run.log_datasets([str(lists)], "output", name="lists")
    inputs = tracking.client(uri).get_run(run.run_id).inputs.dataset_inputs
    got = {d.dataset.name: (d.dataset.digest, json.loads(d.dataset.source), {t.key: t.value for t in d.tags})
           for d in inputs}
    want_files = hashlib.sha256(json.dumps([[str(prompts), st.st_size, st.st_mtime_ns]]).encode()).hexdigest()[:16]
    want_manifest = hashlib.sha256(b'{"counts": {"lists": 3}}').hexdigest()[:16]
    assert got["prompts"] == (want_files, {"uri": str(prompts)}, {"mlflow.data.context": "input"})
    assert got["lists"] == (want_manifest, {"uri": str(lists)}, {"mlflow.data.context": "output"})
    # the train stage reading the same lists names the same digest: one data set in the UI
    assert tracking.data_digest(str(lists)) == want_manifest
    prompts.write_text('{"id": "p0", "prompt": "hi there"}\n')  # another size: another digest
    assert tracking.data_digest(str(prompts)) != want_files


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store for the tests below (creating one costs seconds): each uses its own experiment."""
    return tracking.resolve_uri(None, str(tmp_path_factory.mktemp("store")))


def test_the_output_location_is_part_of_a_runs_identity(store, tmp_path, monkeypatch):
    """Issue 16 point 11: four build-lists runs with the same config into four output dirs were one MLflow run."""
    uri = store
    monkeypatch.chdir(tmp_path)
    ids = {}
    for out in ("lists-a", "lists-b", "s3://bucket/lists", "s3://bucket/other"):
        with tracking.stage_run(uri, "lipo", "build-lists-3f2a", "build-lists", output=out) as run:
            run.log_metrics({"progress/lists": 1.0}, step=1)
        ids[out] = run.run_id
    assert len(set(ids.values())) == 4  # one run per output
    tags = {r.info.run_id: r.data.tags for r in tracking.client(uri).search_runs(
        [tracking.client(uri).get_experiment_by_name("lipo").experiment_id])}
    assert tags[ids["lists-a"]][tracking.OUTPUT_TAG] == str(tmp_path / "lists-a")  # absolute, as resolved
    assert tags[ids["s3://bucket/lists"]][tracking.OUTPUT_TAG] == "s3://bucket/lists"
    # The same output, however spelled, reattaches (resume): a relative or absolute path, a trailing '/', file://.
    for same, out in ((str(tmp_path / "lists-a"), "lists-a"), (f"file://{tmp_path}/lists-b/", "lists-b"),
                      ("s3://bucket/lists/", "s3://bucket/lists")):
        with tracking.stage_run(uri, "lipo", "build-lists-3f2a", "build-lists", output=same) as again:
            pass
        assert again.run_id == ids[out], same
    # A run without the tag (made before it existed) is only the run of a caller that names no output.
    legacy, created = tracking.open_run(uri, "lipo", "old", "train")
    assert created and tracking.open_run(uri, "lipo", "old", "train") == (legacy, False)
    assert tracking.open_run(uri, "lipo", "old", "train", output="lists-a")[0] != legacy


def test_a_resumed_run_logs_no_step_twice(store, tmp_path):
    """A resumed stage recomputes the steps after its checkpoint; with `resume=True` the points the history already
    holds are skipped per metric, the rest continue it: every step once, the first attempt's values kept."""
    uri = store
    with pytest.raises(KeyboardInterrupt):
        with tracking.stage_run(uri, "resumes", "r", "train", output=tmp_path) as first:
            for step in (1, 2, 3):
                first.log_metrics({"train/loss": float(step), "train/lr": 0.1}, step, resume=True)
            first.log_metrics({"train/loss": 4.0}, 4, resume=True)  # train/lr not logged at step 4
            raise KeyboardInterrupt  # SIGINT
    with tracking.stage_run(uri, "resumes", "r", "train", output=tmp_path) as second:
        assert second.run_id == first.run_id and second.logged == {"train/loss": 4, "train/lr": 3}
        for step in (3, 4, 5):  # resumed from the checkpoint at step 2
            second.log_metrics({"train/loss": 10.0 * step, "train/lr": 0.2}, step, resume=True)
        second.log_metrics({"train/loss": -1.0}, 5, resume=True)  # an in-fit restart repeats step 5: skipped too
    c = tracking.client(uri)
    loss = sorted((m.step, m.value) for m in c.get_metric_history(first.run_id, "train/loss"))
    lr = sorted((m.step, m.value) for m in c.get_metric_history(first.run_id, "train/lr"))
    assert loss == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 50.0)]
    assert lr == [(1, 0.1), (2, 0.1), (3, 0.1), (4, 0.2), (5, 0.2)]
