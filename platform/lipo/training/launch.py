"""The driver of every training stage: `lipo train`, `lipo sft` and `lipo train-rm` differ only in their task.

    result = launch(ListwiseTask(cfg))                 # lipo train CONFIG.yaml
    result = launch(RewardTask(cfg), parent_run_id=p)  # lipo train-rm, as a child run of the pipeline's run

Steps, top to bottom: prepare (validate and tokenise, before Ray starts: every user mistake surfaces here), open the
MLflow run, fit with Ray Train's `TorchTrainer` (each worker runs `lipo.training.loop.train_loop` with the task
object), evaluate the exported model with the task, log the model (`lipo.mlflow_models`: MLflow's transformers
flavour) and the input data as an MLflow dataset. A failed fit marks the run FAILED.

Resume: rerunning with the same `run_name` and `output_dir` continues the run. Before the fit, the run's checkpoint
folders are pruned to `checkpoint.keep` (incomplete ones removed, each named) and Ray Train's record of them is
dropped; the workers resume from the newest complete checkpoint on disk (`lipo.training.checkpoints`). The MLflow
run is the same one (its identity is run name, stage and output_dir, `lipo.tracking`), and its metric history goes on
from the restored step: points at steps it already holds are skipped, and every step up to a checkpoint was logged
before the checkpoint was written (`lipo.training.progress`), so nothing is logged twice and nothing is missing.

Errors: a user's mistake found inside a worker (a `LipoError`) and a worker process that died are one-line
`LipoError`s (the second says how to resume); anything else is a bug in lipo and keeps its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ray.exceptions import RayActorError
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
from ray.train.torch import TorchConfig, TorchTrainer

from lipo import mlflow_models, storage, tracking
from lipo.errors import LipoError
from lipo.runtime import check_shared_storage, ensure_ray
from lipo.training import checkpoints as ckpts
from lipo.training.loop import train_loop
from lipo.training.prepare import Prepared, prepare
from lipo.training.progress import ProgressSink, follow
from lipo.training.tasks import Task


@dataclass
class TrainResult:
    run_name: str
    run_id: str
    tracking_uri: str
    model_dir: Path | str  # a URI when output_dir is object storage
    metrics: dict


def launch(task: Task, parent_run_id: str | None = None, fault: dict | list[dict] | None = None) -> TrainResult:
    """Train `task.cfg` with `task`; `fault` is a test hook that kills a worker once, or once per item of a list
    (`engine.fault_hook`)."""
    cfg = task.cfg
    prep = prepare(task)  # the data's mistakes surface here
    print(f"[lipo] {task.stage} data: {prep.summary}", flush=True)
    ensure_ray()
    check_shared_storage(cfg.output_dir)  # multi-node runs need checkpoints on shared storage: before any MLflow run
    resolved = cfg.model_copy(update={"run_name": prep.run_name}).model_dump(mode="json")
    uri = tracking.resolve_uri(cfg.tracking.uri, cfg.output_dir)
    run_dir = storage.join(prep.output_dir, prep.run_name)  # Ray Train's run directory: the checkpoints
    tidy_checkpoints(run_dir, cfg.checkpoint.keep)
    # A rerun into the same output_dir reattaches to its MLflow run; resume=True skips the points it already holds
    with tracking.stage_run(uri, cfg.tracking.experiment, prep.run_name, task.stage, parent_run_id,
                            config=resolved, output=prep.output_dir) as run:
        run.log_metrics(prep.rows.metrics, 0, resume=True)
        run.log_datasets(cfg.data.train, "training", name=f"{task.stage}-data")
        sink = ProgressSink.remote()
        last: dict = {}

        def on_metrics(step: int, metrics: dict) -> None:
            last.update(metrics)
            run.log_metrics(metrics, step, resume=True)

        try:
            follow(trainer(task, prep, sink, fault).fit, sink, on_metrics, desc=f"{task.stage} {prep.run_name}")
        except TrainingFailedError as exc:
            failure = training_failure(exc, prep.run_name)
            if failure is exc:
                raise  # a bug in lipo: Ray's error, with the worker's traceback
            raise failure from exc
        ckpts.prune(run_dir, cfg.checkpoint.keep)  # rank 0 prunes while uploads may run: it can leave one more
        evaluated = task.evaluate(prep.model_dir)
        run.log_metrics(evaluated, 0, resume=True)
        # A transformers-flavour MLflow model; on object storage the model stays where it is, named in the log
        mlflow_models.log_model(run, prep.model_dir)
    print(f"[lipo] model: {prep.model_dir}\n[lipo] mlflow: run '{prep.run_name}' in {uri}", flush=True)
    return TrainResult(prep.run_name, run.run_id, uri, prep.model_dir, {**last, **evaluated})


def trainer(task: Task, prep: Prepared, sink, fault: dict | list[dict] | None) -> TorchTrainer:
    """Ray Train's trainer: one `train_loop` per worker, each given the task object and the path of the tokenised
    rows (`lipo.training.token_cache`), from which it reads only what its plan assigns it."""
    cfg, sc = task.cfg, task.cfg.scaling
    return TorchTrainer(
        train_loop,
        train_loop_config={"task": task, "sink": sink, "fault": fault, "model_dir": str(prep.model_dir),
                           "rows": str(prep.rows.path), "has_ref": prep.rows.has_ref,
                           "run_dir": storage.join(prep.output_dir, prep.run_name)},
        scaling_config=ScalingConfig(num_workers=sc.num_workers, use_gpu=sc.use_gpu, resources_per_worker=(
            {"CPU": sc.cpus_per_worker, "GPU": sc.gpus_per_worker} if sc.use_gpu else {"CPU": sc.cpus_per_worker})),
        torch_config=TorchConfig(backend="nccl" if sc.use_gpu else "gloo"),
        run_config=RunConfig(name=prep.run_name, storage_path=str(prep.output_dir),
                             failure_config=FailureConfig(max_failures=cfg.checkpoint.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=None)),  # lipo prunes: checkpoints.py
    )


def tidy_checkpoints(run_dir: str, keep: int) -> None:
    """Before a fit: prune the run's checkpoints to `keep` (a killed run leaves more, and incomplete ones) and drop
    Ray Train's record of them, which may lag behind the disk and name pruned folders; say what was removed."""
    pruned = ckpts.prune(run_dir, keep)
    ckpts.drop_ray_record(run_dir)
    if note := pruned.note(keep):
        print(f"[lipo] checkpoints in {run_dir}: {note}", flush=True)
    if pruned.kept:
        print(f"[lipo] resuming from the newest complete checkpoint: step {pruned.kept[0].step} "
              f"({pruned.kept[0].name})", flush=True)


