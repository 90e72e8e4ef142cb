"""`lipo train CONFIG.yaml [key=value ...]`: LiPO training on Ray Train + DeepSpeed, tracked in MLflow.

Also a Ray job entrypoint: `python -m workflows.train CONFIG.yaml`. Steps: prepare (validate + tokenise, before
Ray), open the MLflow run, fit with `TorchTrainer`, then log the exported Hugging Face model. `launch` is the same
for every training stage (`lipo sft` and `lipo train-rm` call it with their task).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from lipo.errors import LipoError
from lipo.training.config import TrainConfig


@dataclass
class TrainResult:
    run_name: str
    run_id: str
    tracking_uri: str
    model_dir: Path
    metrics: dict


def run(cfg: TrainConfig, fault: dict | None = None, parent_run_id: str | None = None) -> TrainResult:
    return launch(cfg, "lipo", fault, parent_run_id)


def launch(cfg, task: str, fault: dict | None = None, parent_run_id: str | None = None) -> TrainResult:
    """Train `cfg` with the loop of `lipo.training.loop` and the task named `task`."""
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from lipo import tracking
    from lipo.jobs import check_shared_storage
    from lipo.runtime import ensure_ray
    from lipo.training.loop import train_loop
    from lipo.training.prepare import prepare
    from lipo.training.progress import ProgressSink, follow

    prep = prepare(cfg, task)  # every user mistake surfaces here, before Ray starts
    print(f"[lipo] {task} data: {prep.summary}", flush=True)
    resolved = cfg.model_copy(update={"run_name": prep.run_name}).model_dump(mode="json")
    uri = tracking.resolve_uri(cfg.tracking.uri, cfg.output_dir)
    run_id, created = tracking.open_run(uri, cfg.tracking.experiment, prep.run_name, task, parent_run_id)
    tracking.log_config(uri, run_id, resolved, created)
    tracking.log_metrics(uri, run_id, prep.metrics, 0)

    ensure_ray()
    ray.data.DataContext.get_current().enable_progress_bars = False  # workers read the whole set once; no bars
    check_shared_storage(cfg.output_dir)  # multi-node runs need checkpoints on shared storage
    sc = cfg.scaling
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"cfg": resolved, "task": task, "sink": (sink := ProgressSink.remote()), "fault": fault,
                           "model_dir": str(prep.model_dir)},
        scaling_config=ScalingConfig(num_workers=sc.num_workers, use_gpu=sc.use_gpu, resources_per_worker=(
            {"CPU": sc.cpus_per_worker, "GPU": sc.gpus_per_worker} if sc.use_gpu else {"CPU": sc.cpus_per_worker})),
        torch_config=TorchConfig(backend="nccl" if sc.use_gpu else "gloo"),
        run_config=RunConfig(name=prep.run_name, storage_path=str(prep.output_dir),
                             failure_config=FailureConfig(max_failures=cfg.checkpoint.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep)),
        datasets={"train": ray.data.from_items(prep.rows)},
        # No split: every worker takes its own seeded slice (lipo.training.plan), so resume is exact.
        dataset_config=DataConfig(datasets_to_split=[]),
    )
    last: dict = {}

    def on_metrics(step: int, metrics: dict) -> None:
        last.update(metrics)
        tracking.log_metrics(uri, run_id, metrics, step)

    try:
        follow(trainer.fit, sink, on_metrics, desc=f"{task} {prep.run_name}")
    except Exception as exc:
        tracking.finish_run(uri, run_id, "FAILED")
        last = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise LipoError(f"training run '{prep.run_name}' failed: {last}") from exc
    tracking.log_artifacts(uri, run_id, prep.model_dir, "model")
    tracking.finish_run(uri, run_id)
    print(f"[lipo] model: {prep.model_dir}\n[lipo] mlflow: run '{prep.run_name}' in {uri}", flush=True)
    return TrainResult(prep.run_name, run_id, uri, prep.model_dir, last)


def main(argv: list[str] | None = None) -> None:
    from lipo.config import load_config

    args = sys.argv[1:] if argv is None else argv
    run(load_config(TrainConfig, args[0], args[1:]))


if __name__ == "__main__":
    main()
