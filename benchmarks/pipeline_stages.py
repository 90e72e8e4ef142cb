"""Per-actor throughput of the build-lists stages through Ray Data vs a plain loop over the same model.

Run: /work/venv/bin/python benchmarks/pipeline_stages.py        (about 3-4 minutes of wall time on the dev VM)
Writes benchmarks/results/pipeline_stages.json and pipeline_stages.md.

For each stage of `lipo build-lists` (generate -> reference log-probs -> score), the same work is timed two ways:

- **ray**: the stage's own actor class (`lipo.lists.stages.GenerateStage` / `ReferenceStage` / `ScoreStage`) through
  the pipeline's own `map_batches` call (`lipo.lists.pipeline._map`) on ONE actor (`ActorPoolStrategy(size=1)`,
  `num_cpus=1`), fed blocks of `work_table` rows and drained with `iter_batches` as `pipeline.execute` does. One
  Ray Data execution runs the blocks PASSES times over (a new pool, so a new actor, per execution): pass 0 is the
  warm-up and holds the actor's start-up; each later pass is one timed sample, from the moment the last output
  block of the previous pass reached the driver to the moment its own last block did. That is the steady-state
  time of a pass with Ray's per-block costs included (object store, scheduling, Arrow <-> Python rows in the actor,
  output transfer) and start-up excluded. Start-up is reported separately as pass 0 minus a steady pass.
- **plain**: a loop in this process over the same micro-batches, calling the functions the actors call:
  `lipo.models.generate.sample`; `lipo.data.tokenize.tokenize_list` + `lipo.models.packed_logps.score_lists`;
  `lipo.models.reward.pointwise_text` + `classify`. The batches' Python inputs are extracted before timing, so the
  plain loop does strictly less than the actor (no Arrow tables, no drops or events bookkeeping, no labels).

Ray and plain runs alternate (REPS rounds per stage); the numbers are medians over all timed passes, and the
overhead is ray / plain - 1 (target < 15%). Wall clock is the only honest timer here (the actor's work runs in
another process), so noise from other jobs on the machine is not filtered out as in the other benchmarks. Two
things are recorded to judge it: the 1-minute load average at each round, and the plain loop's wall / CPU ratio
(1.0 on an idle core; above 1 it waited for a core). The CPU seconds of every process of the Ray session (driver,
raylet, GCS, workers, the actor) over each timed pass are recorded too: a load-robust view of Ray's cost, which
counts Ray's background processes that run on the same 2 cores.

Workload: the quickstart's "Copy: xyz" prompts (`lipo.bootstrap.copytask.make_world`), N_PROMPTS of them in shards of
SHARD_SIZE (one block per shard, as the pipeline does), micro-batches of BATCH_SIZE prompts, K candidates of at most
MAX_NEW_TOKENS tokens, pointwise reward model. Two model sizes: the builtin tiny models (`builtin:tiny-llama`,
`builtin:tiny-reward`: width 64, 2 layers), and the benchmarks' small Llama (width 256, 4 layers, also as the reward
model's backbone) saved as Hugging Face directories and loaded by path, as a real checkpoint would be.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

from _common import md_table, median, write_results

import pyarrow as pa  # noqa: E402
import torch  # noqa: E402

from lipo.bootstrap.copytask import make_world  # noqa: E402
from lipo.config import load_config  # noqa: E402
from lipo.data.records import prompt_of  # noqa: E402
from lipo.data.tokenize import TokenizeSpec, tokenize_list  # noqa: E402
from lipo.lists.config import BuildListsConfig, StageResources  # noqa: E402
from lipo.lists.prompts import plan_shards, read_prompts  # noqa: E402
from lipo.lists.stages import GenerateStage, ReferenceStage, ScoreStage, work_table  # noqa: E402
from lipo.models.generate import SamplingParams, sample  # noqa: E402
from lipo.models.loading import load_causal_lm, load_tokenizer  # noqa: E402
from lipo.models.packed_logps import score_lists  # noqa: E402
from lipo.models.reward import classify, pointwise_text  # noqa: E402
from lipo.models.reward_loading import load_reward_model  # noqa: E402

N_PROMPTS = int(os.environ.get("BENCH_PROMPTS", 256))
SHARD_SIZE = 16  # prompts per block (the pipeline's output.shard_size)
BATCH_SIZE = 8  # prompts per model call inside the actor (resources.<stage>.batch_size, the default)
K = 4
MAX_NEW_TOKENS = 8  # the copy task's answers are 4-6 letters and a newline
WARMUP_BLOCKS = 4  # the actor's warm-up pass, inside its constructor: 64 prompts
REPS = int(os.environ.get("BENCH_REPS", 3))
MODELS = os.environ.get("BENCH_MODELS", "builtin,small").split(",")
STAGES = ("generate", "reference", "score")
TARGET = 0.15


def chunks(xs: list, n: int) -> list[list]:
    return [xs[i:i + n] for i in range(0, len(xs), n)]


# ---------------------------------------------------------------------------------------------------- setup


def save_small_models(root: Path) -> tuple[str, str]:
    """The benchmarks' small Llama (width 256, 4 layers) and a reward model of the same shape, as HF directories."""
    from _common import small_llama

    from lipo.models.tiny import byte_tokenizer, tiny_reward_model

    policy, reward = root / "small-policy", root / "small-reward"
    small_llama().save_pretrained(policy)
    byte_tokenizer().save_pretrained(policy)
    tiny_reward_model(width=256, layers=4).save_pretrained(reward)
    byte_tokenizer().save_pretrained(reward)
    return str(policy), str(reward)