# Where Ray Train (2.60, pinned) keeps a worker's own exception inside its wrappers: the user code's exception
# (UserExceptionWithTraceback) and a failed health check (WorkerHealthCheckFailedError, e.g. a dead process).
_WRAPPED = ("_base_exc", "health_check_failure", "cause")


def _causes(exc: BaseException | None):
    """`exc` and every exception it wraps."""
    while exc is not None:
        yield exc
        exc = exc.__cause__ or next((getattr(exc, a) for a in _WRAPPED if getattr(exc, a, None) is not None), None)


def training_failure(exc: TrainingFailedError, run_name: str) -> BaseException:
    """What to raise for a failed fit: a one-line LipoError for a user's mistake or a dead worker, else `exc`."""
    failures = [f for f in (getattr(exc, "worker_failures", None) or {}).values()]
    failures += [f for f in [getattr(exc, "controller_failure", None)] if f is not None]
    for failure in failures:
        for cause in _causes(failure):
            if isinstance(cause, LipoError):
                return LipoError(f"training run '{run_name}': {cause}")
    died = [c for f in failures for c in _causes(f) if isinstance(c, RayActorError)]
    if died:  # the survivors' errors (a broken collective, "connection reset") follow from the dead worker
        first = (str(died[0]).strip().splitlines() or [type(died[0]).__name__])[0]
        return LipoError(f"training run '{run_name}' failed: a worker process died ({first}); rerun with "
                         f"run_name={run_name} to resume from its last checkpoint")
    return exc
