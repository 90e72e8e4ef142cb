"""The one place that talks to MLflow.

Every stage opens its run with `stage_run`, a context manager that owns the run's whole life: open (or reattach),
log the config, and finish it FINISHED, or FAILED when the body raises.

    with stage_run(uri, "lipo", "lipo-3f2a", "train", parent_run_id=parent, config=resolved,
                   output="/data/runs") as run:
        run.log_metrics({"train/loss": 0.7}, step=1)

A run's identity is its name, its stage (tag `lipo.stage`) and its output location (tag `lipo.output`: the stage's
output setting resolved to an absolute path, or its URI; `output_location`). A rerun with all three the same
reattaches to the same MLflow run, so a resumed stage keeps one history; the same name and config written to another
output directory is another run. A run with no `lipo.output` tag (made before the tag existed, or opened without
`output`) only matches a caller that passes no output. A resumed stage logs with `log_metrics(..., resume=True)`:
points at steps the run's history already holds for that metric are skipped (MLflow cannot delete points), so the
history has no duplicates.

Experiments lipo creates are tagged `mlflow.experimentKind = custom_model_development` (the tag the MLflow 3 UI reads
to pick its "Machine learning" view), so the experiment opens on its runs, not the GenAI overview; an experiment
that exists without the tag gets it, one whose kind a user chose keeps it. Each stage logs the data it reads and
writes as MLflow datasets (`StageRun.log_dataset`): the source is the path, the digest comes from the path's
`manifest.json` when it is a lipo build (the same digest as input of train and as output of build-lists) or else
from the files' names, sizes and modification times; no data is read on the driver.

The default store is `sqlite:///<output_dir>/mlflow.db` (MLflow refuses a plain file store); `tracking.uri` or
`$MLFLOW_TRACKING_URI` point at a server instead. Browse with:

    mlflow ui --backend-store-uri sqlite:///runs/mlflow.db
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from lipo import storage
from lipo.config import flatten

STAGE_TAG = "lipo.stage"
OUTPUT_TAG = "lipo.output"  # with the run name and the stage: the run's identity
# The MLflow 3 UI's experiment-kind tag and its value for model training (read from mlflow/server/js, 3.17.2):
# experiments without it open on the GenAI overview.
EXPERIMENT_KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
CONTEXT_TAG = "mlflow.data.context"  # MLflow's tag for a dataset's role in a run (training, evaluation, ...)


def resolve_uri(uri: str | None, output_dir: str) -> str:
    if uri:
        return uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    db = Path(output_dir).expanduser().resolve() / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def client(uri: str):
    return MlflowClient(tracking_uri=uri)


def output_location(spec: str | os.PathLike) -> str:
    """`spec` as a run's `lipo.output` tag holds it: an absolute local path, or the URI without a trailing '/'."""
    path = storage.local(spec)
    return str(path) if path is not None else os.fspath(spec).rstrip("/")


def open_run(uri: str, experiment: str, run_name: str, stage: str, parent_run_id: str | None = None,
             output: str | os.PathLike | None = None) -> tuple[str, bool]:
    """(run_id, created): the run named `run_name` for `stage` writing to `output`, created if it does not exist."""
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    # Keep a local store's artifacts next to its database, not in ./mlruns of whatever directory we run from.
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    if exp is None:
        exp_id = c.create_experiment(experiment, artifact_location=location, tags={EXPERIMENT_KIND_TAG: TRAINING_KIND})
    else:
        exp_id = exp.experiment_id
        if EXPERIMENT_KIND_TAG not in exp.tags:  # created before lipo set it, or by hand
            c.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
    where = output_location(output) if output is not None else None
    # The output is compared here, not in the filter string: a path may hold any character, a quote too.
    found = [r for r in c.search_runs(
        [exp_id], filter_string=f"tags.mlflow.runName = '{run_name}' and tags.`{STAGE_TAG}` = '{stage}'",
        max_results=1000, order_by=["attributes.start_time DESC"],
    ) if r.data.tags.get(OUTPUT_TAG) == where]
    if found:
        c.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id, False
    tags = {STAGE_TAG: stage}
    if where is not None:
        tags[OUTPUT_TAG] = where
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = c.create_run(exp_id, run_name=run_name, tags=tags)
    return run.info.run_id, True


def log_config(uri: str, run_id: str, config: dict[str, Any], created: bool) -> None:
    """Params (flattened, only when the run is new: MLflow params are immutable) and the config as an artifact."""
    c = client(uri)
    if created:
        params = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v))
                  for k, v in flatten(config).items()]
        for i in range(0, len(params), 100):
            c.log_batch(run_id, params=params[i : i + 100])
    c.log_dict(run_id, config, "config.json")