def build_config(root: Path, prompts: Path, policy: str, reward: str) -> BuildListsConfig:
    res = [f"resources.{s}.{k}={v}" for s in STAGES
           for k, v in (("batch_size", BATCH_SIZE), ("concurrency", 1), ("num_cpus", 1))]
    return load_config(BuildListsConfig, None, [
        f"input.prompts=[{prompts}]", f"input.limit={N_PROMPTS}", f"output.dir={root / 'out'}",
        f"output.shard_size={SHARD_SIZE}", f"generate.model={policy}", f"generate.num_candidates={K}",
        f"generate.max_new_tokens={MAX_NEW_TOKENS}", "score.name=pointwise", f"score.model={reward}",
        "tracking.enabled=false", *res])


def stage_inputs(cfg: BuildListsConfig) -> dict[str, list[pa.Table]]:
    """The blocks each stage reads in the pipeline: prompts; generated lists; lists with ref_logps."""
    table, _ = read_prompts(cfg, load_tokenizer(cfg.tokenizer_model))
    prompts = [work_table(s.index, s.table) for s in plan_shards(table, cfg.seed, cfg.output.shard_size)]
    resolved = cfg.model_dump(mode="json")
    generated = [GenerateStage(resolved)(b) for b in prompts]  # called directly, no Ray
    referenced = [ReferenceStage(resolved)(b) for b in generated]
    scored = [ScoreStage(resolved)(b) for b in referenced]
    return {"generate": prompts, "reference": generated, "score": referenced, "_out": scored}


# ---------------------------------------------------------------------------------------------------- plain loops


