"""MFU, step time and peak memory of lipo's training step through its own DeepSpeed engine, next to a plain
causal-LM "ceiling" step of the same model on the same number of tokens.

Part of the GPU suite: `bash benchmarks/gpu_check.sh` (CPU smoke: `python benchmarks/gpu_check.py --smoke`).

lipo setting: `lipo.training.engine.build_engine` on a `TrainConfig` (ZeRO stage 2 or 3, bf16 on a GPU, torch AdamW,
clip 1.0, world size 1), the policy loaded in `engine.train_dtype` first, as `lipo train` loads it. One step, as
`lipo train` runs it on lists that carry reference log-probs (so there is no reference forward): make_batch (packed
or not) -> copy to the device -> batch_logps -> LiPO-lambda -> engine.backward -> engine.step. The collate is timed
with the step (the loop does it inline) and also reported alone.
Packed settings use flex_attention on a GPU when this lipo packs under it, rows padded to FlexAttention's block as
lipo's collate does (else sdpa with the dense mask; the JSON says which); unpacked settings use sdpa.
Ceiling: the same model in plain bf16 (no master weights) with fused torch AdamW; forward with labels (cross-entropy
over every position) -> backward -> step, on `lists_per_step` rows as long as the packed rows of that K.

MFU = 6 * N * processed tokens/s / peak, N = parameters in matmuls (all but the input embedding; the untied LM head
counts), peak = the card's dense bf16 spec (989e12 on an H200). Attention FLOPs are not counted. It is model FLOPs
utilisation: the LM head counts at every processed token even where lipo's log-probs skip it (prompt positions).
Unpacked tokens include the prompt repeated K times, so compare packed and unpacked by lists/s, not by MFU.
Each setting: a fresh model and engine, `warmup` steps (the first compiles flex kernels), then timed steps;
peak memory is torch.cuda.max_memory_allocated from a reset before the model is built (weights, optimizer states,
activations).
"""

from __future__ import annotations

import time

import torch

from gpu_common import (BETA, Ctx, Deadline, PartTimeout, Recorder, build_model, matmul_params, median, memory,
                        packed_batch, random_lists, release, reset_peak, spec_peak, sync, to_device)
from lipo.losses import LOSSES
from lipo.models.packed_logps import batch_logps, batch_token_count, make_batch


def train_config(ctx: Ctx, stage: int):
    from lipo.training.config import TrainConfig

    return TrainConfig.model_validate({
        "data": {"train": ["unused.jsonl"]}, "deepspeed": {"stage": stage},
        "optim": {"lr": 1e-6, "micro_batch_size": ctx.lists_per_step, "schedule": "constant", "grad_clip": 1.0},
        "scaling": {"use_gpu": ctx.cuda, "num_workers": 1}})


def packed_attention(ctx: Ctx, model) -> str:
    """flex_attention for packed training on a GPU when this lipo supports it there, else sdpa (dense mask)."""
    if not ctx.cuda:
        return "sdpa"  # FlexAttention has no CPU backward
    from gpu_parity import flex_support

    return "sdpa" if flex_support(model) else "flex_attention"


def load_dtype(ctx: Ctx, cfg) -> torch.dtype:
    """The dtype `lipo train` loads the policy in before DeepSpeed wraps it (bf16 on a GPU)."""
    from lipo.training.engine import train_dtype

    return getattr(torch, train_dtype(cfg))


def summarize(ctx: Ctx, times: list[float], collate: list[float], tokens: int, lists: int, n_mm: int) -> dict:
    t = median(times)
    res = {"step_s_median": t, "step_s_all": times, "collate_s_median": median(collate) if collate else 0.0,
           "processed_tokens_per_step": tokens, "tokens_per_s": tokens / t, "lists_per_s": lists / t,
           "matmul_params": n_mm}
    peak = spec_peak(ctx)
    if peak:
        res["mfu"] = 6 * n_mm * tokens / t / peak
        if collate:  # the device's share, without the host-side collate
            res["mfu_excl_collate"] = 6 * n_mm * tokens / max(t - res["collate_s_median"], 1e-9) / peak
    return res


