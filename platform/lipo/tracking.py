"""The one place that talks to MLflow.

Stages open a run by name with `open_run`; a rerun with the same name reattaches to the same MLflow run, so a
resumed training keeps one history. The default store is `sqlite:///<output_dir>/mlflow.db` (MLflow refuses a plain
file store); `tracking.uri` or `$MLFLOW_TRACKING_URI` point at a server instead. Browse with:

    mlflow ui --backend-store-uri sqlite:///runs/mlflow.db
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

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
    from mlflow.tracking import MlflowClient

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
    from mlflow.entities import Param

    c = client(uri)
    if created:
        params = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v))
                  for k, v in flatten(config).items()]
        for i in range(0, len(params), 100):
            c.log_batch(run_id, params=params[i : i + 100])
    c.log_dict(run_id, config, "config.json")


def log_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int) -> None:
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    c = client(uri)
    c.log_batch(run_id, metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()])


def log_artifacts(uri: str, run_id: str, local_dir: str | Path, artifact_path: str) -> None:
    client(uri).log_artifacts(run_id, str(local_dir), artifact_path)


def finish_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    client(uri).set_terminated(run_id, status=status)