class Plain:
    """The plain loop of one stage: models loaded once here; `run()` is one pass over all blocks' micro-batches."""

    def __init__(self, stage: str, cfg: BuildListsConfig, blocks: list[pa.Table]):
        self.stage = stage
        rows = [r for b in blocks for r in b.to_pylist() if r["drop"] is None]  # extracted before any timing
        self.ids = [r["id"] for r in rows]
        self.batches = chunks(rows, BATCH_SIZE)  # one block = SHARD_SIZE rows = whole micro-batches
        assert SHARD_SIZE % BATCH_SIZE == 0
        if stage == "generate":
            g = cfg.generate
            self.model, self.tok = load_causal_lm(g.model, g.dtype), load_tokenizer(g.model)
            self.params = SamplingParams(g.temperature, g.top_k, g.top_p, g.max_new_tokens, tuple(g.stop))
            self.inputs = [([prompt_of(r) for r in c], [r["seed"] for r in c]) for c in self.batches]
        elif stage == "reference":
            ref = cfg.reference
            self.model = load_causal_lm(cfg.reference_model, ref.dtype, ref.attn_implementation).eval()
            self.tok = load_tokenizer(cfg.reference_model)
            self.spec = TokenizeSpec(cfg.input.max_prompt_tokens, ref.max_response_tokens)
            self.inputs = [[{"prompt": r["prompt"], "prompt_messages": r["prompt_messages"],
                             "responses": r["responses"], "labels": [0.0] * len(r["responses"])} for r in c]
                           for c in self.batches]
        else:
            self.model, self.tok = load_reward_model(cfg.score.model, cfg.score.dtype)
            self.max_tokens = cfg.score.max_tokens
            self.inputs = [[(prompt_of(r), r["responses"]) for r in c] for c in self.batches]
        self.cfg = cfg

    def run(self) -> list:
        out = []
        if self.stage == "generate":
            for prompts, seeds in self.inputs:
                out += sample(self.model, self.tok, prompts, K, seeds, self.params, self.cfg.input.max_prompt_tokens)
        elif self.stage == "reference":
            for rows in self.inputs:
                items = [tokenize_list(r, self.tok, self.spec)[0] for r in rows]
                with torch.no_grad():
                    logps = score_lists(self.model, items, self.tok.pad_token_id, packing=self.cfg.reference.packing)
                out += [logps[b, :len(it["response_ids"])].tolist() for b, it in enumerate(items)]
        else:
            for rows in self.inputs:
                texts = [pointwise_text(p, y, self.tok) for p, ys in rows for y in ys]
                flat = classify(self.model, self.tok, texts, self.max_tokens, max(1, len(texts))).tolist()
                i = 0
                for _, ys in rows:
                    out.append(flat[i:i + len(ys)])
                    i += len(ys)
        return out


# ---------------------------------------------------------------------------------------------------- Ray


def session_cpu() -> dict[int, float]:
    """CPU seconds so far of this process and all its descendants (the local Ray session's processes)."""
    import psutil

    me = psutil.Process()
    out = {}
    for p in [me] + me.children(recursive=True):
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


def cpu_delta(a: dict[int, float], b: dict[int, float]) -> float:
    return sum(v - a.get(pid, 0.0) for pid, v in b.items())


STAGE_CLASSES = {"generate": GenerateStage, "reference": ReferenceStage, "score": ScoreStage}


def warmed(stage_cls: type, warmup: list[pa.Table], mark: str) -> type:
    """The stage class, unchanged but for its constructor: after loading its model it runs one warm-up pass over
    `warmup` and writes, to the file `mark`, when it started, when its model was loaded and when it was warm."""

    class Warmed(stage_cls):
        def __init__(self, cfg):
            import json as _json
            import time as _time

            t0 = _time.time()
            super().__init__(cfg)
            t1 = _time.time()
            for b in warmup:
                self(b)
            t2 = _time.time()
            with open(mark + ".tmp", "w") as f:
                _json.dump({"init_start": t0, "loaded": t1, "warm": t2}, f)
            os.replace(mark + ".tmp", mark)

        def __call__(self, batch):  # the stage's own call, with its start and end appended to `mark`.calls
            import time as _time

            t0, c0 = _time.time(), _time.process_time()
            out = super().__call__(batch)
            with open(mark + ".calls", "a") as f:
                f.write(f"{t0} {_time.time()} {_time.process_time() - c0}\n")
            return out

    Warmed.__name__ = Warmed.__qualname__ = stage_cls.__name__
    return Warmed


