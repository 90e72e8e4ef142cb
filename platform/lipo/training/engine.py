"""DeepSpeed plumbing for the training loop: engine construction, checkpoints and the final HF export.

Kept apart from `loop.py` so the loop reads as setup -> step -> log -> checkpoint. CPU runs use fp32 with the
gloo backend and torch's AdamW (`torch_adam`), since DeepSpeed's fused CPU Adam needs a compiled extension; GPU runs
load weights in bf16 (`train_dtype`), DeepSpeed's bf16 optimizer keeping the fp32 master copy.

Every worker first resolves `deepspeed.stage` (`resolve_stage`: `auto` by `lipo.training.memory`) and continues with
`with_stage(cfg, stage)`, so the models, the engines and the export all see one integer stage. Under ZeRO-3 the models
are built partitioned (`zero3_config` for `lipo.models.loading`) and the export gathers one module at a time.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import torch

from lipo import storage
from lipo.training import checkpoints, memory
from lipo.training.config import StageConfig, TrainConfig

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


def train_dtype(cfg: StageConfig) -> str:
    """The dtype weights are loaded in: bf16 on GPU (as DeepSpeed's bf16 mode computes), fp32 on CPU."""
    return "bfloat16" if cfg.scaling.use_gpu else "float32"


def resolve_stage(cfg: StageConfig, world: int, with_reference: bool) -> tuple[int, str]:
    """The ZeRO stage this run uses and why: the configured one, or `auto` resolved by `lipo.training.memory`."""
    requested = cfg.deepspeed.stage
    if requested != "auto":
        return requested, "set in the config"
    if not cfg.scaling.use_gpu:
        return 2, "auto: 2 on CPU"
    from lipo.models.loading import count_params

    lora = cfg.model.lora
    n, trainable = count_params(cfg.model.path, lora.r if lora else None, lora.target_modules if lora else ())
    device_bytes = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    return memory.choose_stage(n, world, device_bytes, trainable, with_reference)


def with_stage(cfg: StageConfig, stage: int) -> StageConfig:
    """A copy of `cfg` whose `deepspeed.stage` is the resolved `stage`."""
    return cfg.model_copy(update={"deepspeed": cfg.deepspeed.model_copy(update={"stage": stage})})


def zero3_config(cfg: StageConfig) -> dict | None:
    """The DeepSpeed config models are built partitioned under (`lipo.models.loading`), or None below ZeRO-3."""
    if cfg.deepspeed.stage != 3:
        return None
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    return ds_config(cfg, world, train=False)


def ds_config(cfg: TrainConfig, world: int, train: bool = True, n_params: int = 10**9) -> dict:
    stage = cfg.deepspeed.stage
    if stage == "auto":
        raise ValueError("resolve deepspeed.stage first (engine.resolve_stage, engine.with_stage)")
    # DeepSpeed's default 5e8-element buckets would allocate GBs for a small model; size them to the model.
    bucket = int(max(1e5, min(5e8, n_params)))
    zero: dict = {"stage": stage, "reduce_bucket_size": bucket, "allgather_bucket_size": bucket}
    if stage == 3:  # export_model gathers 16-bit weights module by module (what engine.save_16bit_model needs too)
        zero["stage3_gather_16bit_weights_on_model_save"] = True
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


def save_checkpoint(engine, directory: Path, step: int, rank: int, world: int) -> None:
    """All ranks write their DeepSpeed shards (and own RNG state) into `directory`, each its marker last: the
    folder they make up is complete once every rank's marker and the files it lists are there
    (`lipo.training.checkpoints`)."""
    engine.save_checkpoint(str(directory), tag="state", client_state={"step": step})
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, directory / f"rng_rank{rank}.pt")
    checkpoints.write_marker(directory, step, rank, world)


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
    locally, then uploaded) from rank 0, in the training dtype (bf16 on GPU, fp32 on CPU); a LoRA adapter is merged.

    Under ZeRO-3 DeepSpeed gathers the weights one module at a time and only rank 0 keeps them, on the host
    (`_zero3_consolidated_16bit_state_dict`; every rank must call it); below ZeRO-3 every rank already holds them.
    """
    if stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict()  # None except on rank 0
    else:
        state = {k: v.detach().cpu() for k, v in engine.module.state_dict().items()} if rank == 0 else None
    if rank == 0:
        model = host_model(engine.module, state)
        with tempfile.TemporaryDirectory() as tmp:
            out_dir = storage.local(out) or Path(tmp)
            out_dir.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(str(out_dir), safe_serialization=True)
            tokenizer.save_pretrained(str(out_dir))
            if storage.local(out) is None:
                storage.upload_dir(out_dir, out)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def host_model(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A model of `module`'s architecture holding `state` (no copy), with a LoRA adapter merged into its weights.

    Built on the meta device and given the state's tensors, so it does not matter how ZeRO partitioned `module`.
    """
    lora = hasattr(module, "merge_and_unload")  # a peft model
    base = module.get_base_model() if lora else module
    with torch.device("meta"):
        model = type(base)(base.config)
    if lora:
        from peft import get_peft_model  # optional dependency (lipo[lora])

        model = get_peft_model(model, next(iter(module.peft_config.values())))
    model.load_state_dict(state, assign=True, strict=False)
    (model.get_base_model() if lora else model).tie_weights()  # a tied head may be absent from the state
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise RuntimeError(f"export: no weights gathered for {missing[:5]} ({len(missing)} parameters)")
    return model.merge_and_unload() if lora else model


def fault_hook(fault: dict | list[dict] | None, step: int, rank: int) -> None:
    """Test hook: kill this worker process once at `step` (the marker file makes it fire only once); a list of
    faults fires each once."""
    for f in fault if isinstance(fault, list) else [fault] if fault else []:
        if f.get("step") == step and f.get("rank", 1) == rank and not Path(f["marker"]).exists():
            Path(f["marker"]).write_text(str(step))
            os._exit(1)
