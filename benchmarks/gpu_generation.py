"""Candidate sampling on the GPU: lipo's sampler against Hugging Face `model.generate`, and the sampler before issue 14.

Part of the GPU suite: `bash benchmarks/gpu_check.sh` (CPU smoke: `python benchmarks/gpu_check.py --smoke`).
The samplers, rows and EOS handling are benchmarks/generation.py's (the CPU benchmark), at the suite's 0.48B Llama
(vocabulary 32000) in bf16: 32 prompts x K=8 = 256 rows, 256-token random prompts, 128 new tokens, temperature 1.0,
top-p 1.0. EOS is disabled for every sampler (`generation_config.eos_token_id = None`, eos id NO_EOS), so each
emits exactly the requested tokens and the work is equal.
- `generate`: `model.generate(do_sample=True)` on the 256 rows (each row prefills its own prompt);
- `lipo`: `lipo.models.generate.sample_ids` on the same rows (one prefill per distinct prompt, sampling on the
  device);
- `lipo before`: the sampler before issue 14 (logits to the host every step, one generator per row; ~15x slower
  than generate on a GPU), run with only 8 new tokens so it fits the budget; its tokens/s is reported, not compared
  (with fewer steps its prefill weighs more).
Order: the model (random init, seed 0); one warm-up call each (lipo's output must hold one row of 128 tokens per
input row, else an error); the greedy check; then up to 3 rounds alternating generate, lipo, lipo before, each
timed by wall clock between device syncs (gpu_common.sync). A call that the part's deadline would not hold is
skipped with a note, so a tight budget costs timed calls, not the check. Medians; tokens/s = rows x new tokens /
time; lipo / generate is the suite's target (>= 1.0x, gpu_report.targets).
Greedy check: lipo at temperature 0 against `model.generate(do_sample=False)` on 8 rows (4 prompts x 2, so lipo's
one-prefill-per-prompt path runs), 32 new tokens: the fraction of equal tokens, position by position. In bf16 a
near-tied argmax may flip between the two paths (their prefills run different batch shapes), and one flip changes
the rest of its row, so a bf16 fraction under MIN_EQUAL (90%) is re-checked on an fp32 copy (TF32 off); the run
errors only if the fp32 fraction is under MIN_EQUAL too.
Smoke (CPU, fp32, tiny twin): 2 prompts x K=2, prompts 16, 8 new tokens (lipo before 4), greedy 4 rows x 8.
"""

from __future__ import annotations

import copy
import time

import torch

from gpu_common import Ctx, Deadline, Recorder, build_model, median, memory, release, reset_peak, sync, timed
from generation import NO_EOS, lipo_before, rows_for, samplers  # after gpu_common: lipo on sys.path
from lipo.models.generate import SamplingParams, sample_ids

# (prompts, K, prompt tokens, new tokens, `lipo before` new tokens, greedy rows, greedy new tokens)
SHAPES = {False: (32, 8, 256, 128, 8, 8, 32), True: (2, 2, 16, 8, 4, 4, 8)}  # keyed by ctx.smoke
ROUNDS = 3
MIN_EQUAL = 0.9


@torch.no_grad()
def greedy_equal(model, rows: list[list[int]], new: int) -> dict:
    """Greedy lipo vs greedy `model.generate` on the rows: fraction of equal tokens, first differing step per row."""
    p = SamplingParams(temperature=0.0, max_new_tokens=new)
    ids = torch.tensor(rows, device=next(model.parameters()).device)  # [N, T]
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new,
                         min_new_tokens=new, pad_token_id=0, eos_token_id=None)[:, ids.shape[1]:].tolist()
    got = sample_ids(model, rows, list(range(len(rows))), p, 0, NO_EOS)
    equal = sum(a == b for r, g in zip(ref, got) for a, b in zip(r, g))
    first = [next((t for t, (a, b) in enumerate(zip(r, g)) if a != b), None) for r, g in zip(ref, got)]
    return {"rows": len(rows), "new_tokens": new, "equal_fraction": equal / (len(rows) * new),
            "first_difference": first, "dtype": str(next(model.parameters()).dtype).split(".")[-1]}


def greedy_check(rec: Recorder, ctx: Ctx, model, rows: list[list[int]], new: int, out: dict) -> None:
    res = out["greedy"] = greedy_equal(model, rows, new)
    rec.write()
    print(f"[generation] greedy lipo == generate ({res['dtype']}): {100 * res['equal_fraction']:.1f}% of tokens",
          flush=True)
    if res["equal_fraction"] >= MIN_EQUAL:
        return
    if next(model.parameters()).dtype != torch.float32:  # bf16 near-ties: decide on an fp32 copy
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        model32 = copy.deepcopy(model).float()
        try:
            res = out["greedy_fp32"] = greedy_equal(model32, rows, new)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
            del model32
            release()
        rec.write()
        print(f"[generation] greedy lipo == generate ({res['dtype']}): {100 * res['equal_fraction']:.1f}% of tokens",
              flush=True)
    if res["equal_fraction"] < MIN_EQUAL:
        rec.error("generation", f"greedy lipo equals greedy generate on only {100 * res['equal_fraction']:.1f}% "
                                f"of tokens ({res['dtype']}; need >= {100 * MIN_EQUAL:.0f}%)")


