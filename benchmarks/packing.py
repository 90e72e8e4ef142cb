"""Shared-prefix packing vs the unpacked [B, K, T] layout: forward+backward of summed response log-probs.

Run: /work/venv/bin/python benchmarks/packing.py        (about 2 CPU-minutes; longer in wall time on a busy box)
Writes benchmarks/results/packing.json and packing.md.

Workload per setting: B lists of K responses of R tokens after a prompt of ratio * R tokens, scored by
`lipo.models.packed_logps.score_lists(model, items, pad_id, packing=...)` and backpropagated (sum of log-probs).
Timed per call: building the batch (collate or pack), forward, backward. The two paths alternate in one process;
times are CPU seconds of one torch thread (see `_common`), medians. Model: random-init Llama-style, width 256,
4 layers, byte vocabulary, fp32, sdpa attention, fixed seed.

Reported per setting, for each path:
- lists/s and response tokens/s: the same work for both paths (every response token scored once);
- processed tokens/s: tokens the model actually ran (unpacked repeats the prompt K times; packed does not);
- MFU: 6 x matmul params x processed tokens/s over this machine's one-thread fp32 matmul rate, measured here with
  a large square matmul (attention FLOPs excluded, as usual for 6N);
- peak tensor memory: peak bytes held by torch's CPU allocator during one call (see `_common.peak_tensor_bytes`).
"""

from __future__ import annotations

import sys

import torch

from _common import (alternate, matmul_params, matmul_peak_flops, md_table, median, peak_tensor_bytes,
                     random_lists, small_llama, write_results)
from lipo.data.packing import list_token_count
from lipo.models.packed_logps import score_lists

B = 2  # lists per batch
RESPONSE_LEN = 32
KS = (2, 4, 8, 16)
RATIOS = (1, 4, 8)  # prompt length / response length


def step(model, items, packing: bool) -> None:
    model.zero_grad(set_to_none=True)
    score_lists(model, items, pad_id=0, packing=packing).sum().backward()


def reps_for(k: int, ratio: int) -> int:
    # Big settings take seconds per call, so fewer repeats keep the whole run to a few minutes.
    return 7 if k * (ratio + 1) <= 40 else 3


def main() -> None:
    torch.manual_seed(0)
    model = small_llama()
    model.train()  # the config has no dropout, so train mode only matters for realism
    n_mm = matmul_params(model)
    peak = matmul_peak_flops()  # measured again at the end; the larger (less contended) reading is used
    print(f"matmul params {n_mm:,}; fp32 matmul peak {peak / 1e9:.1f} GFLOP/s", flush=True)
    rows, settings = [], []
    for ratio in RATIOS:
        for k in KS:
            items = random_lists(B, k, ratio * RESPONSE_LEN, RESPONSE_LEN, seed=k * 100 + ratio)
            processed = {"unpacked": sum(k * (len(it["prompt_ids"]) + RESPONSE_LEN) for it in items),
                         "packed": sum(list_token_count(it) for it in items)}
            times = alternate({"unpacked": lambda: step(model, items, False),
                               "packed": lambda: step(model, items, True)}, reps=reps_for(k, ratio))
            result = {"K": k, "ratio": ratio, "prompt_len": ratio * RESPONSE_LEN, "response_len": RESPONSE_LEN,
                      "lists": B}
            for mode in ("unpacked", "packed"):
                t = median(times[mode]["cpu"])
                result[mode] = {
                    "cpu_seconds_median": t, "cpu_seconds_all": times[mode]["cpu"],
                    "wall_seconds_median": median(times[mode]["wall"]), "wall_seconds_all": times[mode]["wall"],
                    "lists_per_s": B / t,
                    "response_tokens_per_s": B * k * RESPONSE_LEN / t,
                    "processed_tokens": processed[mode],
                    "processed_tokens_per_s": processed[mode] / t,
                    "peak_tensor_mib": peak_tensor_bytes(lambda: step(model, items, mode == "packed")) / 2**20,
                }
            u, p = result["unpacked"], result["packed"]
            result["speedup"] = u["cpu_seconds_median"] / p["cpu_seconds_median"]
            result["speedup_wall"] = u["wall_seconds_median"] / p["wall_seconds_median"]
            result["memory_ratio"] = p["peak_tensor_mib"] / u["peak_tensor_mib"]
            settings.append(result)
            rows.append([k, ratio, f"{u['lists_per_s']:.2f}", f"{p['lists_per_s']:.2f}", f"{result['speedup']:.2f}x",
                         f"{u['processed_tokens_per_s']:,.0f}", f"{p['processed_tokens_per_s']:,.0f}",
                         f"{u['response_tokens_per_s']:,.0f}", f"{p['response_tokens_per_s']:,.0f}",
                         # MFU against the start-of-run peak for now; recomputed below with the final peak
                         f"{600 * n_mm * u['processed_tokens_per_s'] / peak:.1f}%",
                         f"{600 * n_mm * p['processed_tokens_per_s'] / peak:.1f}%",
                         f"{u['peak_tensor_mib']:.0f}", f"{p['peak_tensor_mib']:.0f}"])
            print(md_table(HEADERS, [rows[-1]]).splitlines()[-1], flush=True)
    peak = max(peak, matmul_peak_flops())
    for s, row in zip(settings, rows):
        for mode, col in (("unpacked", 9), ("packed", 10)):
            s[mode]["mfu"] = 6 * n_mm * s[mode]["processed_tokens_per_s"] / peak
            row[col] = f"{100 * s[mode]['mfu']:.1f}%"
    headline = next(s for s in settings if s["K"] == 8 and s["ratio"] == 8)
    md = (f"Forward+backward of summed response log-probs, B={B} lists, responses of {RESPONSE_LEN} tokens, prompt = "
          f"ratio x {RESPONSE_LEN}; small Llama ({n_mm:,} matmul params, width 256, 4 layers, fp32); "
          f"one-thread fp32 matmul peak {peak / 1e9:.1f} GFLOP/s (measured). Medians of alternating runs, CPU time "
          f"of one torch thread.\n\n"
          + md_table(HEADERS, rows)
          + f"\n\nHeadline (K=8, ratio 8): packed is {headline['speedup']:.2f}x faster (target >= 2x), "
            f"peak tensor memory x{headline['memory_ratio']:.2f}.\n")
    write_results("packing", {"model": {"width": 256, "layers": 4, "matmul_params": n_mm},
                              "matmul_peak_flops": peak, "settings": settings,
                              "headline": {"K": 8, "ratio": 8, "speedup": headline["speedup"], "target": 2.0}}, md)


HEADERS = ["K", "ratio", "lists/s unpacked", "lists/s packed", "speedup", "proc tok/s unpacked",
           "proc tok/s packed", "resp tok/s unpacked", "resp tok/s packed", "MFU unpacked", "MFU packed",
           "peak MiB unpacked", "peak MiB packed"]

if __name__ == "__main__":
    sys.exit(main())
