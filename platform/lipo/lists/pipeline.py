"""The build-lists driver: prepare, execute the Ray Data pipeline shard by shard, finalize the manifest.

    plan = prepare(cfg)                 # config and model errors before Ray; then the validation pass (Ray)
    execute(plan, on_shard=...)         # load -> generate -> reference -> score+label -> write, one pool each
    manifest = finalize(plan)           # checks completeness from records and footers, writes _manifest.json

Run it with `lipo build-lists CONFIG.yaml`; `lipo.lists.build.build_lists` drives these steps with MLflow tracking.

Who holds what: the driver holds the config, the read units, one small descriptor per shard and the shards' records
(counts, drops, statistics summaries). Ray Data does the rest, streamed: `lipo.lists.staging` validates the input
units and stages the valid prompts under `OUT/_build/prompts/` (data errors surface there, before any model loads);
the pipeline is then one dataset over the pending shards' descriptors, one block per shard: `LoadShard` reads the
shard's staged row group, each model stage is a `map_batches` over its own actor pool (`concurrency`, `num_cpus`,
`num_gpus` from `resources.<stage>`), and `WriteShard` writes the shard's part file and record itself
(`lipo.lists.shards`), sending only the record back. Actors are restarted when they die and their tasks retried
(`max_restarts=-1`, `max_task_retries=-1`); a retried write replaces the same files, so a list is never duplicated.

Reruns: the same config into the same `output.dir` resumes, or finds the build complete. Finished shards whose
prompts changed since (content digests, not only ids; `lipo.lists.manifest`) are built again and the others kept;
a complete build whose prompts changed becomes a resume of the changed shards, never "already complete".
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray.data
from ray.data import ActorPoolStrategy
from tqdm import tqdm

from lipo import __version__
from lipo.data.files import plan_units, resolve_paths
from lipo.data.readers import ReadReport
from lipo.errors import LipoError
from lipo.lists.config import BuildListsConfig, StageResources, identity_hash
from lipo.lists.manifest import (MANIFEST_NAME, SCHEMA_VERSION, STAT_KEYS, OutputDir, forget, open_output,
                                 stale_shards, summarize)
from lipo.lists.prompts import PromptValidator, Shard
from lipo.lists.scorers import resolve_function
from lipo.lists.shards import LoadShard, WriteShard, descriptor
from lipo.lists.stages import CANDIDATE_DROPS, GenerateStage, ReferenceStage, ScoreStage
from lipo.lists.staging import prompt_tokenizer, stage_prompts
from lipo.lists.vllm_engine import check_vllm, vllm_generate
from lipo.models.loading import check_model_spec
from lipo.models.reward_loading import check_reward_spec

_IO_CPUS = 0.1  # LoadShard and WriteShard read and write one shard per call: I/O, not compute


@dataclass
class Plan:
    cfg: BuildListsConfig
    resolved: dict[str, Any]
    config_hash: str
    out: OutputDir
    status: str  # new | resume | complete
    shards: list[Shard]  # descriptors only
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
    """Check everything a user can get wrong, in order of cost: config and models (no Ray), input files and the
    output directory, then the distributed validation pass over the input rows (starts Ray, loads no model)."""
    check_environment(cfg)
    try:
        tokenizer = prompt_tokenizer(cfg)
    except OSError as exc:
        raise LipoError(f"cannot load the tokenizer of '{cfg.tokenizer_model}': {exc}".splitlines()[0]) from None
    units = plan_units(resolve_paths(cfg.input.prompts))  # missing files, unreadable Parquet footers: before Ray
    out, resolved, h = OutputDir(cfg.output.dir), cfg.model_dump(mode="json"), identity_hash(cfg)
    status = open_output(out, h, resolved)
    staged = stage_prompts(cfg, resolved, units, out, PromptValidator(cfg, tokenizer))
    finished = out.finished()
    stale = stale_shards(finished, {s.index: s.content_sha for s in staged.shards})
    if stale or (status == "complete" and out.manifest().get("input_digest") != staged.input_digest):
        if stale:
            _say_stale(out, stale)
        forget(out, stale)  # see lipo.lists.manifest: redo the shards whose prompts changed, keep the others
        status = "resume" if status == "complete" else status
        finished = {i: sha for i, sha in finished.items() if i not in stale}
    pending = [s for s in staged.shards if s.index not in finished]
    return Plan(cfg, resolved, h, out, status, staged.shards, pending, staged.report, staged.input_digest)


def _say_stale(out: OutputDir, stale: list[int]) -> None:
    shown = ", ".join(map(str, stale[:8])) + (", ..." if len(stale) > 8 else "")
    print(f"[lipo] {out}: the input prompts changed since {len(stale)} finished shard(s) were built "
          f"({shown}); building them again, keeping the others", flush=True)


def _pool(res: StageResources) -> ActorPoolStrategy:
    return (ActorPoolStrategy(size=res.concurrency) if isinstance(res.concurrency, int)
            else ActorPoolStrategy(min_size=res.concurrency[0], max_size=res.concurrency[1]))


def _map(ds, stage: type, plan: Plan, res):
    # Fault tolerance: Ray Data 2.60 creates pool actors with max_restarts=-1 and max_task_retries=-1 unless told
    # otherwise (ActorPoolMapOperator), so a dead actor is replaced and its block retried; passing them again is
    # deprecated (`ray_remote_args`). tests/workflows/test_build_lists_e2e.py kills a scorer actor to prove it.
    return ds.map_batches(
        stage, fn_constructor_kwargs={"cfg": plan.resolved}, compute=_pool(res),
        # One block = one shard = one call: the actor cuts it into micro-batches of res.batch_size itself, so the
        # grouping into model batches does not depend on how Ray Data bundles blocks (see lipo.lists.stages).
        batch_size=None, batch_format="pyarrow", num_cpus=res.num_cpus, num_gpus=res.num_gpus)


def _io_map(ds, stage: type, kwargs: dict[str, Any], plan: Plan):
    """LoadShard / WriteShard: as many actors as the scorer's pool, so the ends keep pace with the last stage."""
    return ds.map_batches(stage, fn_constructor_kwargs=kwargs, compute=_pool(plan.cfg.resources.score),
                          batch_size=None, batch_format="pyarrow", num_cpus=_IO_CPUS)


