"""The build-lists driver: prepare (before Ray), execute the Ray Data pipeline shard by shard, finalize the manifest.

    plan = prepare(cfg)                 # every user mistake surfaces here: config, models, input rows, output dir
    execute(plan, on_shard=...)         # generate -> reference -> score+label, one actor pool each
    manifest = finalize(plan)           # checks completeness, writes _manifest.json

Run it with `lipo build-lists CONFIG.yaml`; `lipo.lists.build.build_lists` drives these steps with MLflow tracking.

The pipeline is one Ray Data dataset over all pending shards, one block per shard, each stage a `map_batches` over
its own actor pool (`concurrency`, `num_cpus`, `num_gpus` from `resources.<stage>`). Actors are restarted when they
die and their tasks retried (`max_restarts=-1`, `max_task_retries=-1`). The driver streams the output blocks and
gathers rows by shard, keyed by prompt id, so a retried task can never duplicate a list; a shard is written the
moment all of its rows (kept or dropped) are back.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray.data
from ray.data import ActorPoolStrategy
from tqdm import tqdm

from lipo import __version__
from lipo.data.readers import ReadReport
from lipo.errors import LipoError
from lipo.lists.config import BuildListsConfig, identity_hash
from lipo.lists.manifest import (
    SCHEMA_VERSION, OutputDir, check_resumable, open_output, shard_record, summarize, write_json)
from lipo.lists.prompts import Shard, ids_digest, plan_shards, read_prompts
from lipo.lists.scorers import resolve_function
from lipo.lists.stages import CANDIDATE_DROPS, GenerateStage, ReferenceStage, ScoreStage, work_table
from lipo.lists.vllm_engine import check_vllm, vllm_generate
from lipo.models.loading import check_model_spec, load_tokenizer
from lipo.models.reward_loading import check_reward_spec


@dataclass
class Plan:
    cfg: BuildListsConfig
    resolved: dict[str, Any]
    config_hash: str
    out: OutputDir
    status: str  # new | resume | complete
    shards: list[Shard]
    pending: list[Shard]
    report: ReadReport
    input_digest: str


def check_environment(cfg: BuildListsConfig) -> None:
    """Model specs, the scoring function and optional engines, checked on the driver before anything heavy."""
    if cfg.generate is not None:
        check_model_spec(cfg.generate.model, "generate.model")
        if cfg.generate.engine == "vllm":
            check_vllm()
    if cfg.reference is not None:
        check_model_spec(cfg.reference_model, "reference.model")
    if cfg.score.name in ("pointwise", "pairwise"):
        check_reward_spec(cfg.score.model, "score.model")
    if cfg.score.name == "function":
        resolve_function(cfg.score.function)


def prepare(cfg: BuildListsConfig) -> Plan:
    check_environment(cfg)
    try:
        tokenizer = load_tokenizer(cfg.tokenizer_model) if cfg.tokenizer_model else None
    except OSError as exc:
        raise LipoError(f"cannot load the tokenizer of '{cfg.tokenizer_model}': {exc}".splitlines()[0]) from None
    if tokenizer is None:  # generate and reference both off: prompts are measured with the builtin byte tokenizer
        tokenizer = load_tokenizer("builtin:tiny-llama")
    table, report = read_prompts(cfg, tokenizer)
    shards = plan_shards(table, cfg.seed, cfg.output.shard_size)
    digest = ids_digest(table.column("id").to_pylist())
    out, resolved, h = OutputDir(cfg.output.dir), cfg.model_dump(mode="json"), identity_hash(cfg)
    status = open_output(out, h, resolved, digest)
    finished = out.finished()
    check_resumable(finished, shards, out.root)
    pending = [] if status == "complete" else [s for s in shards if s.index not in finished]
    return Plan(cfg, resolved, h, out, status, shards, pending, report, digest)


def _map(ds, stage: type, plan: Plan, res):
    pool = (ActorPoolStrategy(size=res.concurrency) if isinstance(res.concurrency, int)
            else ActorPoolStrategy(min_size=res.concurrency[0], max_size=res.concurrency[1]))
    # Fault tolerance: Ray Data 2.60 creates pool actors with max_restarts=-1 and max_task_retries=-1 unless told
    # otherwise (ActorPoolMapOperator), so a dead actor is replaced and its block retried; passing them again is
    # deprecated (`ray_remote_args`). tests/workflows/test_build_lists_e2e.py kills a scorer actor to prove it.
    return ds.map_batches(
        stage, fn_constructor_kwargs={"cfg": plan.resolved}, compute=pool,
        # One block = one shard = one call: the actor cuts it into micro-batches of res.batch_size itself, so the
        # grouping into model batches does not depend on how Ray Data bundles blocks (see lipo.lists.stages).
        batch_size=None, batch_format="pyarrow", num_cpus=res.num_cpus, num_gpus=res.num_gpus)


def hf_generate(ds, plan: Plan):
    """Generation with lipo's own sampler (`GenerateStage`), one actor pool."""
    return _map(ds, GenerateStage, plan, plan.cfg.resources.generate)


def vllm_generate_stage(ds, plan: Plan):
    return vllm_generate(ds, plan.cfg)


# `generate.engine` -> how the dataset gets its candidates; looked up once per build, in `build_dataset`.
GENERATE_ENGINES: dict[str, Callable[[Any, Plan], Any]] = {"hf": hf_generate, "vllm": vllm_generate_stage}


