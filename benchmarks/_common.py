"""Shared helpers for the CPU benchmarks in this folder (not a benchmark itself).

Every benchmark alternates lipo and its baseline in one process, reports medians and ratios, and writes
benchmarks/results/<name>.json and .md through `write_results`.

Timing: the development machine is a 2-core VM shared with other jobs; identical wall-clock runs there differed by
more than 10x with the load. So torch runs on ONE thread and the primary timer is the process's CPU time
(`time.process_time`), which counts the work this process did and not the time it waited for a core. Wall-clock
times are recorded alongside in the JSON. On an idle machine, wall-clock with 1 thread equals the CPU time.
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)  # see the module docstring: CPU time of one thread is robust to other jobs' load

RESULTS = Path(__file__).resolve().parent / "results"
# Other processes on a shared machine skew wall times; the 1-minute load average at start and end is recorded so a
# reader can tell a quiet run from a contended one.
LOAD_AT_START = os.getloadavg()[0]


def machine_info() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import transformers

    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


class Timer:
    """CPU seconds (primary) and wall seconds of a block: `with Timer() as t: ...; t.cpu, t.wall`."""

    def __enter__(self) -> "Timer":
        self._c, self._w = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.cpu, self.wall = time.process_time() - self._c, time.perf_counter() - self._w


def matmul_peak_flops(n: int = 1024, seconds: float = 3.0) -> float:
    """This thread's fp32 matmul rate in FLOP/s (CPU time): the best of several timed bursts of n x n @ n x n.

    A square matmul large enough to saturate the BLAS kernels is as close to "peak" as the software stack gets, so
    model FLOPs divided by it is the fraction of attainable matmul throughput a workload reaches.
    """
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b  # warm the BLAS thread pool and caches
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        with Timer() as t:
            for _ in range(5):
                a @ b
        best = max(best, 5 * 2 * n**3 / t.cpu)
    return best


def alternate(fns: dict[str, Callable[[], object]], reps: int, warmup: int = 1) -> dict[str, dict[str, list]]:
    """{name: {"cpu": [...], "wall": [...]}} seconds of each fn, run round-robin `reps` times after `warmup` rounds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: {"cpu": [], "wall": []} for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            with Timer() as t:
                fn()
            times[name]["cpu"].append(t.cpu)
            times[name]["wall"].append(t.wall)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def peak_tensor_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes held by torch's CPU allocator while fn runs, above what was held when it started.

    From the profiler's allocation events (profile_memory=True): the running sum of +alloc/-free sizes, in time
    order. It counts tensors only (activations, gradients, temporaries), not Python objects or allocator slack, which
    is what differs between packed and unpacked runs; it is the CPU analogue of torch.cuda.max_memory_allocated.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak


def small_llama(width: int = 256, layers: int = 4, seed: int = 0):
    """The benchmark model: random-init Llama-style, byte vocabulary, fp32, sdpa attention."""
    from lipo.models.tiny import tiny_llama

    return tiny_llama(259, seed=seed, width=width, layers=layers)


def matmul_params(model: torch.nn.Module) -> int:
    """Parameters that take part in matmuls (all but the input embedding table, which is a lookup)."""
    emb = model.get_input_embeddings().weight
    return sum(p.numel() for p in model.parameters() if p is not emb)


def random_lists(n: int, k: int, prompt_len: int, response_len: int, seed: int = 0) -> list[dict]:
    """n tokenised lists of k responses with distinct labels; fixed lengths so the unpacked baseline wastes no pad."""
    rng = random.Random(seed)

    def ids(m: int) -> list[int]:
        return [rng.randint(3, 258) for _ in range(m)]

    return [{"prompt_ids": [1] + ids(prompt_len - 1), "response_ids": [ids(response_len - 1) + [2] for _ in range(k)],
             "labels": [float(k - 1 - j) for j in range(k)], "ref_logps": None} for _ in range(n)]


def md_table(headers: list[str], rows: list[list]) -> str:
    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def write_results(name: str, payload: dict, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = {**machine_info(), "loadavg_1min_start": LOAD_AT_START, "loadavg_1min_end": os.getloadavg()[0]}
    payload = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine, **payload}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    m = payload["machine"]
    header = (f"# {name}\n\n{payload['date']}; {m['cpu']}, {m['cores']} cores, torch {m['torch']} "
              f"(torch threads: {m['torch_threads']}), transformers {m['transformers']}; 1-min load average "
              f"{m['loadavg_1min_start']:.1f} at start, {m['loadavg_1min_end']:.1f} at end\n\n")
    (RESULTS / f"{name}.md").write_text(header + markdown.strip() + "\n", encoding="utf-8")
    print(f"wrote {RESULTS / name}.json and .md")
