"""Serving under load: throughput and latency of `/v1/completions` as concurrency rises, and an over-full queue.

Run: RAY_ADDRESS=local python benchmarks/serve_load.py                    (about 2 minutes on 2 cores)
     python benchmarks/serve_load.py --override ingress.max_ongoing_requests=32 --name serve_load_custom

Starts the lipo Serve application on 127.0.0.1 (a free port, loopback only) with the ServeConfig defaults, the
builtin tiny policy and no reward model, each replica on one torch thread (see `_common`); then, in this process:
- closed-loop load at concurrency 1, 8, 16, 32 and 64: `c` clients, each sending its next request as soon as the
  last one returned, `max(REQUESTS_MIN, REQUESTS_PER_CLIENT * c)` completions of `MAX_TOKENS` tokens per level
  (distinct prompts and seeds); req/s = requests / wall seconds, p50 / p99 latency of the 200s;
- an over-full queue: one burst of twice the configured queue limit (`queue_limit`) at once: the share answered 503
  (with `Retry-After`), how fast, and that every other request got a 200.
The baseline is measured in the same run: the best of c=8 and c=16. The target (issue 16) is req/s at c=32 and
c=64 >= 0.9x that baseline: throughput must not fall as concurrency rises past its best point, up to the queue limit.
Writes benchmarks/results/<name>.json and .md (default name `serve_load`). Wall-clock times: on a shared machine
they move with other jobs' load (recorded in the header); the ratio within one run is the robust number.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import httpx
from _common import md_table, write_results

from lipo.config import load_config
from lipo.serving.config import ServeConfig

KEY = "serve-load-benchmark-key"
LEVELS = (1, 8, 16, 32, 64)
MAX_TOKENS = 16
REQUESTS_MIN, REQUESTS_PER_CLIENT = 48, 4
TARGET = 0.9


async def closed_loop(url: str, concurrency: int, total: int, tag: str) -> dict:
    """`total` completions from `concurrency` clients in a closed loop: (req/s, p50/p99 ms, status counts)."""
    todo = iter(range(total))
    lat, codes = [], []

    async def client(c: httpx.AsyncClient) -> None:
        for i in todo:
            t = time.perf_counter()
            r = await c.post("/v1/completions", json={"model": "policy", "prompt": f"{tag} question {i}:",
                                                      "max_tokens": MAX_TOKENS, "seed": i})
            codes.append(r.status_code)
            if r.status_code == 200:
                lat.append(time.perf_counter() - t)

    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120,
                                 limits=httpx.Limits(max_connections=concurrency + 4)) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else lat * 99
    return {"concurrency": concurrency, "requests": total, "wall_s": wall, "ok": codes.count(200),
            "req_per_s": codes.count(200) / wall, "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000,
            "statuses": {str(s): codes.count(s) for s in sorted(set(codes))}}


async def overfull(url: str, burst: int) -> dict:
    """`burst` requests at once: how many got 503 (and how fast, with Retry-After), and did all others get 200."""
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120,
                                 limits=httpx.Limits(max_connections=burst + 4)) as c:
        async def one(i: int):
            t = time.perf_counter()
            r = await c.post("/v1/completions", json={"model": "policy", "prompt": f"burst {i}",
                                                      "max_tokens": MAX_TOKENS, "seed": i})
            return r.status_code, time.perf_counter() - t, r.headers.get("retry-after")

        t0 = time.perf_counter()
        out = await asyncio.gather(*(one(i) for i in range(burst)))
        wall = time.perf_counter() - t0
    codes = [s for s, _, _ in out]
    busy = [dt for s, dt, _ in out if s == 503]
    return {"burst": burst, "wall_s": wall, "statuses": {str(s): codes.count(s) for s in sorted(set(codes))},
            "rate_503": codes.count(503) / burst, "retry_after_on_all_503": all(ra for s, _, ra in out if s == 503),
            "p50_ms_503": statistics.median(busy) * 1000 if busy else None,
            "max_ms_503": max(busy) * 1000 if busy else None,
            "p50_ms_200": statistics.median([dt for s, dt, _ in out if s == 200] or [0]) * 1000}


def queue_limit(cfg: ServeConfig) -> int:
    """Requests the app holds before it answers 503: the ingress replicas' limits plus the proxy's queue (one
    queue per proxy for the whole deployment; one proxy here)."""
    ing = cfg.ingress
    return ing.max_replicas() * ing.max_ongoing_requests + max(ing.max_queued_requests, 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--override", action="append", default=[], help="a ServeConfig key=value (repeatable)")
    ap.add_argument("--name", default="serve_load", help="results file name under benchmarks/results")
    args = ap.parse_args()
    from ray import serve

    from lipo.serving.local import start_local

    cfg = load_config(ServeConfig, None, ["app_name=serve-load", "http.port=0", "reward=null", *args.override])
    url = start_local(cfg, KEY, log_level="WARNING")
    try:
        asyncio.run(closed_loop(url, 8, 32, "warmup"))
        levels = []
        for c in LEVELS:
            levels.append(asyncio.run(closed_loop(url, c, max(REQUESTS_MIN, REQUESTS_PER_CLIENT * c), f"c{c}")))
            print(f"c={c}: {levels[-1]['req_per_s']:.1f} req/s, p50 {levels[-1]['p50_ms']:.0f} ms, "
                  f"p99 {levels[-1]['p99_ms']:.0f} ms, {levels[-1]['statuses']}", flush=True)
        burst = asyncio.run(overfull(url, 2 * queue_limit(cfg)))
        print(f"over-full burst of {burst['burst']}: {burst['statuses']}", flush=True)
    finally:
        serve.shutdown()
    report(cfg, args.override, levels, burst, args.name)


def report(cfg: ServeConfig, overrides: list[str], levels: list[dict], burst: dict, name: str) -> None:
    by = {lv["concurrency"]: lv for lv in levels}
    base = max(by[8]["req_per_s"], by[16]["req_per_s"])
    for lv in levels:
        lv["ratio_to_best_c8_c16"] = lv["req_per_s"] / base
    worst = min(by[32]["ratio_to_best_c8_c16"], by[64]["ratio_to_best_c8_c16"])
    deployments = {"ingress": cfg.ingress.model_dump(), "policy": cfg.policy.deployment.model_dump(),
                   "policy_batch": cfg.policy.batch.model_dump()}
    payload = {"overrides": overrides, "max_tokens": MAX_TOKENS, "deployments": deployments,
               "queue_limit": queue_limit(cfg), "levels": levels, "overfull": burst, "baseline_req_per_s": base,
               "worst_ratio_c32_c64": worst, "target": TARGET, "meets_target": worst >= TARGET}
    rows = [[lv["concurrency"], lv["requests"], lv["req_per_s"], lv["ratio_to_best_c8_c16"], lv["p50_ms"],
             lv["p99_ms"], " ".join(f"{k}x{v}" for k, v in lv["statuses"].items())] for lv in levels]
    md = (f"Config overrides: `{' '.join(overrides) or 'none (ServeConfig defaults)'}`; ingress "
          f"{cfg.ingress.num_replicas} x {cfg.ingress.max_ongoing_requests} ongoing + "
          f"{cfg.ingress.max_queued_requests} queued at the proxy; policy max_ongoing_requests "
          f"{cfg.policy.deployment.max_ongoing_requests}, batch {cfg.policy.batch.max_batch_size}; "
          f"{MAX_TOKENS}-token completions of the builtin tiny policy.\n\n"
          + md_table(["concurrency", "requests", "req/s", "x best(c8,c16)", "p50 ms", "p99 ms", "statuses"], rows)
          + f"\n\nWorst of c=32 and c=64: {worst:.2f}x the best of c=8 and c=16 (target >= {TARGET}: "
          f"{'met' if worst >= TARGET else 'NOT met'}).\n\nOver-full queue: a burst of {burst['burst']} "
          f"(2x the queue limit {queue_limit(cfg)}): {burst['statuses']}, 503 rate {burst['rate_503']:.2f}, "
          f"Retry-After on every 503: {burst['retry_after_on_all_503']}, 503 p50 {burst['p50_ms_503'] or 0:.0f} ms "
          f"(max {burst['max_ms_503'] or 0:.0f} ms) vs 200 p50 {burst['p50_ms_200']:.0f} ms.\n")
    write_results(name, payload, md)
    print(md)


if __name__ == "__main__":
    main()
