"""The per-worker LiPO training loop, run by Ray Train on every worker (`TorchTrainer(train_loop, ...)`).

Reads top to bottom: setup -> (step -> log -> checkpoint)* -> export. One optimizer step is `grad_accum`
micro-batches of `micro_batch_size` lists per worker; the score of a response is
`beta * (log pi(y|x) - log pi_ref(y|x))`, and the objective is looked up by name in `lipo.losses.LOSSES`.
Launched by `workflows/train.py`; run `lipo train CONFIG.yaml`.
"""

from __future__ import annotations

import functools
import tempfile
import time
from pathlib import Path

import ray.data
import ray.train
import torch
import torch.distributed as dist

from lipo.data.collate import collate_lists, count_tokens
from lipo.losses import LOSSES
from lipo.models.loading import load_causal_lm, load_tokenizer
from lipo.models.logps import sequence_logps
from lipo.training import engine as eng
from lipo.training.config import TrainConfig
from lipo.training.metrics import ndcg, pairwise_accuracy, top_bottom_margin
from lipo.training.plan import BatchPlan


def objective(cfg: TrainConfig):
    fn = LOSSES[cfg.objective.name]
    if cfg.objective.name == "lambda":
        fn = functools.partial(fn, weight=cfg.objective.lambda_weight, normalize=cfg.objective.normalize)
    return fn


def load_lists() -> list[dict]:
    """This worker's copy of the tokenised lists, in dataset order (see `plan.py` for why every worker has all)."""
    ray.data.DataContext.get_current().enable_progress_bars = False
    rows = sorted(ray.train.get_dataset_shard("train").iter_rows(), key=lambda r: int(r["idx"]))
    return [{
        "prompt_ids": [int(t) for t in r["prompt_ids"]],
        "response_ids": [[int(t) for t in resp] for resp in r["response_ids"]],
        "labels": [float(x) for x in r["labels"]],
        "ref_logps": None if r.get("ref_logps") is None else [float(x) for x in r["ref_logps"]],
    } for r in rows]


def policy_model(cfg: TrainConfig):
    model = load_causal_lm(cfg.model.path, "float32", cfg.model.attn_implementation)
    if cfg.model.lora:
        from peft import LoraConfig, get_peft_model

        lc = cfg.model.lora
        model = get_peft_model(model, LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                                 target_modules=lc.target_modules, task_type="CAUSAL_LM"))
    return model


def reference_logps(engine, ref, batch: dict) -> torch.Tensor:
    """[B, K] reference log-probs: from the data if present, else the frozen reference (or the LoRA base)."""
    if "ref_logps" in batch:
        return batch["ref_logps"]
    with torch.no_grad():
        if ref is None:  # LoRA: the reference is the base model with the adapter switched off
            with engine.module.disable_adapter():
                return sequence_logps(engine, batch)
        return sequence_logps(ref, batch)


def train_loop(config: dict) -> None:
    # ---- setup
    cfg = TrainConfig.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed + rank)
    device = torch.device("cuda" if cfg.scaling.use_gpu else "cpu")
    lists = load_lists()
    plan = BatchPlan(len(lists), cfg.optim.micro_batch_size, world, cfg.optim.grad_accum, cfg.optim.epochs,
                     cfg.optim.max_steps, cfg.seed)
    tokenizer = load_tokenizer(cfg.model.path)
    engine = eng.build_engine(policy_model(cfg), cfg, world, plan.total_steps)
    has_ref = all(it["ref_logps"] is not None for it in lists)
    ref = None
    if not has_ref and not cfg.model.lora:
        ref = eng.build_reference(load_causal_lm(cfg.model.reference or cfg.model.path, "float32",
                                                 cfg.model.attn_implementation), cfg, world)
    loss_fn, beta = objective(cfg), cfg.objective.beta
    start = 0
    if (ckpt := ray.train.get_checkpoint()) is not None:
        with ckpt.as_directory() as d:
            start = eng.load_checkpoint(engine, Path(d), rank)
    sink = config.get("sink")

    for step in range(start, plan.total_steps):
        # ---- step
        t0, tokens, sums = time.perf_counter(), 0, torch.zeros(6, dtype=torch.float64)
        for micro in range(cfg.optim.grad_accum):
            items = [lists[i] for i in plan.indices(step, micro, rank)]
            batch = {k: v.to(device) for k, v in collate_lists(items, tokenizer.pad_token_id).items()}
            logps = sequence_logps(engine, batch)  # [B, K]
            log_ratio = logps - reference_logps(engine, ref, batch)  # [B, K]
            scores, labels, mask = beta * log_ratio, batch["labels"], batch["list_mask"]
            loss = loss_fn(scores, labels, mask)
            engine.backward(loss)
            engine.step()
            s = scores.detach().float()
            sums += torch.tensor([loss.item(), ndcg(s, labels, mask).item(), pairwise_accuracy(s, labels, mask).item(),
                                  top_bottom_margin(s, labels, mask).item(),
                                  log_ratio.detach()[mask].mean().item(), 0.0], dtype=torch.float64)
            tokens += count_tokens(batch)
        # ---- log
        sums[5] = tokens
        dist.all_reduce(sums)  # mean of the per-micro-batch means over ranks; tokens summed
        n = world * cfg.optim.grad_accum
        metrics = {"train/loss": sums[0] / n, "train/ndcg": sums[1] / n, "train/pair_accuracy": sums[2] / n,
                   "train/margin": sums[3] / n, "train/log_ratio": sums[4] / n,
                   "train/lr": engine.get_lr()[0], "train/grad_norm": float(engine.get_global_grad_norm() or 0.0),
                   "train/tokens_per_s": float(sums[5]) / (time.perf_counter() - t0),
                   "train/epoch": step / plan.steps_per_epoch}
        metrics = {k: float(v) for k, v in metrics.items()}
        done = step + 1
        if rank == 0 and sink is not None and (done % cfg.tracking.log_every == 0 or done == plan.total_steps):
            sink.push.remote(done, plan.total_steps, metrics)
        # ---- checkpoint
        if done % cfg.checkpoint.every == 0 or done == plan.total_steps:
            with tempfile.TemporaryDirectory() as tmp:
                eng.save_checkpoint(engine, Path(tmp), done, rank)
                ray.train.report({"step": done, **metrics}, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        eng.fault_hook(config.get("fault"), done, rank)

    # ---- export
    eng.export_model(engine, tokenizer, Path(config["model_dir"]), cfg.deepspeed.stage, rank)
