"""GPU suite (issue 13): parity, sampling speed, MFU against a plain-LM ceiling, memory, and lipo vs TRL, in one run
under 8 minutes.

Run on the GPU machine:  bash benchmarks/gpu_check.sh            (one H200: about 6 minutes; hard stop at 450 s)
CPU smoke test:          python benchmarks/gpu_check.py --smoke    (tiny models, gloo; every code path, ~2 min on 2
                         busy cores; or `bash benchmarks/gpu_check.sh --smoke` with PYTHON=.venv/bin/python)
Failure-path check:      python benchmarks/gpu_check.py --smoke --perturb-parity --parts parity   (must exit 1)

One process (no Ray) initialises torch.distributed itself (world size 1; nccl on a GPU, gloo in smoke) and runs
five parts, each under its own time budget (a cooperative deadline that skips settings which would not fit, and a
SIGALRM hard stop behind it), so a slow part cannot eat the others' time. Results are rewritten after every
setting, so a run killed by the outer timeout still leaves what it measured.

1. parity (90 s; benchmarks/gpu_parity.py): packed vs unpacked log-probs and gradients, fp32 and bf16, sdpa with
   the dense mask and flex_attention (skipped with a note if this lipo cannot pack under flex; on a CPU forward
   only), one-list and two-list rows of equal length. Tolerances are argued in that module. Any
   failure, or a check left unrun when its budget ran out -> "error" in the JSON and exit status 1.
2. generation (50 s; benchmarks/gpu_generation.py): sampled tokens/s of `model.generate(do_sample=True)`, lipo's
   `sample_ids` and the sampler before issue 14 (8 new tokens only: it is far slower; tokens/s, not compared) on
   the 0.48B in bf16, 32 prompts x K=8 = 256 rows, prompts 256, 128 new tokens, temperature 1.0, EOS off; a warm-up
   call each, then up to 3 alternated timed calls each, median. Before the timing, greedy lipo vs greedy generate on
   8 rows x 32 tokens: the fraction of equal tokens (bf16; re-checked on an fp32 copy when under 90%, as near-tied
   bf16 argmaxes may flip); under 90% in fp32, or a wrong lipo output shape -> "error". Estimated ~35-50 s on an
   H200 (each 256-row call a few seconds; timed rounds that would not fit are dropped).
3. mfu 1.26B (90 s) and 4. mfu 0.48B (100 s; benchmarks/gpu_mfu.py): lipo's step through
   `lipo.training.engine.build_engine` vs a plain bf16 causal-LM step on as many tokens. Prompt 256, responses
   128, 8 lists per step, ref log-probs carried by the data. The matrix, most important first (the tail is
   dropped if a budget runs out):
     1.26B: ceiling K=8; K=8 packed/unpacked ZeRO-2; K=2 packed/unpacked ZeRO-2; K=8 packed ZeRO-3.
     0.48B: ceilings K=8 and K=2; the full K {8, 2} x {packed, unpacked} x ZeRO {2, 3} matrix (in the order
            ZeRO-2 K=8, K=2; ZeRO-3 K=8; K=8 packed ZeRO-2 with sdpa's dense mask, i.e. what flex buys; ZeRO-3 K=2).
   Each setting: fresh model + engine, 2 warm-up steps (the first compiles flex kernels), then 4 (0.48B) or 3
   (1.26B) timed steps; median step time; peak memory from a reset before the model is built. MFU is 6N per
   processed token, N = matmul (non-embedding) parameters, against the dense bf16 peak (989e12 on an H200).
   Estimated on an H200 (about 40-50% of 989 TFLOP/s in the dense parts): a 0.48B step takes 0.05-0.25 s and a
   1.26B step 0.15-0.6 s, so each setting is dominated by model/engine construction and the first-step
   compile (~5-20 s): 1.26B ~70-100 s, 0.48B ~100-140 s, so the tail of either matrix may be dropped.
5. trl (65 s; benchmarks/gpu_trl.py): lipo vs TRL DPOTrainer at 0.48B, K=2 pair tokens/s and K=8 all-pairs
   supervision/s. "unavailable" (not an error) if trl does not import.
Then the targets (gpu_report.targets; a missed speed target is not an error) and the table.

Writes benchmarks/results/gpu_check.json and .md and the table into docs/benchmarks.md (between the gpu_check
markers; without them, in place of the "GPU check" section's body); $OUT/gpu_check.json, .md and benchmarks.md
when $OUT is set. --smoke writes only to a temporary folder (printed) and $OUT, never over committed results.
The last line of stdout is the result JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from gpu_common import ROOT, Ctx, Deadline, PartTimeout, Recorder, release, spec_peak, time_limit
from gpu_report import markdown, targets, update_docs

TOTAL_S = 430  # the shell's hard timeout is 450 s: leave time for the report
BUDGETS = {"parity": 90, "generation": 50, "mfu_1.26B": 90, "mfu_0.48B": 100, "trl": 65}  # sum 395: ~35 s spare


def init_distributed(cuda: bool) -> None:
    import deepspeed

    for key, val in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", os.environ.get("GPU_CHECK_PORT", "29533")),
                     ("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        os.environ.setdefault(key, val)
    if cuda:
        torch.cuda.set_device(0)
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")


def machine(ctx: Ctx) -> dict:
    import transformers

    info = {"device": torch.cuda.get_device_name(0) if ctx.cuda else "cpu (smoke)", "torch": torch.__version__,
            "cuda": torch.version.cuda, "transformers": transformers.__version__, "python": platform.python_version(),
            "cpu_cores": os.cpu_count(), "bf16_peak_flops": spec_peak(ctx)}
    for mod in ("deepspeed", "trl", "datasets", "accelerate"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception as e:
            info[mod] = f"unavailable ({type(e).__name__})"
    if ctx.cuda:
        info["gpu_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
    return info


def run_part(rec: Recorder, name: str, budget: float, total: Deadline, fn, *args) -> None:
    budget = min(budget, total.left() - 5)
    status = rec.data.setdefault("parts", {})[name] = {"budget_s": round(budget, 1), "status": "running"}
    t0 = time.perf_counter()
    if budget < 5:
        status["status"] = "skipped: total budget spent"
        rec.write()
        return
    print(f"[gpu_check] {name}: budget {budget:.0f} s", flush=True)
    try:
        with time_limit(budget):
            fn(rec, Deadline(budget), *args)
        status["status"] = "done"
    except PartTimeout as e:
        status["status"] = f"stopped: {e}"
        if name == "parity":  # unverified parity is not a pass: fail loudly
            rec.error(name, f"stopped before every check ran ({e})")
    except Exception as e:
        status["status"] = "error"
        rec.data.setdefault("tracebacks", {})[name] = traceback.format_exc()[-4000:]
        rec.error(name, f"{type(e).__name__}: {e}"[:500])
    finally:
        status["wall_s"] = round(time.perf_counter() - t0, 1)
        release()
        rec.write()


def outputs(smoke: bool, out_dir: str | None) -> tuple[Path, Path, list[Path]]:
    """(folder for json+md, the docs file to update, extra copies' folders)."""
    extra = [Path(os.environ["OUT"])] if os.environ.get("OUT") else []
    if smoke:
        folder = Path(out_dir or Path(tempfile.gettempdir()) / "lipo_gpu_check_smoke")
        folder.mkdir(parents=True, exist_ok=True)
        doc = folder / "benchmarks.md"
        shutil.copyfile(ROOT / "docs" / "benchmarks.md", doc)  # exercise the docs update on a copy
        return folder, doc, extra
    return Path(out_dir) if out_dir else ROOT / "benchmarks" / "results", ROOT / "docs" / "benchmarks.md", extra


def finish(rec: Recorder, folder: Path, doc: Path, extra: list[Path]) -> None:
    rec.data["targets"] = targets(rec.data)
    rec.write()
    md = markdown(rec.data)
    for d in [folder] + extra:
        try:
            (d / "gpu_check.md").write_text("# gpu_check\n\n" + md, encoding="utf-8")
        except OSError as e:
            print(f"could not write {d}/gpu_check.md: {e}", file=sys.stderr)
    try:
        update_docs(doc, md)
        for d in extra:
            shutil.copyfile(doc, d / "benchmarks.md")  # the GPU machine's tree does not come back; this does
    except OSError as e:
        print(f"could not update {doc}: {e}", file=sys.stderr)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny models on CPU (gloo, fp32): every code path")
    p.add_argument("--perturb-parity", action="store_true", default=os.environ.get("GPU_CHECK_PERTURB") == "1",
                   help="shift one packed log-prob by 1 nat (or GPU_CHECK_PERTURB=1): the run must exit 1")
    p.add_argument("--parts", default=",".join(BUDGETS), help=f"comma-separated subset of {','.join(BUDGETS)}")
    p.add_argument("--parity-attn", default="sdpa,flex_attention",
                   help="attentions the parity part checks (the smoke test uses sdpa: flex compiles slowly on CPU)")
    p.add_argument("--out-dir", help="folder for gpu_check.json/.md (default: results/, or a temp folder in smoke)")
    return p.parse_args()


def main() -> int:
    args = parse()
    t_start = time.perf_counter()
    cuda = torch.cuda.is_available() and not args.smoke
    ctx = Ctx(smoke=args.smoke, device=torch.device("cuda", 0) if cuda else torch.device("cpu"),
              perturb=args.perturb_parity)
    if args.smoke:
        ctx.prompt_len, ctx.response_len, ctx.lists_per_step = 16, 8, 2
    folder, doc, extra = outputs(args.smoke, args.out_dir)
    rec = Recorder([folder / "gpu_check.json"] + [d / "gpu_check.json" for d in extra])
    rec.data.update({"benchmark": "gpu_check", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "smoke": args.smoke,
                     "shapes": {"prompt": ctx.prompt_len, "response": ctx.response_len,
                                "lists_per_step": ctx.lists_per_step},
                     "budgets_s": {**BUDGETS, "total": TOTAL_S}, "perturbed_parity": ctx.perturb})
    try:
        if not cuda and not args.smoke:
            raise RuntimeError("no CUDA device visible; use --smoke for a CPU check of the code path")
        rec.data["machine"] = machine(ctx)
        init_distributed(cuda)
        run_parts(rec, ctx, args.parts.split(","), args.parity_attn.split(","),
                  Deadline(TOTAL_S - (time.perf_counter() - t_start)))
    except Exception as e:  # report, don't just die: the JSON is what comes back from the GPU machine
        rec.data.setdefault("tracebacks", {})["main"] = traceback.format_exc()[-4000:]
        rec.error("main", f"{type(e).__name__}: {e}")
    rec.data["wall_s"] = time.perf_counter() - t_start
    finish(rec, folder, doc, extra)
    print(f"[gpu_check] wrote {folder}/gpu_check.json and .md; docs: {doc}", flush=True)
    print(json.dumps(rec.data, default=str))
    return 1 if rec.data.get("errors") else 0


def run_parts(rec: Recorder, ctx: Ctx, parts: list[str], parity_attns: list[str], total: Deadline) -> None:
    from gpu_generation import generation
    from gpu_mfu import mfu
    from gpu_parity import parity
    from gpu_trl import trl_vs_lipo

    warm, steps = (1, 1) if ctx.smoke else (2, 4)
    rec.data["matrix"] = {"mfu_1.26B": "ceiling K=8; K=8 packed/unpacked Z2; K=2 packed/unpacked Z2; K=8 packed Z3",
                          "mfu_0.48B": "ceilings K=8, K=2; K {8,2} x packed/unpacked x ZeRO {2,3}; K=8 packed Z2 sdpa",
                          "parity": f"0.48B, 2 lists of K=8, fp32 + bf16, {'/'.join(parity_attns)}",
                          "generation": "0.48B bf16, 32 prompts x K=8, prompt 256, 128 new (lipo before: 8), T=1.0",
                          "warmup_steps": warm, "timed_steps": {"0.48B": steps, "1.26B": max(1, steps - 1)}}
    calls = {"parity": (parity, parity_attns), "generation": (generation,),
             "mfu_1.26B": (mfu, "1.26B", max(1, steps - 1), warm), "mfu_0.48B": (mfu, "0.48B", steps, warm),
             "trl": (trl_vs_lipo, steps)}
    for name in parts:
        fn, *extra = calls[name]
        run_part(rec, name, BUDGETS[name] * (3 if ctx.smoke else 1), total, fn, ctx, *extra)


if __name__ == "__main__":
    sys.exit(main())
