"""Parity of packed against unpacked log-probs AND gradients on the device, fp32 and bf16, sdpa and flex_attention.

Part of the GPU suite: `bash benchmarks/gpu_check.sh` (CPU smoke: `python benchmarks/gpu_check.py --smoke`).

Model: the suite's 0.48B random-init Llama (smoke: its tiny twin), responses of 128 tokens. The reference is the
unpacked layout ([B*K, T] rows, sdpa, causal + padding mask), which every other lipo path is tested against.
Compared with it, on the same weights, under sdpa with the dense [L, L] bool mask and under flex_attention
(BlockMask), in two layouts whose rows are both 1280 tokens (so flex compiles once per dtype):
- one list per row: 2 lists of K=8, prompt 256;
- two lists per row (the padding-free `token_budget` layout): 4 lists of K=4, prompt 128.
Each check compares the [B, K] summed log-probs and the gradient of a fixed linear function of them,
sum_bk w_bk * logp_bk / R with w ~ N(0, 1) (smooth, unlike a ranking loss whose weights jump when a tie flips).

Tolerances:
- fp32 (TF32 off): |logp_packed - logp_unpacked| <= 1e-4 nats per scored token (x R = 128 tokens: 0.0128 on the sum);
  gradients: ||g_packed - g_unpacked|| / ||g_unpacked|| <= 1e-4. Two fp32 runs that differ only in kernel choice and
  summation order agree to ~1e-6 per token, so a masking or position bug (a response seeing another response, a
  shifted position id) shows up orders of magnitude above this. This is the sensitive check.
- bf16: calibrated in the run itself. The noise floor is the unpacked path's own bf16 error, max |logp_bf16 -
  logp_fp32| over the batch (and the relative gradient error likewise), on the same weights (so it also holds the
  rounding of the weights to bf16, which both bf16 paths share: a generous floor). A correct packed path
  errs about as much, so packed-vs-unpacked in bf16 may differ by up to ~2x the floor; the check allows 4x (plus
  1e-3 absolute / relative so a freak zero floor cannot fail it). For scale the JSON also gives 2^-8 * |sum|, the bf16
  rounding of the summed log-prob of 128 tokens itself: the calibrated tolerance is normally far below it. bf16
  guards against bf16-only breakage (a kernel's backward, a mask cast); masking errors are the fp32 check's job.
On a CPU FlexAttention has no backward, so flex is checked there on log-probs only (under no_grad). If this lipo
does not yet pack under flex_attention (`supports_packing` says no), the flex checks are recorded as skipped.
With `--perturb-parity` one packed log-prob is shifted by 1 nat, which must make the run exit 1.
"""

from __future__ import annotations

import torch

from gpu_common import Ctx, Deadline, Recorder, build_model, packed_batch, random_lists, to_device
from lipo.models.packed_logps import batch_logps, make_batch, supports_packing

FP32_TOL_PER_TOKEN, FP32_GRAD_TOL = 1e-4, 1e-4
BF16_FLOOR_FACTOR, BF16_ABS, BF16_REL = 4.0, 1e-3, 1e-3


def flex_support(model) -> str | None:
    """None if lipo packs this model under flex_attention, else why not."""
    old = model.config._attn_implementation
    model.config._attn_implementation = "flex_attention"
    try:
        return None if supports_packing(model) else "supports_packing() is False under flex_attention"
    finally:
        model.config._attn_implementation = old


def set_attn(model, attn: str) -> None:
    model.set_attn_implementation(attn)


def run_path(model, batch: dict, weights: torch.Tensor, grad: bool):
    """(logps [B, K] fp32, flat fp32 gradient or None) of one layout."""
    model.zero_grad(set_to_none=True)
    if not grad:
        with torch.no_grad():
            return batch_logps(model, batch).float(), None
    lp = batch_logps(model, batch).float()
    (lp * weights).sum().backward()
    g = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
    model.zero_grad(set_to_none=True)
    return lp.detach(), g


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def compare(name: str, got, ref, tol_lp: float, tol_g: float | None, resp_len: int) -> dict:
    lp, g = got
    lp_ref, g_ref = ref
    diff = float((lp - lp_ref).abs().max())
    out = {"check": name, "max_abs_diff_logps": diff, "tol_logps": tol_lp,
           "bf16_rounding_of_sum": float(lp_ref.abs().max()) * 2**-8, "scored_tokens_per_sum": resp_len}
    ok = diff <= tol_lp
    if g is not None and g_ref is not None:
        out.update({"grad_rel_diff": rel(g, g_ref), "tol_grad": tol_g})
        ok = ok and out["grad_rel_diff"] <= tol_g
    else:
        out["grad"] = "not checked (no backward for this attention on this device)"
    out["ok"] = bool(ok)
    return out


