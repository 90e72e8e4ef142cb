"""The build-lists output directory: part files, resume state and the manifest, all written atomically.

    OUT/part-00000.parquet ...   the lists (LIST_SCHEMA), one file per finished shard: what `lipo train` reads
    OUT/_manifest.json           written last: schema version, config hash, counts, drops, statistics, models
    OUT/_build/config.json       the resolved config and its identity hash, written when the build starts
    OUT/_build/part-00000.json   one record per finished shard (prompts, lists, drops): the resume state

Names starting with `_` are skipped by `lipo.data.readers` (the Spark `_SUCCESS` convention), so `data.train:
[OUT]` reads exactly the lists. Every file goes to a hidden temporary name first and is renamed into place, so a
killed run leaves whole files or none. A shard counts as finished only once its record exists (written after its
part file); on rerun, finished shards are skipped, unfinished ones are redone from scratch (their part file, if one
was renamed into place before the kill, is simply replaced), which gives exactly one list per prompt.

`open_output` refuses an output directory that holds a build of a different config with at least one finished shard
(naming the keys that changed), or a directory with other content. A build that failed before finishing any shard
(say, a scoring function that raised) leaves nothing worth keeping, so a fixed config may take its place.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lipo.config import flatten
from lipo.data.records import LIST_SCHEMA, record_to_row, row_to_record
from lipo.errors import LipoError
from lipo.lists.prompts import Shard

SCHEMA_VERSION = 1
MANIFEST_NAME = "_manifest.json"
STATE_DIR = "_build"
# Keys that may change between a run and its resume (see `lipo.lists.config.identity_hash`).
_NEUTRAL_PREFIXES = ("resources.", "tracking.", "output.dir", "output.sample_rows")


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, obj: Any) -> None:
    _atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8"))


def _changed_keys(old: dict, new: dict) -> list[str]:
    a, b = flatten(old), flatten(new)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and not k.startswith(_NEUTRAL_PREFIXES))
    return keys


class OutputDir:
    def __init__(self, path: str | Path):
        self.root = Path(path).expanduser().resolve()
        self.state = self.root / STATE_DIR
        self.manifest_path = self.root / MANIFEST_NAME

    def part_path(self, shard: int) -> Path:
        return self.root / f"part-{shard:05d}.parquet"

    def record_path(self, shard: int) -> Path:
        return self.state / f"part-{shard:05d}.json"

    def manifest(self) -> dict | None:
        return json.loads(self.manifest_path.read_text(encoding="utf-8")) if self.manifest_path.is_file() else None

    def finished(self) -> dict[int, dict]:
        """Records of finished shards, by shard index."""
        if not self.state.is_dir():
            return {}
        return {r["shard"]: r for r in (json.loads(p.read_text(encoding="utf-8"))
                                        for p in sorted(self.state.glob("part-*.json")))}

    def write_shard(self, shard: Shard, rows: list[dict[str, Any]], record: dict[str, Any]) -> None:
        """The shard's lists (validated against the list contract), then its record: the order resume relies on."""
        part = self.part_path(shard.index)
        if rows:
            table = pa.Table.from_pylist([record_to_row(row_to_record(r)) for r in rows], schema=LIST_SCHEMA)
            _atomic_write(part, lambda p: pq.write_table(table, p))
        else:
            part.unlink(missing_ok=True)  # every list of this shard was dropped: no file, the record says so
        write_json(self.record_path(shard.index), record)


def open_output(out: OutputDir, cfg_hash: str, resolved: dict, input_digest: str) -> str:
    """'new', 'resume' or 'complete' for this config; raises LipoError if the directory holds something else."""
    key = "output.dir"
    manifest = out.manifest()
    started = out.state / "config.json"
    if manifest is not None or started.is_file():
        previous = manifest if manifest is not None else json.loads(started.read_text(encoding="utf-8"))
        if previous["config_hash"] != cfg_hash and manifest is None and not out.finished():
            started.unlink()  # the other config never finished a shard: nothing to keep, start this one afresh
            return open_output(out, cfg_hash, resolved, input_digest)
        if previous["config_hash"] != cfg_hash:
            changed = ", ".join(_changed_keys(previous["config"], resolved)) or "model or library defaults"
            raise LipoError(f"{key} {out.root} holds a build of a different config (changed: {changed}); "
                            f"use another {key}, or delete it to start over")
        if manifest is not None:
            if manifest.get("input_digest") != input_digest:
                raise LipoError(f"{key} {out.root} holds a finished build of different input prompts; "
                                f"use another {key}, or delete it to start over")
            return "complete"
        return "resume"
    if out.root.exists() and any(p.name != STATE_DIR for p in out.root.iterdir()):
        raise LipoError(f"{key} {out.root} is not empty and holds no build-lists state; choose an empty directory")
    out.state.mkdir(parents=True, exist_ok=True)
    write_json(started, {"config_hash": cfg_hash, "config": resolved})
    return "new"


