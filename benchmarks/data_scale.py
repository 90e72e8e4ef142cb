"""Data at cluster scale: driver and worker memory, tokenisation throughput, and time to the first optimizer step.

Run: .venv/bin/python benchmarks/data_scale.py [--sizes 10000,100000,1000000] [--compare 100000,1000000] [--merge]
Writes benchmarks/results/data_scale.json and .md (about 40 minutes on the 2-core machine at the default sizes;
`--merge` keeps the saved results of the sizes not run this time, e.g. `--sizes "" --compare 1000000 --merge`).

For each size N it writes N synthetic lists (K=8 short texts of 4-10 words, prompts of 12 words; Parquet in row
groups of 8192 rows) under benchmarks/.data/ (kept between runs, git-ignored), then runs, each in its own process:
1. `lipo train` with a cold token cache: 2 tokenisation actors, then 2 Ray Train workers (builtin:tiny-llama,
   DeepSpeed stage 0, micro-batch 2, 3 optimizer steps). The benchmark polls, every 0.1 s, the peak resident set
   (VmHWM from /proc) of the driver and of every Ray Train worker under it. "first step" is the MLflow timestamp of
   the first `train/loss` minus the moment the command started: start-up, tokenisation, Ray and DeepSpeed set-up
   and one step. "tokenise" is the cache's own `data/tokenize_seconds`.
2. For the sizes in --compare: tokenisation alone with 1 actor and with 2 (`data.tokenize_workers`), each into a
   fresh cache: the baseline of the 2-CPU speed-up is the same code on one CPU, measured in the same run.

Targets (issue #12): the driver's peak RSS at 1M lists is at most 1.25x its value at 100k; each worker's peak RSS
grows between 100k and 1M by less than the size of the tokenised data set at 1M (so no worker copies it); 2 CPUs
tokenise at least 1.6x faster than 1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from _common import md_table, write_results

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"
WORDS = ("the a of to and in is it you that he was for on are with as his they be at one have this from or had by "
         "hot word but what some we can out other were all there when up use your how said an each she").split()
K, ROW_GROUP = 8, 8192


def write_lists(n: int) -> Path:
    path = DATA / f"lists-{n}.parquet"
    if path.exists():
        return path
    DATA.mkdir(parents=True, exist_ok=True)
    rng = random.Random(n)
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, pa.schema([("id", pa.string()), ("prompt", pa.string()),
                                          ("responses", pa.list_(pa.string())),
                                          ("labels", pa.list_(pa.float64()))])) as w:
        for start in range(0, n, 100_000):
            rows = [{"id": f"l{i}", "prompt": " ".join(rng.choices(WORDS, k=12)),
                     "responses": [" ".join(rng.choices(WORDS, k=rng.randint(4, 10))) for _ in range(K)],
                     "labels": [1 - j / (K - 1) for j in range(K)]} for i in range(start, min(n, start + 100_000))]
            w.write_table(pa.Table.from_pylist(rows, schema=w.schema), row_group_size=ROW_GROUP)
    tmp.rename(path)
    return path


def _hwm(pid: int) -> int:
    """Peak resident set of a process in bytes (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Peaks(threading.Thread):
    """Polls the peak RSS of a driver process and of the Ray Train workers among its descendants."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.driver, self.workers, self.stop = pid, 0, {}, threading.Event()

    def run(self) -> None:
        import psutil

        root = psutil.Process(self.pid)
        while not self.stop.is_set():
            self.driver = max(self.driver, _hwm(self.pid))
            try:
                for p in root.children(recursive=True):
                    if "TrainWorker" in " ".join(p.cmdline()):
                        self.workers[p.pid] = max(self.workers.get(p.pid, 0), _hwm(p.pid))
            except psutil.Error:
                pass
            time.sleep(0.1)


def train_once(n: int, data: Path, out: Path) -> dict:
    out.mkdir(parents=True)
    uri = f"sqlite:///{out / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "lipo.cli", "train", str(HERE.parent / "configs" / "train_example.yaml"),
           f"output_dir={out}", f"data.train=[{data}]", "run_name=bench", "optim.micro_batch_size=2",
           "optim.max_steps=3", "optim.warmup_steps=0", "deepspeed.stage=0", "checkpoint.every=1000",
           f"tracking.uri={uri}", "tracking.log_every=1"]
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks = Peaks(proc.pid)
    peaks.start()
    log, _ = proc.communicate()
    peaks.stop.set()
    peaks.join()
    if proc.returncode != 0:
        raise SystemExit(f"lipo train failed at N={n}:\n{log[-4000:]}")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.search_runs([client.get_experiment_by_name("lipo").experiment_id], "attributes.run_name = 'bench'")[0]
    first = min(m.timestamp for m in client.get_metric_history(run.info.run_id, "train/loss")) / 1000
    cache = next((out / ".cache").glob("tokens-*"))
    return {"driver_peak_rss": peaks.driver, "worker_peak_rss": sorted(peaks.workers.values()),
            "first_step_s": first - t0, "tokenise_s": run.data.metrics["data/tokenize_seconds"],
            "tokenised_bytes": sum(p.stat().st_size for p in cache.glob("*.arrow")),
            "lists": int(run.data.metrics["data/lists_kept"])}


TOKENISE_ONLY = """
import sys, json
from lipo.config import load_config
from lipo.models.loading import load_tokenizer
from lipo.training.config import TrainConfig
from lipo.training.tasks import ListwiseTask
from lipo.training.token_cache import token_cache
cfg = load_config(TrainConfig, sys.argv[1], sys.argv[2:])
print(json.dumps(token_cache(ListwiseTask(cfg), load_tokenizer(cfg.model.path)).metrics))
"""


def tokenise_only(data: Path, out: Path, workers: int) -> float:
    cmd = [sys.executable, "-c", TOKENISE_ONLY, str(HERE.parent / "configs" / "train_example.yaml"),
           f"output_dir={out}", f"data.train=[{data}]", f"data.tokenize_workers={workers}"]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])["data/tokenize_seconds"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--compare", default="100000,1000000")
    ap.add_argument("--merge", action="store_true", help="keep the saved results of sizes not run this time")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    work = DATA / "runs"
    shutil.rmtree(work, ignore_errors=True)
    saved = HERE / "results" / "data_scale.json"
    results: dict = {"sizes": {}, "speedup": {}}
    if args.merge and saved.exists():
        results = {k: json.loads(saved.read_text())[k] for k in results}
    for n in sizes:
        data = write_lists(n)
        r = train_once(n, data, work / f"train-{n}")
        results["sizes"][str(n)] = r
        print(f"N={n}: {json.dumps(r)}", flush=True)
    for n in [int(s) for s in args.compare.split(",") if s]:
        one = tokenise_only(write_lists(n), work / f"tok1-{n}", 1)
        two = tokenise_only(write_lists(n), work / f"tok2-{n}", 2)
        results["speedup"][str(n)] = {"one_cpu_s": one, "two_cpu_s": two, "ratio": one / two,
                                      "lists_per_s_two": n / two}
        print(f"N={n}: tokenise 1 CPU {one:.1f}s, 2 CPUs {two:.1f}s, x{one / two:.2f}", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    write_results("data_scale", results, report(results))


def report(results: dict) -> str:
    mb = 2**20
    rows = [[f"{int(n):,}", f"{r['driver_peak_rss'] / mb:.0f}", " / ".join(f"{w / mb:.0f}" for w in r["worker_peak_rss"]),
             f"{r['tokenised_bytes'] / mb:.0f}", f"{r['tokenise_s']:.1f}", f"{int(n) / r['tokenise_s']:,.0f}",
             f"{r['first_step_s']:.1f}"] for n, r in results["sizes"].items()]
    text = md_table(["lists", "driver peak RSS (MiB)", "train workers' peak RSS (MiB)", "tokenised data (MiB)",
                     "tokenise (s, 2 actors)", "lists/s", "first optimizer step (s)"], rows)
    s = results["sizes"]
    if "100000" in s and "1000000" in s:
        a, b = s["100000"], s["1000000"]
        growth = max(y - x for x, y in zip(a["worker_peak_rss"], b["worker_peak_rss"]))
        text += (f"\n\nDriver peak RSS 1M / 100k: **{b['driver_peak_rss'] / a['driver_peak_rss']:.2f}x** (target "
                 f"<= 1.25x). Largest worker peak-RSS growth 100k -> 1M: **{growth / mb:.0f} MiB**, against "
                 f"{b['tokenised_bytes'] / mb:.0f} MiB of tokenised data at 1M (target: less).")
    for n, r in results["speedup"].items():
        text += (f"\n\nTokenisation of {int(n):,} lists: 1 CPU {r['one_cpu_s']:.1f} s, 2 CPUs {r['two_cpu_s']:.1f} s: "
                 f"**{r['ratio']:.2f}x** (target >= 1.6x).")
    return text


if __name__ == "__main__":
    main()