def ray_run(stage: str, cfg: BuildListsConfig, blocks: list[pa.Table], tmp: Path) -> dict:
    """One Ray Data execution of the stage over the blocks on one fresh, warmed actor, drained like `execute`."""
    import json
    import threading

    import ray.data

    from lipo.lists.pipeline import _map

    mark = str(tmp / f"mark-{time.time_ns()}.json")
    res = StageResources(batch_size=BATCH_SIZE, concurrency=1, num_cpus=1)
    ds = _map(ray.data.from_arrow(blocks), warmed(STAGE_CLASSES[stage], blocks[:WARMUP_BLOCKS], mark),
              SimpleNamespace(resolved=cfg.model_dump(mode="json")), res)
    cpu = {}

    def at_ready() -> None:  # the session's CPU counters the moment the actor is warm (5 ms polling)
        while not os.path.exists(mark) and "stop" not in cpu:
            time.sleep(0.005)
        cpu["ready"] = session_cpu()

    watcher = threading.Thread(target=at_ready, daemon=True)
    t0_epoch, t0 = time.time(), time.perf_counter()
    watcher.start()
    out = []
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        out.append(batch)
        last_epoch = time.time()  # the last output block is at the driver: the data is materialised
    end_epoch = time.time()  # the loop has ended: the executor has also shut down
    cpu["end"] = session_cpu()
    cpu["stop"] = True
    watcher.join()
    with open(mark) as f:
        m = json.load(f)
    with open(mark + ".calls") as f:
        calls = [tuple(map(float, line.split())) for line in f][WARMUP_BLOCKS:]  # the timed calls
    return {"timed_s": last_epoch - m["warm"], "teardown_s": end_epoch - last_epoch,
            "startup_s": m["loaded"] - t0_epoch,
            "warmup_s": m["warm"] - m["loaded"], "execution_s": time.perf_counter() - t0,
            "session_cpu_s": cpu_delta(cpu["ready"], cpu["end"]) if "ready" in cpu else float("nan"),
            "actor_busy_s": sum(b - a for a, b, _ in calls), "actor_cpu_s": sum(c for _, _, c in calls),
            "first_call_wait_s": calls[0][0] - m["warm"], "after_last_call_s": last_epoch - calls[-1][1],
            "n_calls": len(calls),
            "rows": [r for b in out for r in b.to_pylist()]}


def check_same(stage: str, plain_out: list, ids: list[str], rows: list[dict]) -> float:
    """Largest difference between what the plain loop and the Ray actor produced (0 for identical samples)."""
    by_id = {r["id"]: r for r in rows}
    live = [by_id[i] for i in ids]
    if stage == "generate":
        want = [list(dict.fromkeys(texts)) for texts in plain_out]  # the stage keeps the first copy of duplicates
        assert want == [r["responses"] for r in live], "generate: Ray and plain samples differ"
        return 0.0
    key = "ref_logps" if stage == "reference" else "rewards"
    assert len(plain_out) == len(live)
    return max(abs(a - b) for x, r in zip(plain_out, live) for a, b in zip(x, r[key], strict=True))


def ray_worker_threads() -> int:
    import ray

    @ray.remote(num_cpus=1)
    def threads() -> int:
        import torch as t

        return t.get_num_threads()

    return ray.get(threads.remote())


# ---------------------------------------------------------------------------------------------------- main


RAY_KEYS = ("timed_s", "teardown_s", "startup_s", "warmup_s", "execution_s", "session_cpu_s", "actor_busy_s",
            "actor_cpu_s", "first_call_wait_s", "after_last_call_s")