def log_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int) -> None:
    ts = int(time.time() * 1000)
    c = client(uri)
    c.log_batch(run_id, metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()])


def log_artifacts(uri: str, run_id: str, local_dir: str | Path, artifact_path: str) -> None:
    client(uri).log_artifacts(run_id, str(local_dir), artifact_path)


def data_digest(path: str) -> str:
    """A digest of the data at `path` that reads no rows: its `manifest.json` (a lipo build), else the names, sizes
    and modification times of its files (`lipo.data.files`, as the token cache keys them)."""
    from lipo.data.files import resolve_paths  # lazy: pyarrow dataset helpers

    manifest = storage.read_text(storage.join(path, "manifest.json")) if not Path(path).is_file() else None
    if manifest is not None:
        blob = manifest
    else:
        blob = json.dumps([[f.name, f.size, f.mtime_ns] for f in resolve_paths(path)])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def log_datasets(uri: str, run_id: str, paths: list[str], context: str, name: str | None = None,
                 digests: list[str | None] | None = None) -> None:
    """Log each path as an MLflow dataset of the run with role `context` (e.g. training, evaluation, output)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    inputs = []
    for i, path in enumerate(paths):
        path = str(storage.local(path) or path)  # absolute when local: the UI shows where it is
        digest = (digests[i] if digests else None) or data_digest(path)
        scheme = path.split("://", 1)[0] if "://" in path else "local"
        label = name if name and len(paths) == 1 else (f"{name}-{i}" if name else Path(path.rstrip("/")).name)
        inputs.append(DatasetInput(Dataset(label, digest, scheme, json.dumps({"uri": path})),
                                   tags=[InputTag(CONTEXT_TAG, context)]))
    client(uri).log_inputs(run_id, datasets=inputs)


def finish_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    client(uri).set_terminated(run_id, status=status)


def last_steps(uri: str, run_id: str) -> dict[str, int]:
    """The last step at which run `run_id` holds a point, for each of its metrics."""
    c = client(uri)
    return {k: max(m.step for m in c.get_metric_history(run_id, k)) for k in c.get_run(run_id).data.metrics}


@dataclass(frozen=True)
class StageRun:
    """One open MLflow run; with `run_id` None (tracking switched off) every call is a no-op."""

    uri: str | None
    run_id: str | None
    # metric -> the last step the run holds a point at (from its history when reattached, then as logged)
    logged: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def log_metrics(self, metrics: dict[str, float], step: int, resume: bool = False) -> None:
        """Log `metrics` at `step`; with `resume`, a metric whose history already reaches `step` is skipped (a
        resumed stage recomputes the steps after its checkpoint: MLflow cannot delete the points they duplicate)."""
        if not self.run_id:
            return
        if resume:
            metrics = {k: v for k, v in metrics.items() if k not in self.logged or step > self.logged[k]}
        if metrics:
            log_metrics(self.uri, self.run_id, metrics, step)
            self.logged.update({k: max(step, self.logged.get(k, step)) for k in metrics})

    def log_artifacts(self, local_dir: str | Path, artifact_path: str) -> None:
        if self.run_id:
            log_artifacts(self.uri, self.run_id, local_dir, artifact_path)

    def log_datasets(self, paths: list[str], context: str, name: str | None = None,
                     digests: list[str | None] | None = None) -> None:
        if self.run_id:
            log_datasets(self.uri, self.run_id, paths, context, name, digests)


@contextmanager
def stage_run(uri: str | None, experiment: str, run_name: str, stage: str, parent_run_id: str | None = None,
              config: dict[str, Any] | None = None, enabled: bool = True,
              output: str | os.PathLike | None = None) -> Iterator[StageRun]:
    """Open (or reattach to) the run `run_name` of `stage` writing to `output` (`open_run`), log `config`, and finish
    it when the block ends: FINISHED, or FAILED if the block raises (the exception goes on unchanged)."""
    if not enabled or uri is None:
        yield StageRun(None, None)
        return
    run_id, created = open_run(uri, experiment, run_name, stage, parent_run_id, output)
    if config is not None:
        log_config(uri, run_id, config, created)
    try:
        yield StageRun(uri, run_id, {} if created else last_steps(uri, run_id))
    except BaseException:
        finish_run(uri, run_id, "FAILED")
        raise
    finish_run(uri, run_id)