def check_resumable(finished: dict[int, dict], shards: list[Shard], root: Path) -> None:
    """A finished shard must still hold the same prompts: otherwise the input changed under a half-built output."""
    by_index = {s.index: s for s in shards}
    for i, record in finished.items():
        if i not in by_index or by_index[i].ids_sha != record["ids_sha"]:
            raise LipoError(f"output.dir {root}: the input prompts changed since shard {i} was built; "
                            "use another output.dir, or delete it to start over")


def describe(values: list[float]) -> dict[str, float]:
    """Summary statistics for the manifest and MLflow (empty input gives count 0 only)."""
    if not values:
        return {"count": 0}
    a = np.asarray(values, dtype=np.float64)
    q = np.quantile(a, [0.05, 0.5, 0.95])
    return {"count": int(a.size), "mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()),
            "p05": float(q[0]), "p50": float(q[1]), "p95": float(q[2]), "max": float(a.max())}


def shard_record(shard: Shard, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What one shard's rows add to the manifest: counts, drops by reason, events (truncations, candidate drops)."""
    kept = [r for r in rows if r["drop"] is None]
    return {"shard": shard.index, "ids_sha": shard.ids_sha, "prompts": len(rows), "lists": len(kept),
            "candidates": sum(len(r["responses"]) for r in kept),
            "dropped_lists": dict(Counter(r["drop"] for r in rows if r["drop"] is not None)),
            "events": dict(Counter(e for r in rows for e in r["events"]))}


def summarize(out: OutputDir, shards: list[Shard], records: dict[int, dict]) -> dict[str, Any]:
    """Counts and statistics of the finished dataset, checked: every prompt is one list or one counted drop."""
    files = sorted(p.name for p in out.root.glob("part-*.parquet"))
    paths = [str(out.root / f) for f in files]
    table = pq.read_table(paths, schema=LIST_SCHEMA) if files else LIST_SCHEMA.empty_table()
    ids = table.column("id").to_pylist()
    n_lists = sum(r["lists"] for r in records.values())
    n_prompts = sum(s.table.num_rows for s in shards)
    if len(ids) != len(set(ids)) or len(ids) != n_lists or sum(r["prompts"] for r in records.values()) != n_prompts:
        raise LipoError(f"output.dir {out.root}: the part files hold {len(ids)} lists ({len(set(ids))} distinct ids) "
                        f"but the shard records say {n_lists}; delete the directory and rebuild")
    labels = table.column("labels").to_pylist()
    dropped: Counter = Counter()
    events: Counter = Counter()
    for r in records.values():
        dropped.update(r["dropped_lists"])
        events.update(r["events"])

    def flat(column: str) -> list[float]:
        return [x for v in table.column(column).to_pylist() if v is not None for x in v]

    return {
        "counts": {"prompts": n_prompts, "lists": n_lists, "candidates": sum(r["candidates"] for r in records.values()),
                   "shards": len(shards), "files": len(files),
                   "lists_all_tied": sum(1 for v in labels if len(set(v)) == 1)},  # no preference signal
        "dropped_lists": dict(sorted(dropped.items())),
        "events": dict(sorted(events.items())),
        # statistics over all candidates (list_size: over lists)
        "labels": describe(flat("labels")), "rewards": describe(flat("rewards")),
        "ref_logps": describe(flat("ref_logps")), "list_size": describe([len(v) for v in labels]),
        "files": files,
    }


def sample_rows(out: OutputDir, files: list[str], n: int) -> list[dict[str, Any]]:
    """The first `n` lists, flattened to one row per candidate: a small table to eyeball in MLflow."""
    rows: list[dict[str, Any]] = []
    for f in files:
        for lst in pq.read_table(out.root / f).to_pylist():
            if len({r["id"] for r in rows}) >= n:
                return rows
            prompt = lst["prompt"] if lst["prompt"] is not None else json.dumps(lst["prompt_messages"])
            for k, resp in enumerate(lst["responses"]):
                rows.append({"id": lst["id"], "prompt": prompt, "response": resp, "label": lst["labels"][k],
                             "reward": (lst["rewards"] or [None] * (k + 1))[k],
                             "ref_logp": (lst["ref_logps"] or [None] * (k + 1))[k]})
    return rows