def build_dataset(plan: Plan):
    cfg = plan.cfg
    ds = ray.data.from_arrow([work_table(s.index, s.table) for s in plan.pending])  # one block per shard
    if cfg.generate is not None:
        ds = GENERATE_ENGINES[cfg.generate.engine](ds, plan)
    if cfg.reference is not None:
        ds = _map(ds, ReferenceStage, plan, cfg.resources.reference)
    return _map(ds, ScoreStage, plan, cfg.resources.score)


def _list_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("id", "prompt", "prompt_messages", "responses", "labels", "rewards", "ref_logps")}


# How a LipoError raised inside an actor shows in the remote traceback text that Ray Data passes back (the exception
# object itself does not survive: Ray Data re-raises a UserCodeException that only carries the formatted traceback).
_REMOTE_LIPO_ERROR = re.compile(r"^lipo\.errors\.\w+: (.+)$", re.MULTILINE)


def _user_message(exc: BaseException) -> str | None:
    """The message of the LipoError (e.g. from the scoring function) inside Ray's wrappers, if there is one."""
    todo, seen = [exc], set()
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, LipoError) and getattr(e, "cause", None) is None:
            return str(e)
        found = _REMOTE_LIPO_ERROR.findall(str(e))
        if found:
            return found[-1]
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return None


def execute(plan: Plan, on_shard: Callable[[int, dict], None] | None = None) -> None:
    """Run the pipeline over the pending shards, writing each shard as soon as all its rows are back.

    A LipoError raised inside an actor (a user's mistake, e.g. the scoring function's) comes back as a LipoError with
    its one-line message; any other exception (a bug) propagates as it is, traceback and all.
    """
    expected = {s.index: s for s in plan.pending}
    buffers: dict[int, dict[str, dict]] = {i: {} for i in expected}
    done = len(plan.shards) - len(plan.pending)
    bar = tqdm(total=len(plan.shards), initial=done, desc="build-lists: shards written", unit="shard")
    try:
        for batch in build_dataset(plan).iter_batches(batch_size=None, batch_format="pyarrow"):
            for row in batch.to_pylist():
                got = buffers.get(row["shard"])
                if got is None:  # a late copy from a retried task, of a shard already written
                    continue
                got[row["id"]] = row  # keyed by id: a retried task cannot duplicate a list
                shard = expected[row["shard"]]
                if len(got) < shard.table.num_rows:
                    continue
                del buffers[shard.index]
                rows = [got[i] for i in shard.table.column("id").to_pylist()]
                record = shard_record(shard, rows)
                plan.out.write_shard(shard, [_list_row(r) for r in rows if r["drop"] is None], record)
                done += 1
                bar.update(1)
                if on_shard is not None:
                    on_shard(done, record)
    except LipoError:
        raise
    except Exception as exc:
        message = _user_message(exc)
        if message is None:
            raise
        raise LipoError(message) from exc
    finally:
        bar.close()
    if buffers or done != len(plan.shards):
        raise LipoError(f"build-lists pipeline ended with {len(plan.shards) - done} shard(s) incomplete; rerun to "
                        "resume")


def _models(cfg: BuildListsConfig) -> dict[str, Any]:
    s = cfg.score
    return {"policy": cfg.generate.model if cfg.generate else None, "reference": cfg.reference_model,
            "tokenizer": cfg.tokenizer_model,
            "scorer": {"name": s.name, "model": s.model, "function": s.function,
                       "field": s.field if s.name == "existing" else None}}


def finalize(plan: Plan) -> dict[str, Any]:
    """Check the finished output and write `_manifest.json` (last, atomically); returns the manifest."""
    cfg, records = plan.cfg, plan.out.finished()
    summary = summarize(plan.out, plan.shards, records)
    events = summary.pop("events")
    manifest = {
        "schema_version": SCHEMA_VERSION, "lipo_version": __version__, "config_hash": plan.config_hash,
        "input_digest": plan.input_digest, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": plan.resolved, "models": _models(cfg),
        "tokenize": {"max_prompt_tokens": cfg.input.max_prompt_tokens,
                     "max_response_tokens": cfg.reference.max_response_tokens if cfg.reference else None},
        "input": {"rows_read": plan.report.rows_read, "rows_skipped": plan.report.rows_skipped,
                  "skipped_by_reason": dict(plan.report.skipped_by_reason),
                  "first_errors": plan.report.first_errors},
        **summary,
        "dropped_candidates": {k: events.get(k, 0) for k in CANDIDATE_DROPS},
        "truncated": {"prompts": events.get("prompt_truncated", 0),
                      "responses": events.get("response_truncated", 0)},
    }
    write_json(plan.out.manifest_path, manifest)
    return manifest


STAT_KEYS = ("labels", "rewards", "ref_logps", "list_size")


def manifest_metrics(manifest: dict[str, Any]) -> dict[str, float]:
    """The manifest's numbers as flat MLflow metrics, e.g. `lists/lists`, `labels/mean`, `dropped_lists/...`."""
    out = {f"lists/{k}": float(v) for k, v in manifest["counts"].items()}
    out["input/rows_read"] = float(manifest["input"]["rows_read"])
    out["input/rows_skipped"] = float(manifest["input"]["rows_skipped"])
    for group in ("dropped_lists", "dropped_candidates", "truncated"):
        for reason, n in manifest[group].items():
            out[f"{group}/" + "".join(c if c.isalnum() else "_" for c in reason).strip("_")] = float(n)
    for name in STAT_KEYS:
        for k, v in manifest[name].items():
            out[f"{name}/{k}"] = float(v)
    return out

