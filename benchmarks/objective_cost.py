"""Cost of each ranking objective relative to a whole training step.

Run: /work/venv/bin/python benchmarks/objective_cost.py        (about 2 CPU-minutes)
Writes benchmarks/results/objective_cost.json and objective_cost.md.

For K = 2..64 and B = 8 lists: the forward+backward time of every objective in `lipo.losses.LOSSES` on [B, K]
scores (a leaf tensor, so only the loss itself is timed; median of many calls), divided by the time of one training
step of the small model on the same B x K lists: packed log-probs of policy and (frozen) reference, LiPO-lambda loss,
backward, AdamW step. Loss timings and training steps alternate. Prompt 128 tokens, responses 32. Times are CPU
seconds of one torch thread (see `_common`).
Target: every objective < 1% of a step at K <= 16.
"""

from __future__ import annotations

import copy
import statistics
import sys

import torch

from _common import Timer, md_table, median, random_lists, small_llama, write_results
from lipo.losses import LOSSES
from lipo.models.packed_logps import score_lists

B, PROMPT_LEN, RESPONSE_LEN, BETA = 8, 128, 32, 0.1
KS = (2, 4, 8, 16, 32, 64)
LOSS_CALLS = 50  # per timing block; losses take micro- to milliseconds, so many calls give a stable median


def train_step(model, ref, opt, items) -> None:
    with torch.no_grad():
        ref_logps = score_lists(ref, items, 0, packing=True)  # [B, K]
    scores = BETA * (score_lists(model, items, 0, packing=True) - ref_logps)  # [B, K]
    labels = torch.tensor([it["labels"] for it in items])
    LOSSES["lambda"](scores, labels, None).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def loss_times(name: str, k: int, seed: int) -> list[float]:
    """Per-call seconds of forward+backward of one objective on fresh random [B, K] scores."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(B, k, generator=g, requires_grad=True)
    labels = torch.rand(B, k, generator=g)  # in [0, 1], valid for every objective incl. point_sigmoid
    mask = torch.ones(B, k, dtype=torch.bool)
    fn = LOSSES[name]
    fn(scores, labels, mask).backward()  # warm-up
    out = []
    for _ in range(LOSS_CALLS):
        scores.grad = None
        with Timer() as t:
            fn(scores, labels, mask).backward()
        out.append(t.cpu)
    return out


def main() -> None:
    torch.manual_seed(0)
    model = small_llama().train()
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    results, rows = [], []
    for k in KS:
        items = random_lists(B, k, PROMPT_LEN, RESPONSE_LEN, seed=k)
        train_step(model, ref, opt, items)  # warm-up
        steps, steps_wall, per_loss = [], [], {name: [] for name in LOSSES}
        for rep in range(3):  # alternate: a training step, then a block of calls of every loss
            with Timer() as t:
                train_step(model, ref, opt, items)
            steps.append(t.cpu)
            steps_wall.append(t.wall)
            for name in LOSSES:
                per_loss[name] += loss_times(name, k, seed=rep)
        step_s = median(steps)
        entry = {"K": k, "B": B, "step_cpu_seconds_median": step_s, "step_cpu_seconds_all": steps,
                 "step_wall_seconds_all": steps_wall, "objectives": {}}
        for name, ts in per_loss.items():
            entry["objectives"][name] = {"cpu_seconds_median": median(ts),
                                         "cpu_seconds_p90": statistics.quantiles(ts, n=10)[-1],
                                         "fraction_of_step": median(ts) / step_s}
        results.append(entry)
        rows.append([k, f"{1000 * step_s:.0f}"] + [f"{100 * entry['objectives'][n]['fraction_of_step']:.3f}%"
                                                    for n in LOSSES])
        print(md_table(HEADERS, [rows[-1]]).splitlines()[-1], flush=True)
    worst = max(e["objectives"][n]["fraction_of_step"] for e in results if e["K"] <= 16 for n in LOSSES)
    md = (f"Forward+backward time of each objective on [B={B}, K] scores, as a percentage of one training step "
          f"(policy + reference packed log-probs, LiPO-lambda, backward, AdamW) of the small Llama (width 256, "
          f"4 layers) on the same lists (prompt {PROMPT_LEN}, responses {RESPONSE_LEN} tokens). Medians of CPU "
          f"time, one torch thread.\n\n"
          + md_table(HEADERS, rows)
          + f"\n\nWorst objective at K <= 16: {100 * worst:.3f}% of a step (target < 1%).\n")
    write_results("objective_cost", {"setup": {"B": B, "prompt_len": PROMPT_LEN, "response_len": RESPONSE_LEN,
                                               "loss_calls_per_block": LOSS_CALLS},
                                     "results": results, "headline": {"worst_fraction_k_le_16": worst,
                                                                      "target": 0.01}}, md)


HEADERS = ["K", "step ms"] + list(LOSSES)

if __name__ == "__main__":
    sys.exit(main())
