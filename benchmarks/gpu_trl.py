"""lipo against TRL's DPOTrainer on the GPU: K=2 pair tokens/s, and K=8 all-pairs supervision per second.

Part of the GPU suite: `bash benchmarks/gpu_check.sh` (CPU smoke: `python benchmarks/gpu_check.py --smoke`).
It reuses benchmarks/vs_trl.py (texts, pairs, TRL's trainer and step body), at the suite's 0.48B Llama and the
suite's lengths (prompt 256 bytes, responses 127 bytes + EOS = 128 tokens; byte tokenizer, ids fit the 32000 vocab).

Both sides: the same random-init weights (fp32 masters), a frozen reference with an online forward (TRL computes
it too), the same torch AdamW (lr 1e-5, clip 1.0), bf16 autocast around each step on a GPU; timed by wall clock
with device syncs, alternating step by step after one warm-up step each.
- K=2: TRL DPO (sigmoid) on 16 pairs/step vs lipo pair_logistic on the same pairs as K=2 lists (packed).
  Throughput counts the same tokens for both: (prompt + chosen) + (prompt + rejected) per pair. Before timing, both
  losses are computed in fp32 (TF32 off) on one batch with perturbed weights; they should agree to 1e-3 (a warning,
  not an error, if not: a TRL change in what it computes).
- K=8: lipo LiPO-lambda on 8 lists/step vs TRL on 16 of the lists' pairs/step; the measure is supervised pairs per
  second, a list of 8 graded responses supervising all K(K-1)/2 = 28 pairs.
If trl (or its datasets dependency) does not import, the part records "trl: unavailable" and the rest goes on.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from contextlib import nullcontext

import torch

from gpu_common import Ctx, Deadline, Recorder, build_model, median, timed
from lipo.models.tiny import byte_tokenizer

import vs_trl  # noqa: E402,F401  (its helpers are imported where used; trl itself only inside them)

torch.set_num_threads(os.cpu_count() or 1)  # vs_trl's _common pins one thread for the CPU benchmarks; undo

TRL_PAIRS_PER_STEP, LR = 16, 1e-5


def autocast(ctx: Ctx):
    return torch.autocast("cuda", dtype=torch.bfloat16) if ctx.cuda else nullcontext()


def trl_step(ctx: Ctx, trainer, opt, rows) -> None:
    from vs_trl import optimizer_step

    batch = {k: v.to(ctx.device) if torch.is_tensor(v) else v for k, v in trainer.data_collator(rows).items()}
    with autocast(ctx):
        loss = trainer.compute_loss(trainer.model, batch)
    trainer.accelerator.backward(loss)
    optimizer_step(trainer.model, opt)


def lipo_step(ctx: Ctx, model, ref, opt, items, objective: str) -> None:
    from vs_trl import lipo_loss, optimizer_step

    with autocast(ctx):
        loss = lipo_loss(model, ref, items, objective)
    loss.backward()
    optimizer_step(model, opt)


def alternate(ctx: Ctx, fns: dict, batches: list, reps: int, deadline: Deadline) -> dict[str, list[float]]:
    for fn in fns.values():
        fn(batches[0])  # warm-up (allocator, kernels, flex compile)
    times = {name: [] for name in fns}
    for rep in range(reps):
        if rep and deadline.left() < 10:
            break
        for name, fn in fns.items():
            times[name].append(timed(ctx, lambda: fn(batches[rep % len(batches)])))
    return times


def loss_check(ctx: Ctx, trainer, model, ref, rows) -> dict:
    from vs_trl import lipo_loss, pair_items

    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            batch = {k: v.to(ctx.device) if torch.is_tensor(v) else v for k, v in trainer.data_collator(rows).items()}
            trl_val = trainer.compute_loss(model, batch).item()
            lipo_val = lipo_loss(model, ref, pair_items(rows), "pair_logistic").item()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return {"trl_sigmoid": trl_val, "lipo_pair_logistic": lipo_val, "ok": abs(trl_val - lipo_val) < 1e-3}


def part_k2(ctx: Ctx, base, ref, tok, out_dir: str, deadline: Deadline, reps: int) -> dict:
    from vs_trl import all_pairs, lists_texts, pair_items, trl_trainer

    lists = lists_texts(4 * TRL_PAIRS_PER_STEP, 2, 1, ctx.prompt_len, ctx.response_len - 1)
    start = copy.deepcopy(base).train()
    with torch.no_grad():  # policy != reference, so the loss check is not trivially log 2
        g = torch.Generator(device=ctx.device).manual_seed(0)
        for p in start.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g, device=ctx.device))
    trl_model, lipo_model = start, copy.deepcopy(start)
    trainer = trl_trainer(trl_model, ref, tok, all_pairs(lists), out_dir, **gpu_overrides(ctx))
    sdpa_for_trl(trainer)
    rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    batches = [rows[i:i + TRL_PAIRS_PER_STEP] for i in range(0, len(rows), TRL_PAIRS_PER_STEP)]
    check = loss_check(ctx, trainer, trl_model, ref, batches[0])
    opts = {n: torch.optim.AdamW(m.parameters(), lr=LR, weight_decay=0.0) for n, m in
            (("trl", trainer.model), ("lipo", lipo_model))}
    fns = {"lipo": lambda b: lipo_step(ctx, lipo_model, ref, opts["lipo"], pair_items(b), "pair_logistic"),
           "trl": lambda b: trl_step(ctx, trainer, opts["trl"], b)}
    times = alternate(ctx, fns, batches, reps, deadline)
    tokens = median([sum(2 * len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in b)
                     for b in batches])
    out = {"pairs_per_step": TRL_PAIRS_PER_STEP, "pair_tokens_per_step": tokens, "same_batch_loss_fp32": check}
    for name, ts in times.items():
        out[name] = {"step_s_median": median(ts), "step_s_all": ts, "tokens_per_s": tokens / median(ts)}
    out["ratio_lipo_vs_trl_tokens_per_s"] = out["lipo"]["tokens_per_s"] / out["trl"]["tokens_per_s"]
    del trainer, opts, trl_model, lipo_model
    return out


def part_k8(ctx: Ctx, base, ref, tok, out_dir: str, deadline: Deadline, reps: int) -> dict:
    from vs_trl import all_pairs, lipo_items, lists_texts, trl_trainer

    k, n_lists = 8, ctx.lists_per_step
    lists = lists_texts(2 * n_lists, k, 2, ctx.prompt_len, ctx.response_len - 1)
    items = lipo_items(lists, tok)
    trl_model, lipo_model = copy.deepcopy(base).train(), copy.deepcopy(base).train()
    trainer = trl_trainer(trl_model, ref, tok, all_pairs(lists), out_dir, **gpu_overrides(ctx))
    sdpa_for_trl(trainer)
    rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    pair_batches = [rows[i:i + TRL_PAIRS_PER_STEP] for i in range(0, len(rows), TRL_PAIRS_PER_STEP)]
    list_batches = [items[i:i + n_lists] for i in range(0, len(items), n_lists)]
    opts = {n: torch.optim.AdamW(m.parameters(), lr=LR, weight_decay=0.0) for n, m in
            (("trl", trainer.model), ("lipo", lipo_model))}
    # Paired by index: step i of lipo uses list batch i % 2, TRL pair batch i % len(pair_batches).
    batches = list(zip(list_batches * len(pair_batches), pair_batches))
    fns = {"lipo": lambda b: lipo_step(ctx, lipo_model, ref, opts["lipo"], b[0], "lambda"),
           "trl": lambda b: trl_step(ctx, trainer, opts["trl"], b[1])}
    times = alternate(ctx, fns, batches, reps, deadline)
    pairs = {"lipo": n_lists * k * (k - 1) // 2, "trl": TRL_PAIRS_PER_STEP}
    out = {"K": k, "lists_per_step": n_lists, "trl_pairs_per_step": TRL_PAIRS_PER_STEP}
    for name, ts in times.items():
        out[name] = {"step_s_median": median(ts), "step_s_all": ts, "pairs_per_step": pairs[name],
                     "supervised_pairs_per_s": pairs[name] / median(ts)}
    out["ratio_lipo_vs_trl_pairs_per_s"] = out["lipo"]["supervised_pairs_per_s"] / out["trl"]["supervised_pairs_per_s"]
    del trainer, opts, trl_model, lipo_model
    return out


def sdpa_for_trl(trainer) -> None:
    """TRL's copies run sdpa, its usual attention, whatever lipo's packed path uses (flex on a GPU)."""
    for m in (trainer.model, trainer.ref_model):
        m = getattr(m, "module", m)
        if m is not None:
            m.config._attn_implementation = "sdpa"


def gpu_overrides(ctx: Ctx) -> dict:
    return {"use_cpu": not ctx.cuda, "bf16": ctx.cuda, "per_device_train_batch_size": TRL_PAIRS_PER_STEP}


def trl_vs_lipo(rec: Recorder, deadline: Deadline, ctx: Ctx, reps: int, model_name: str = "0.48B") -> None:
    try:  # everything the part touches: trl imports datasets (and its multiprocess, dill) only lazily
        import datasets  # noqa: F401
        import trl
        from trl import DPOConfig, DPOTrainer  # noqa: F401
    except Exception as e:  # ImportError, or a dependency of trl failing at import
        rec.data["trl"] = {"status": "unavailable", "reason": f"{type(e).__name__}: {e}"[:500]}
        rec.write()
        return
    out = rec.data.setdefault("trl", {"status": "running", "trl_version": trl.__version__, "model": model_name})
    from gpu_mfu import packed_attention

    tok = byte_tokenizer()
    base = build_model(model_name, ctx, "sdpa")  # fp32 masters; bf16 comes from autocast on both sides
    base.config._attn_implementation = packed_attention(ctx, base)  # lipo packs; TRL's copies: sdpa_for_trl
    out["lipo_attention"] = base.config._attn_implementation
    ref = copy.deepcopy(base).eval().requires_grad_(False)
    out_dir = tempfile.mkdtemp(prefix="gpu_trl_")
    try:
        for name, part in (("k2", part_k2), ("k8", part_k8)):
            if deadline.left() < 15:
                out[name] = "skipped: part budget spent"
                continue
            out[name] = part(ctx, base, ref, tok, out_dir, deadline, reps)
            rec.write()
        out["status"] = "done"
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