def generation(rec: Recorder, deadline: Deadline, ctx: Ctx, model_name: str = "0.48B") -> None:
    prompts, k, prompt_len, new, before_new, greedy_rows, greedy_new = SHAPES[ctx.smoke]
    out = rec.data.setdefault("generation", {
        "model": model_name, "dtype": str(ctx.dtype).split(".")[-1], "prompts": prompts, "K": k,
        "prompt_tokens": prompt_len, "new_tokens": new, "temperature": 1.0, "top_p": 1.0, "samplers": {},
        "skipped": []})
    out.update(reset_peak(ctx))
    model = build_model(model_name, ctx, "sdpa", ctx.dtype).eval()
    model.generation_config.eos_token_id = None  # equal work: see NO_EOS
    rows, seeds = rows_for(prompts, k, prompt_len, model.config.vocab_size)
    out["rows"] = len(rows)
    p = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=new)
    p_before = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=before_new)
    fns = samplers(model, rows, seeds, p)  # generate (hf_generate), lipo (sample_ids), lipo before: replaced below
    fns["lipo before"] = lambda: lipo_before(model, rows, seeds, p_before, 0, NO_EOS)
    n_new = {"generate": new, "lipo": new, "lipo before": before_new}
    res = out["samplers"]

    def record(name: str, times: list[float]) -> None:
        t = median(times)
        res[name] = {"new_tokens": n_new[name], "tokens": len(rows) * n_new[name], "time_s_median": t,
                     "time_s_all": times, "tokens_per_s": len(rows) * n_new[name] / t}
        for key in ("generate", "lipo"):  # `lipo before` runs fewer new tokens: not compared
            if key in res and "generate" in res:
                res[key]["ratio_vs_generate"] = res[key]["tokens_per_s"] / res["generate"]["tokens_per_s"]
        out.update(memory(ctx))
        rec.write()

    warm = out["warmup_s"] = {}
    for name, fn in fns.items():  # warm-up (allocator, kernels); lipo's output is checked here
        if name == "lipo before" and deadline.left() < 0.4 * sum(warm.values()) + 10:
            out["skipped"].append("lipo before: part budget spent")
            continue
        sync(ctx.device)
        t0 = time.perf_counter()
        got = fn()
        sync(ctx.device)
        warm[name] = time.perf_counter() - t0
        rec.write()
        if name == "lipo":
            shape_ok = out["lipo_shape_ok"] = len(got) == len(rows) and all(len(r) == new for r in got)
            if not shape_ok:
                rec.error("generation", f"lipo returned {len(got)} rows of lengths {sorted({len(r) for r in got})}; "
                                        f"expected {len(rows)} rows of {new} tokens")
    del got

    # Correctness before speed, so a tight budget drops timed calls, not the check: greedy on 8 rows is cheap.
    g_rows = [r for i, r in enumerate(rows) if i % k < 2][:greedy_rows]  # 2 rows of each of the first prompts
    if deadline.left() < (warm["generate"] + warm["lipo"]) * greedy_new / new + 5:  # with the fp32 re-check
        out["skipped"].append("greedy check: part budget spent")
    else:
        greedy_check(rec, ctx, model, g_rows, greedy_new, out)

    times: dict[str, list[float]] = {name: [] for name in warm}
    for rnd in range(ROUNDS):  # alternated: generate, lipo, lipo before
        if deadline.left() < 1.1 * (warm["generate"] + warm["lipo"]) + 3:
            out["skipped"].append(f"timed round {rnd + 1}: part budget spent")
            break
        for name in warm:
            if name == "lipo before" and deadline.left() < 1.1 * warm[name] + 3:
                out["skipped"].append(f"lipo before, timed call {rnd + 1}: part budget spent")
                continue
            times[name].append(timed(ctx, fns[name]))
            record(name, times[name])
    if "lipo" in res:
        print("[generation] " + ", ".join(f"{n} ({n_new[n]} new) {r['tokens_per_s']:,.0f} tok/s"
                                          for n, r in res.items())
              + f"; {len(times['lipo'])} timed rounds; lipo / generate {res['lipo']['ratio_vs_generate']:.2f}x",
              flush=True)
    del model, fns
    out["status"] = "done"
    rec.write()
