"""The one place that talks to MLflow.

Every stage opens its run with `stage_run`, a context manager that owns the run's whole life: open (or reattach
by name), log the config, and finish it FINISHED, or FAILED when the body raises. A rerun with the same name
reattaches to the same MLflow run, so a resumed training keeps one history.

    with stage_run(uri, "lipo", "lipo-3f2a", "train", parent_run_id=parent, config=resolved) as run:
        run.log_metrics({"train/loss": 0.7}, step=1)

The default store is `sqlite:///<output_dir>/mlflow.db` (MLflow refuses a plain file store); `tracking.uri` or
`$MLFLOW_TRACKING_URI` point at a server instead. Browse with:

    mlflow ui --backend-store-uri sqlite:///runs/mlflow.db
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from lipo.config import flatten

STAGE_TAG = "lipo.stage"


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


def open_run(uri: str, experiment: str, run_name: str, stage: str, parent_run_id: str | None = None) -> tuple[str, bool]:
    """(run_id, created): the run named `run_name` for `stage`, created if it does not exist yet."""
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    # Keep a local store's artifacts next to its database, not in ./mlruns of whatever directory we run from.
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    exp_id = exp.experiment_id if exp else c.create_experiment(experiment, artifact_location=location)
    found = c.search_runs(
        [exp_id], filter_string=f"tags.mlflow.runName = '{run_name}' and tags.`{STAGE_TAG}` = '{stage}'",
        max_results=1,
    )
    if found:
        c.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id, False
    tags = {STAGE_TAG: stage}
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


def finish_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    client(uri).set_terminated(run_id, status=status)


@dataclass(frozen=True)
class StageRun:
    """One open MLflow run; with `run_id` None (tracking switched off) every call is a no-op."""

    uri: str | None
    run_id: str | None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.run_id:
            log_metrics(self.uri, self.run_id, metrics, step)

    def log_artifacts(self, local_dir: str | Path, artifact_path: str) -> None:
        if self.run_id:
            log_artifacts(self.uri, self.run_id, local_dir, artifact_path)


@contextmanager
def stage_run(uri: str | None, experiment: str, run_name: str, stage: str, parent_run_id: str | None = None,
              config: dict[str, Any] | None = None, enabled: bool = True) -> Iterator[StageRun]:
    """Open (or reattach to) the run `run_name` of `stage`, log `config`, and finish it when the block ends:
    FINISHED, or FAILED if the block raises (the exception goes on unchanged)."""
    if not enabled or uri is None:
        yield StageRun(None, None)
        return
    run_id, created = open_run(uri, experiment, run_name, stage, parent_run_id)
    if config is not None:
        log_config(uri, run_id, config, created)
    try:
        yield StageRun(uri, run_id)
    except BaseException:
        finish_run(uri, run_id, "FAILED")
        raise
    finish_run(uri, run_id)