def bench_stage(stage: str, cfg: BuildListsConfig, blocks: list[pa.Table], tmp: Path) -> dict:
    plain = Plain(stage, cfg, blocks)
    plain.run()  # warm-up of this process (lazy imports, first calls)
    t = {k: [] for k in ("plain_wall_s", "plain_cpu_s", "loadavg_1min") + tuple(f"ray_{k}" for k in RAY_KEYS)}
    diff = 0.0
    for rep in range(REPS):
        t["loadavg_1min"].append(os.getloadavg()[0])
        r = ray_run(stage, cfg, blocks, tmp)
        assert r["n_calls"] == len(blocks), f"{r['n_calls']} actor calls for {len(blocks)} blocks (a retry?)"
        for k in RAY_KEYS:
            t[f"ray_{k}"].append(r[k])
        c, w = time.process_time(), time.perf_counter()
        out = plain.run()
        t["plain_wall_s"].append(time.perf_counter() - w)
        t["plain_cpu_s"].append(time.process_time() - c)
        diff = max(diff, check_same(stage, out, plain.ids, r["rows"]))
        print(f"  {stage} round {rep}: ray {r['timed_s']:.3f} s (actor busy {r['actor_busy_s']:.3f} s), plain "
              f"{t['plain_wall_s'][-1]:.3f} s (CPU {t['plain_cpu_s'][-1]:.3f} s), start-up {r['startup_s']:.1f} s, "
              f"load {t['loadavg_1min'][-1]:.1f}", flush=True)
    n_rows, nb = sum(b.num_rows for b in blocks), len(blocks)
    med = {k: median(v) for k, v in t.items()}
    # Where Ray's extra wall time goes, per round, then the median (the parts add up to ray - plain):
    # - in_call: the stage's call took longer than the plain loop (Arrow <-> rows, bookkeeping, contention);
    # - between_calls: the actor idle between its calls (Ray Data's per-block work: fetching the input block,
    #   wrapping the batch, storing the output block, dispatching the next task), per block boundary;
    # - fixed: once per execution, the warm actor waiting for its first task plus the last output block's trip to
    #   the driver.
    fixed = [a + b for a, b in zip(t["ray_first_call_wait_s"], t["ray_after_last_call_s"])]
    between = [(w - busy - f) for w, busy, f in zip(t["ray_timed_s"], t["ray_actor_busy_s"], fixed)]
    in_call = [busy - p for busy, p in zip(t["ray_actor_busy_s"], t["plain_wall_s"])]
    return {
        "stage": stage, "prompts": n_rows, "blocks": nb, "candidates": n_rows * K,
        **{f"{k}_all": v for k, v in t.items()}, **med,
        "overhead": med["ray_timed_s"] / med["plain_wall_s"] - 1,
        "overhead_per_round": [a / b - 1 for a, b in zip(t["ray_timed_s"], t["plain_wall_s"])],
        "ray_prompts_per_s": n_rows / med["ray_timed_s"], "plain_prompts_per_s": n_rows / med["plain_wall_s"],
        "plain_wall_over_cpu": med["plain_wall_s"] / med["plain_cpu_s"],
        "cpu_overhead": med["ray_session_cpu_s"] / med["plain_cpu_s"] - 1,
        "extra_in_call_s_per_block": median(in_call) / nb,
        "extra_between_calls_s_per_block": median(between) / (nb - 1),
        "extra_fixed_s_per_execution": median(fixed),
        # a long run (the real pipeline: one execution over all shards) pays the fixed part once
        "overhead_steady": (med["ray_timed_s"] - median(fixed)) / med["plain_wall_s"] - 1,
        "max_abs_diff_vs_plain": diff,
    }


