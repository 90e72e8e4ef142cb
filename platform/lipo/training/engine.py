"""DeepSpeed plumbing for the training loop: engine construction, checkpoints and the final HF export.

Kept apart from `loop.py` so the loop reads as setup -> step -> log -> checkpoint. CPU runs use fp32 with the
gloo backend and torch's AdamW (`torch_adam`), since DeepSpeed's fused CPU Adam needs a compiled extension.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import torch

from lipo import storage
from lipo.training.config import TrainConfig

# _deepspeed_note: DeepSpeed is imported inside the functions that use it. The Ray Train controller unpickles
# `train_loop` and so imports this module; at module level it would load DeepSpeed there too, which costs seconds
# and prints its accelerator probe once more on the user's console.


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the peak LR at optimizer step `step`: linear warmup, then cosine/linear decay to 0."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress


def ds_config(cfg: TrainConfig, world: int, train: bool = True, n_params: int = 10**9) -> dict:
    # DeepSpeed's default 5e8-element buckets would allocate GBs for a small model; size them to the model.
    bucket = int(max(1e5, min(5e8, n_params)))
    zero: dict = {"stage": cfg.deepspeed.stage, "reduce_bucket_size": bucket, "allgather_bucket_size": bucket}
    if train and cfg.deepspeed.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    conf = {
        "train_micro_batch_size_per_gpu": cfg.optim.micro_batch_size,
        "gradient_accumulation_steps": cfg.optim.grad_accum,
        "train_batch_size": cfg.optim.micro_batch_size * cfg.optim.grad_accum * world,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.scaling.use_gpu},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if train:
        o = cfg.optim
        conf["gradient_clipping"] = o.grad_clip
        conf["optimizer"] = {"type": "AdamW", "params": {
            "lr": o.lr, "betas": list(o.betas), "eps": o.eps, "weight_decay": o.weight_decay, "torch_adam": True}}
    return conf


def build_engine(model: torch.nn.Module, cfg: TrainConfig, world: int, total_steps: int):
    import deepspeed  # see _deepspeed_note: where used, so the Ray Train controller never imports it

    o = cfg.optim

    def scheduler(optimizer):
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, o.warmup_steps, total_steps, o.schedule))

    params = [p for p in model.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=params, lr_scheduler=scheduler,
        config=ds_config(cfg, world, n_params=sum(p.numel() for p in params)))
    return engine


def build_reference(model: torch.nn.Module, cfg: TrainConfig, world: int):
    """A frozen reference; under ZeRO-3 it is partitioned like the policy, otherwise a plain replica."""
    model.requires_grad_(False)
    if cfg.deepspeed.stage != 3:
        return model.to("cuda" if cfg.scaling.use_gpu else "cpu").eval()
    import deepspeed  # see _deepspeed_note

    n_params = sum(p.numel() for p in model.parameters())
    engine, *_ = deepspeed.initialize(model=model, config=ds_config(cfg, world, train=False, n_params=n_params))
    engine.eval()
    return engine


def save_checkpoint(engine, directory: Path, step: int, rank: int) -> None:
    """All ranks write their DeepSpeed shards (and own RNG state) into `directory`."""
    engine.save_checkpoint(str(directory), tag="state", client_state={"step": step})
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, directory / f"rng_rank{rank}.pt")


def load_checkpoint(engine, directory: Path, rank: int) -> int:
    """Restore weights, optimizer, scheduler and RNG; returns the number of optimizer steps already done."""
    _, client_state = engine.load_checkpoint(str(directory), tag="state")
    rng_file = directory / f"rng_rank{rank}.pt"
    if rng_file.exists():
        rng = torch.load(rng_file, weights_only=False)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return int(client_state["step"])


def export_model(engine, tokenizer, out: str, stage: int, rank: int) -> None:
    """Write a consolidated safetensors HF model + tokenizer to `out` (a path, or an object-store URI: written
    locally, then uploaded); ZeRO-3 shards are gathered first."""
    import deepspeed  # see _deepspeed_note

    model = engine.module
    params = list(model.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=stage == 3):
        if rank == 0:
            state = {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()}
    if rank == 0:
        if hasattr(model, "merge_and_unload"):  # peft: fold the adapter into the base weights
            model = model.merge_and_unload()
            state = {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()}
        with tempfile.TemporaryDirectory() as tmp:
            out_dir = storage.local(out) or Path(tmp)
            out_dir.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(str(out_dir), state_dict=state, safe_serialization=True)
            tokenizer.save_pretrained(str(out_dir))
            if storage.local(out) is None:
                storage.upload_dir(out_dir, out)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def fault_hook(fault: dict | None, step: int, rank: int) -> None:
    """Test hook: kill this worker process once at `step` (the marker file makes it fire only once)."""
    if not fault or fault.get("step") != step or fault.get("rank", 1) != rank:
        return
    marker = Path(fault["marker"])
    if not marker.exists():
        marker.write_text(str(step))
        os._exit(1)
