"""The per-worker training loop shared by `lipo train`, `lipo sft` and `lipo train-rm` (Ray Train, DeepSpeed).

Reads top to bottom: setup -> (step -> log -> checkpoint)* -> export. One optimizer step is `grad_accum`
micro-batches per worker, each of `micro_batch_size` rows, or of as many rows as fit `max_tokens_per_micro_batch`
tokens when that budget is set (`lipo.training.plan`); what a micro-batch computes is the task's `loss` (the task
object, `lipo.training.tasks`, arrives in `config["task"]`), e.g. for LiPO `beta * (log pi - log pi_ref)` scored by
an objective from `lipo.losses`. Setup first resolves the ZeRO stage (`deepspeed.stage: auto`,
`lipo.training.engine.resolve_stage`) and prints it on rank 0 with the task's other settings, then resumes from the
newest complete checkpoint on disk (`resume`, `lipo.training.checkpoints`). Before a checkpoint, rank 0 waits until
the driver has logged every step up to it to MLflow (`logged`): a run resumed from a checkpoint has no gap in its
history. After it, rank 0 prunes the run's checkpoints to `checkpoint.keep`. Launched by
`lipo.training.launch.launch` (`lipo train CONFIG.yaml`).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import ray.train
import torch
import torch.distributed as dist

from lipo import storage
from lipo.models.loading import load_tokenizer
from lipo.models.packed_logps import batch_token_count
from lipo.training import checkpoints as ckpts
from lipo.training import engine as eng
from lipo.training.plan import BatchPlan, TokenBudgetPlan
from lipo.training.progress import wait_logged
from lipo.training.tasks import Task
from lipo.training.token_cache import TokenRows


def train_loop(config: dict) -> None:
    # ---- setup
    task: Task = config["task"]
    cfg = task.cfg
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed + rank)
    device = torch.device("cuda" if cfg.scaling.use_gpu else "cpu")
    rows = TokenRows(config["rows"])  # memory-mapped; each micro-batch takes only its own lists
    if cfg.optim.max_tokens_per_micro_batch is None:
        plan = BatchPlan(len(rows), cfg.optim.micro_batch_size, world, cfg.optim.grad_accum, cfg.optim.epochs,
                         cfg.optim.max_steps, cfg.seed)
    else:
        plan = TokenBudgetPlan(rows.tokens(), cfg.optim.max_tokens_per_micro_batch, world,
                               cfg.optim.grad_accum, cfg.optim.epochs, cfg.optim.max_steps, cfg.seed)
    tokenizer = load_tokenizer(cfg.model.path)
    has_ref = config["has_ref"]  # every list carries ref_logps: no reference model is needed
    stage, why = eng.resolve_stage(cfg, world, task.needs_reference(has_ref))
    task.cfg = cfg = eng.with_stage(cfg, stage)  # from here on, everything sees the resolved stage
    engine = eng.build_engine(task.build_model(), cfg, world, plan.total_steps)
    ref = task.build_reference(world, has_ref)
    if rank == 0:
        settings = "".join(f"; {k}: {v}" for k, v in getattr(task, "settings", {}).items())
        print(f"[lipo] {task.stage}: deepspeed stage {stage} ({why}){settings}", flush=True)
    run_dir = config["run_dir"]
    start = resume(engine, run_dir, rank)
    sink, pushed = config.get("sink"), 0

    for step in range(start, plan.total_steps):
        # ---- step
        t0, sums, tokens = time.perf_counter(), None, 0
        for micro in range(cfg.optim.grad_accum):
            items = rows.take(plan.indices(step, micro, rank))
            batch = {k: v.to(device) for k, v in task.collate(items, tokenizer.pad_token_id).items()}
            loss, m = task.loss(engine, ref, batch)
            engine.backward(loss)
            engine.step()
            values = torch.tensor(list(m.values()), dtype=torch.float64)
            sums = values if sums is None else sums + values
            tokens += batch_token_count(batch)
        # ---- log
        sums = torch.cat([sums, torch.tensor([tokens], dtype=torch.float64)])
        dist.all_reduce(sums)  # mean of the per-micro-batch means over ranks; tokens summed
        n = world * cfg.optim.grad_accum
        metrics = {f"train/{k}": float(v) / n for k, v in zip(m.keys(), sums[:-1])}
        metrics.update({"train/lr": float(engine.get_lr()[0]),
                        "train/grad_norm": float(engine.get_global_grad_norm() or 0.0),
                        "train/tokens_per_s": float(sums[-1]) / (time.perf_counter() - t0),
                        "train/epoch": step / plan.steps_per_epoch})
        done = step + 1
        if rank == 0 and sink is not None and (done % cfg.tracking.log_every == 0 or done == plan.total_steps):
            sink.push.remote(done, plan.total_steps, metrics)
            pushed = done
        # ---- checkpoint
        if done % cfg.checkpoint.every == 0 or done == plan.total_steps:
            if rank == 0 and sink is not None and pushed:
                logged(sink, pushed)  # a run resumed from this checkpoint has every step before it in MLflow
            with tempfile.TemporaryDirectory() as tmp:
                eng.save_checkpoint(engine, Path(tmp), done, rank, world)
                ray.train.report({"step": done, **metrics}, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            if rank == 0:  # lipo keeps `checkpoint.keep`, Ray none (lipo.training.checkpoints)
                ckpts.prune(run_dir, cfg.checkpoint.keep, running=True)
        eng.fault_hook(config.get("fault"), done, rank)

    # ---- export
    eng.export_model(engine, tokenizer, config["model_dir"], stage, rank)


def resume(engine, run_dir: str, rank: int) -> int:
    """Restore the newest complete checkpoint of the run on disk, which rank 0 finds and every rank loads
    (`lipo.training.checkpoints`: Ray Train's record may lag behind the disk); the steps it had done, 0 if none."""
    found = [ckpts.newest(run_dir) if rank == 0 else None]
    if dist.is_initialized():
        dist.broadcast_object_list(found, src=0)
    if found[0] is None:
        return 0
    with ray.train.Checkpoint(storage.join(run_dir, found[0].name)).as_directory() as d:
        step = eng.load_checkpoint(engine, Path(d), rank)
    if rank == 0:
        print(f"[lipo] resumed from step {step} ({found[0].name})", flush=True)
    return step


def logged(sink, step: int, timeout_s: float = 300.0) -> None:
    """Wait until the driver has logged the metrics of `step` to MLflow (`lipo.training.progress`)."""
    if not wait_logged(sink, step, timeout_s):
        print(f"[lipo] the driver has not logged step {step} to MLflow after {timeout_s:.0f} s; going on",
              flush=True)