def lipo_setting(ctx: Ctx, model_name: str, k: int, packing: bool, stage: int, steps: int, warmup: int,
                 attn: str | None = None) -> dict:
    from lipo.training.engine import build_engine

    cfg = train_config(ctx, stage)
    at_start = reset_peak(ctx)
    model = build_model(model_name, ctx, "sdpa", load_dtype(ctx, cfg))  # DeepSpeed keeps fp32 masters, runs bf16
    attn = attn or (packed_attention(ctx, model) if packing else "sdpa")
    model.config._attn_implementation = attn
    n_mm = matmul_params(model)
    engine = build_engine(model, cfg, world=1, total_steps=10**6)
    engine.train()
    loss_fn = LOSSES["lambda"]
    lists = random_lists(ctx.lists_per_step * 2, k, ctx.prompt_len, ctx.response_len, model.config.vocab_size, k)
    groups = [lists[i:i + ctx.lists_per_step] for i in range(0, len(lists), ctx.lists_per_step)]
    times, collate, tokens = [], [], 0

    def step(items) -> tuple[float, float, int]:
        sync(ctx.device)
        t0 = time.perf_counter()
        batch = to_device(packed_batch(items, attn) if packing else make_batch(items, 0, False), ctx.device)
        t1 = time.perf_counter()
        scores = BETA * (batch_logps(engine, batch) - batch["ref_logps"])  # [B, K]
        engine.backward(loss_fn(scores, batch["labels"], batch["list_mask"]))
        engine.step()
        sync(ctx.device)
        return time.perf_counter() - t0, t1 - t0, batch_token_count(batch)

    t_first = time.perf_counter()
    for i in range(warmup):
        step(groups[i % 2])
    first_s = time.perf_counter() - t_first
    for i in range(steps):
        t, c, tokens = step(groups[i % 2])
        times.append(t)
        collate.append(c)
    res = {"kind": "lipo", "model": model_name, "K": k, "packing": packing, "zero_stage": stage, "attention": attn,
           "warmup_s": first_s, **summarize(ctx, times, collate, tokens, ctx.lists_per_step, n_mm), **memory(ctx),
           **at_start}
    release(engine)
    return res


def ceiling_setting(ctx: Ctx, model_name: str, k: int, steps: int, warmup: int) -> dict:
    at_start = reset_peak(ctx)
    model = build_model(model_name, ctx, "sdpa", ctx.dtype)
    n_mm = matmul_params(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.0, **({"fused": True} if ctx.cuda else {}))
    length = ctx.prompt_len + k * ctx.response_len  # a packed row of this K
    gen = torch.Generator().manual_seed(k)
    ids = torch.randint(3, model.config.vocab_size, (ctx.lists_per_step, length), generator=gen).to(ctx.device)

    def step() -> float:
        sync(ctx.device)
        t0 = time.perf_counter()
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(ctx.device)
        return time.perf_counter() - t0

    t_first = time.perf_counter()
    for _ in range(warmup):
        step()
    first_s = time.perf_counter() - t_first
    times = [step() for _ in range(steps)]
    res = {"kind": "ceiling", "model": model_name, "K": k, "tokens_like": "packed rows of this K",
           "warmup_s": first_s, **summarize(ctx, times, [], ids.numel(), ctx.lists_per_step, n_mm), **memory(ctx),
           **at_start}
    return res


def plan(ctx: Ctx, model_name: str) -> list[dict]:
    """The settings of one model, most important first (a spent budget drops the tail). See gpu_check's docstring."""
    if model_name == "1.26B":
        out = [dict(kind="ceiling", k=8), dict(k=8, packing=True, stage=2), dict(k=8, packing=False, stage=2),
               dict(k=2, packing=True, stage=2), dict(k=2, packing=False, stage=2), dict(k=8, packing=True, stage=3)]
    else:
        out = [dict(kind="ceiling", k=8), dict(kind="ceiling", k=2)]
        out += [dict(k=k, packing=p, stage=2) for k in (8, 2) for p in (True, False)]
        out += [dict(k=8, packing=p, stage=3) for p in (True, False)]
        if ctx.cuda:  # what flex buys over the dense mask, where packed settings use flex
            out.append(dict(k=8, packing=True, stage=2, attn="sdpa"))
        out += [dict(k=2, packing=p, stage=3) for p in (True, False)]
    return out


def mfu(rec: Recorder, deadline: Deadline, ctx: Ctx, model_name: str, steps: int, warmup: int) -> None:
    out = rec.data.setdefault("mfu", {"settings": [], "skipped": []})
    last = 0.0  # wall time of the previous setting: a setting that would not fit is skipped, not started
    for s in plan(ctx, model_name):
        label = f"{model_name} {s}"
        if deadline.left() < max(5.0, 0.8 * last):
            out["skipped"].append(f"{label}: part budget spent")
            rec.write()
            continue
        t0 = time.perf_counter()
        try:
            if s.get("kind") == "ceiling":
                res = ceiling_setting(ctx, model_name, s["k"], steps, warmup)
            else:
                res = lipo_setting(ctx, model_name, s["k"], s["packing"], s["stage"], steps, warmup, s.get("attn"))
        except PartTimeout:
            raise
        except Exception as e:  # one broken setting (OOM, a kernel) must not cost the others
            res = {"model": model_name, **s, "error": f"{type(e).__name__}: {e}"[:500]}
            rec.error("mfu", f"{label}: {type(e).__name__}: {str(e)[:200]}")
            release()
        release()  # the setting's engine/model are unreachable now; cycles (hooks) need the collector
        res["setting_wall_s"] = last = time.perf_counter() - t0
        out["settings"].append(res)
        rec.write()
        print(f"[mfu] {label}: {res.get('step_s_median', float('nan')):.3f} s/step, "
              f"MFU {100 * res.get('mfu', float('nan')):.1f}%, {res.get('peak_allocated_gib', 0):.1f} GiB, "
              f"setting {res['setting_wall_s']:.0f} s", flush=True)