def main() -> None:
    import ray
    import ray.data

    torch.manual_seed(0)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    results, rows = [], []
    try:
        worker_threads = ray_worker_threads()
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            prompts = make_world(root / "world", n_prompts=max(N_PROMPTS, 128))["prompts"]
            small = save_small_models(root) if "small" in MODELS else None
            specs = {"builtin": ("builtin:tiny-llama", "builtin:tiny-reward"), "small": small}
            for name in MODELS:
                cfg = build_config(root, prompts, *specs[name])
                inputs = stage_inputs(cfg)
                for stage in STAGES:
                    print(f"{name} / {stage}", flush=True)
                    r = {"model": name, **bench_stage(stage, cfg, inputs[stage], root)}
                    results.append(r)
                    nb = r["blocks"]
                    rows.append([name, stage, f"{r['plain_prompts_per_s']:.0f}", f"{r['ray_prompts_per_s']:.0f}",
                                 f"{1000 * r['plain_wall_s'] / nb:.0f}", f"{1000 * r['ray_timed_s'] / nb:.0f}",
                                 f"**{100 * r['overhead']:+.0f}%**",
                                 " / ".join(f"{100 * x:+.0f}" for x in r["overhead_per_round"]),
                                 f"{1000 * r['extra_in_call_s_per_block']:+.0f}",
                                 f"{1000 * r['extra_between_calls_s_per_block']:+.0f}",
                                 f"{1000 * r['extra_fixed_s_per_execution']:.0f}",
                                 f"{100 * r['overhead_steady']:+.0f}%",
                                 f"{r['ray_startup_s']:.1f}", f"{100 * r['cpu_overhead']:+.0f}%",
                                 f"{r['plain_wall_over_cpu']:.2f}"])
                    print(md_table(HEADERS, [rows[-1]]).splitlines()[-1], flush=True)
    finally:
        ray.shutdown()
    worst = max(results, key=lambda r: r["overhead"])
    met = all(r["overhead"] < TARGET for r in results)
    loads = [x for r in results for x in r["loadavg_1min_all"]]
    md = (f"One actor per stage (`ActorPoolStrategy(size=1)`, `num_cpus=1`, Ray {ray.__version__}, "
          f"`ray.init(num_cpus=2)`) vs a plain loop in one process over the same micro-batches. {N_PROMPTS} "
          f"\"Copy: xyz\" prompts in {N_PROMPTS // SHARD_SIZE} blocks of {SHARD_SIZE}, micro-batches of {BATCH_SIZE}, "
          f"K={K}, at most {MAX_NEW_TOKENS} new tokens, pointwise reward model. builtin = `builtin:tiny-llama` / "
          f"`builtin:tiny-reward` (width 64, 2 layers); small = width 256, 4 layers, loaded from HF directories. "
          f"Wall-clock medians of {REPS} alternating rounds. Ray time: from the moment the actor finished its "
          f"warm-up pass ({WARMUP_BLOCKS} blocks) to the arrival of the last output block at the driver; start-up "
          f"excluded and shown apart. Torch threads: 1 in the driver, {worker_threads} in Ray workers.\n\n"
          + md_table(HEADERS, rows)
          + f"\n\nTarget (< {100 * TARGET:.0f}% overhead per actor): {'met' if met else 'NOT met'}; worst "
            f"{100 * worst['overhead']:+.0f}% ({worst['model']} / {worst['stage']}). 1-min load average during the "
            f"rounds: {min(loads):.1f} to {max(loads):.1f} on {os.cpu_count()} cores.\n")
    write_results("pipeline_stages", {
        "config": {"prompts": N_PROMPTS, "shard_size": SHARD_SIZE, "batch_size": BATCH_SIZE, "K": K,
                   "max_new_tokens": MAX_NEW_TOKENS, "warmup_blocks": WARMUP_BLOCKS, "reps": REPS, "models": MODELS,
                   "ray": ray.__version__, "ray_worker_torch_threads": worker_threads},
        "stages": results,
        "headline": {"worst_overhead": worst["overhead"], "worst": f"{worst['model']}/{worst['stage']}",
                     "target": TARGET, "met": met}}, md)


HEADERS = ["model", "stage", "prompts/s plain", "prompts/s ray", "ms/block plain", "ms/block ray", "overhead",
           "overhead per round", "extra ms/block in call", "extra ms/block between calls", "fixed ms/run",
           "overhead w/o fixed", "actor start-up s", "CPU overhead (all Ray procs)", "plain wall/CPU"]

if __name__ == "__main__":
    sys.exit(main())