def layouts(ctx: Ctx, vocab: int, attns: list[str]) -> list[dict]:
    """Two packed layouts, each with its unpacked reference batch and weights:
    - "one_list_rows": 2 lists of K=8 (prompt P, responses R), one list per row: rows of P + 8R tokens;
    - "multi_list_rows": 4 lists of K=4 with prompts of P/2, two lists per row (the padding-free `token_budget`
      layout): rows of the same P + 8R tokens, so FlexAttention compiles once per dtype for both layouts.
    Flex rows are padded to its block size as lipo's collate pads them, so padding columns are checked too."""
    p, r = ctx.prompt_len, ctx.response_len
    specs = [("one_list_rows", 2, 8, p, None), ("multi_list_rows", 4, 4, p // 2, p + 8 * r)]
    out = []
    for i, (name, n, k, plen, budget) in enumerate(specs):
        items = random_lists(n, k, plen, r, vocab, seed=3 + i)
        kw = {"token_budget": budget} if budget else {}
        out.append({"name": name, "unpacked": to_device(make_batch(items, 0, False), ctx.device),
                    "packed": {a: to_device(packed_batch(items, a, **kw), ctx.device) for a in attns},
                    "weights": torch.randn(n, k, generator=torch.Generator().manual_seed(i)).to(ctx.device) / r})
    return out


def tolerances(ctx: Ctx, dtype: torch.dtype, ref, ref32, out: dict, layout: str) -> tuple[float, float]:
    """fp32: fixed; bf16: from the unpacked path's own bf16 error on this layout (module docstring)."""
    if dtype == torch.float32:
        return FP32_TOL_PER_TOKEN * ctx.response_len, FP32_GRAD_TOL
    floor_lp, floor_g = float((ref[0] - ref32[0]).abs().max()), rel(ref[1], ref32[1])
    out.setdefault("bf16_noise_floor", {})[layout] = {"max_abs_logps": floor_lp, "grad_rel": floor_g}
    return max(BF16_FLOOR_FACTOR * floor_lp, BF16_ABS), max(BF16_FLOOR_FACTOR * floor_g, BF16_REL)


def check(rec: Recorder, deadline: Deadline, ctx: Ctx, model, name: str, attn: str, batch, weights, ref,
          tols: tuple[float, float]) -> None:
    """One packed-vs-unpacked comparison, recorded; a failure, an exception or no time left is a parity error."""
    out = rec.data["parity"]
    if deadline.left() < 5:  # an unverified check is a failure too: parity must fail loudly
        out["checks"].append({"check": name, "ok": False, "exception": "part budget spent"})
        rec.error("parity", f"{name}: not run, part budget spent")
        return
    try:
        got = run_path(model, batch, weights, grad=ctx.cuda or attn != "flex_attention")  # no CPU flex backward
    except Exception as e:
        why = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
        if not ctx.cuda and attn == "flex_attention":  # not a path lipo trains on (CPU: sdpa)
            out["skipped"].append(f"{name}: FlexAttention on CPU failed here ({why})")
            return
        out["checks"].append({"check": name, "ok": False, "exception": why})
        rec.error("parity", f"{name} raised {why}")
        return
    if ctx.perturb:
        got[0][0, 0] += 1.0
    res = compare(name, got, ref, *tols, ctx.response_len)
    out["checks"].append(res)
    if not res["ok"]:
        rec.error("parity", f"{name} packed != unpacked: {res}")
    rec.write()


def parity(rec: Recorder, deadline: Deadline, ctx: Ctx, attns: list[str], model_name: str = "0.48B") -> None:
    out = rec.data.setdefault("parity", {"model": model_name, "checks": [], "skipped": []})
    model = build_model(model_name, ctx, "sdpa", torch.float32)
    flex_skip = flex_support(model)
    if flex_skip:
        out["skipped"].append(f"flex_attention: {flex_skip}")
    attns = [a for a in attns if a != "flex_attention" or not flex_skip]
    cases = layouts(ctx, model.config.vocab_size, attns)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # a real fp32 reference, not TF32's 10-bit mantissa
    refs32: dict = {}
    try:
        for dtype in (torch.float32, torch.bfloat16):
            model.to(dtype)
            for case in cases:
                set_attn(model, "sdpa")
                ref = run_path(model, case["unpacked"], case["weights"], grad=True)
                refs32.setdefault(case["name"], ref)
                tols = tolerances(ctx, dtype, ref, refs32[case["name"]], out, case["name"])
                for attn in attns:
                    set_attn(model, attn)
                    name = f"{str(dtype).split('.')[-1]} {attn} {case['name']}"
                    check(rec, deadline, ctx, model, name, attn, case["packed"][attn], case["weights"], ref, tols)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        del model