def hf_generate(ds, plan: Plan):
    """Generation with lipo's own sampler (`GenerateStage`), one actor pool."""
    return _map(ds, GenerateStage, plan, plan.cfg.resources.generate)


def vllm_generate_stage(ds, plan: Plan):
    return vllm_generate(ds, plan.cfg)


# `generate.engine` -> how the dataset gets its candidates; looked up once per build, in `build_dataset`.
GENERATE_ENGINES: dict[str, Callable[[Any, Plan], Any]] = {"hf": hf_generate, "vllm": vllm_generate_stage}


def build_dataset(plan: Plan):
    cfg = plan.cfg
    ds = ray.data.from_items([descriptor(s) for s in plan.pending], override_num_blocks=len(plan.pending))
    ds = _io_map(ds, LoadShard, {"out": plan.out}, plan)  # one block per shard from here on
    if cfg.generate is not None:
        ds = GENERATE_ENGINES[cfg.generate.engine](ds, plan)
    if cfg.reference is not None:
        ds = _map(ds, ReferenceStage, plan, cfg.resources.reference)
    ds = _map(ds, ScoreStage, plan, cfg.resources.score)
    expected = {s.index: (s.rows, s.ids_sha, s.content_sha) for s in plan.pending}
    return _io_map(ds, WriteShard, {"out": plan.out, "expected": expected}, plan)


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
    """Run the pipeline over the pending shards; the workers write them, the driver counts their records.

    A LipoError raised inside an actor (a user's mistake, e.g. the scoring function's) comes back as a LipoError with
    its one-line message; any other exception (a bug) propagates as it is, traceback and all.
    """
    waiting = {s.index for s in plan.pending}
    done = len(plan.shards) - len(plan.pending)
    bar = tqdm(total=len(plan.shards), initial=done, desc="build-lists: shards written", unit="shard")
    try:
        for batch in build_dataset(plan).iter_batches(batch_size=None, batch_format="pyarrow"):
            for text in batch.column("record").to_pylist():
                record = json.loads(text)
                if record["shard"] not in waiting:  # a late copy from a retried task: same files, same record
                    continue
                waiting.discard(record["shard"])
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
    if waiting:
        raise LipoError(f"build-lists pipeline ended with {len(waiting)} shard(s) incomplete; rerun to resume")


def _models(cfg: BuildListsConfig) -> dict[str, Any]:
    s = cfg.score
    return {"policy": cfg.generate.model if cfg.generate else None, "reference": cfg.reference_model,
            "tokenizer": cfg.tokenizer_model,
            "scorer": {"name": s.name, "model": s.model, "function": s.function,
                       "field": s.field if s.name == "existing" else None}}


def finalize(plan: Plan) -> dict[str, Any]:
    """Check the finished output and write `_manifest.json` (last, atomically); returns the manifest."""
    cfg = plan.cfg
    summary = summarize(plan.out, sum(s.rows for s in plan.shards), len(plan.shards))
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
    plan.out.write_json(MANIFEST_NAME, manifest)
    return manifest


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

