"""The build-lists output directory: part files, resume state and the manifest, on any pyarrow filesystem.

    OUT/part-00000.parquet ...         the lists (LIST_SCHEMA), one file per finished shard: what `lipo train` reads
    OUT/_manifest.json                 written last: schema version, config hash, counts, drops, statistics, models
    OUT/_build/config.json             the resolved config and its identity hash, written when the build starts
    OUT/_build/prompts/unit-00000.parquet  the validated prompts of input unit 0 (one row group per shard)
    OUT/_build/part-00000.json         one record per finished shard (counts, drops, statistics): the resume state

`output.dir` is a local path or a URI (`file:///abs/out`, `s3://bucket/lists`, `gs://...`; see
`lipo.data.files.open_fs`). Names starting with `_` are skipped by `lipo.data.readers`, so `data.train: [OUT]` reads
exactly the lists. On a local filesystem (a path or `file://`) every file goes to a hidden temporary name first and
is renamed into place, so a killed run leaves whole files or none. Object stores have no rename, but a single put
(or a multipart upload, which completes on close) is already atomic, so files are written to their names directly.

A shard counts as finished only once its record exists; the pipeline's writer (`lipo.lists.shards`) writes its part
file first, then its record, under fixed names: a retried or replayed task replaces the same two files, so a prompt
is never two lists. On rerun, unfinished shards are redone from scratch (a part file renamed into place before a
kill is simply replaced).

Input changes (decided in issue 16): every rerun revalidates the input (`lipo.lists.staging`), which gives each
planned shard its `content_sha`, the digest of its prompt rows' CONTENT (text or messages, reference, responses,
the scorer's column, id, seed; `lipo.lists.prompts.content_digest`), computed by the workers, one shard at a time.
Each shard record keeps the `content_sha` it was built from. A finished shard whose digest differs from the plan's,
or that the plan no longer has, is stale (`stale_shards`): the rerun forgets it (`forget`: manifest first, then the
shard's record and part file) and builds it again, while every other finished shard is kept. So editing one
prompt's text under the same id redoes exactly its shard, and a build that was complete becomes a resume of that
shard; inserting a prompt redoes the shards after it (shards are consecutive prompts), appending one redoes only the
last. We redo rather than refuse because the shard layout makes it exact and cheap: a shard's lists depend only on
its own prompts and the config (seeds come from ids), its files have fixed names, and a kill between forgetting and
rebuilding leaves a state the next rerun repairs the same way. A different config (`identity_hash`) is still refused.
Records written before issue 16 have no `content_sha` and are therefore redone once.

`input_digest` (manifest): the hash of the shards' `content_sha` values in shard order. Before issue 16 it hashed
the shards' id digests only, so an edited prompt under the same id went unnoticed ("already complete").

The manifest is computed from the shard records alone (`summarize`): counts and drops add up, statistics merge as
`lipo.lists.stats` describes (quantiles from a bounded sample per shard, exact at small sizes). Completeness is
checked against the Parquet footers of the part files (rows per file), never by reading the lists.

`open_output` refuses an output directory that holds a build of a different config with at least one finished shard
(naming the keys that changed), or a directory with other content. A build that failed before finishing any shard
(say, a scoring function that raised) leaves nothing worth keeping, so a fixed config may take its place.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lipo.config import flatten
from lipo.data.files import open_fs
from lipo.errors import LipoError
from lipo.lists import stats

SCHEMA_VERSION = 1
MANIFEST_NAME = "_manifest.json"
STATE_DIR = "_build"
STAT_KEYS = ("labels", "rewards", "ref_logps", "list_size")
# Keys that may change between a run and its resume (see `lipo.lists.config.identity_hash`).
_NEUTRAL_PREFIXES = ("resources.", "tracking.", "output.dir", "output.sample_rows", "score.max_batch_size")


def _changed_keys(old: dict, new: dict) -> list[str]:
    a, b = flatten(old), flatten(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and not k.startswith(_NEUTRAL_PREFIXES))


class OutputDir:
    """One build's directory on its filesystem; pickles as its spec, so workers reopen it themselves."""

    def __init__(self, spec: str | Path):
        self.spec = str(spec)
        self.fs, self.path = open_fs(self.spec)
        self.path = self.path.rstrip("/")
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        # `root`: what users see and `lipo train` reads (a Path when local, so callers can glob it)
        self.root: Path | str = Path(self.path) if self.local else self.spec.rstrip("/")

    def __reduce__(self):
        return OutputDir, (self.spec,)

    def __str__(self) -> str:
        return str(self.root)

    def _full(self, rel: str) -> str:
        return f"{self.path}/{rel}"

    # -------------------------------------------------------------------------------------------- raw file access

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self._full(rel)).type == pafs.FileType.File

    def read_json(self, rel: str) -> Any:
        with self.fs.open_input_stream(self._full(rel)) as f:
            return json.loads(f.read().decode("utf-8"))

    def names(self, sub: str = "", prefix: str = "", suffix: str = "") -> list[str]:
        """Sorted file names directly under `sub` that start with `prefix` and end with `suffix`."""
        base = self._full(sub) if sub else self.path
        infos = self.fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        return sorted(n for i in infos if (n := i.base_name).startswith(prefix) and n.endswith(suffix)
                      and i.type == pafs.FileType.File)

    def children(self) -> list[str]:
        return [i.base_name for i in self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))]

    @contextlib.contextmanager
    def open_write(self, rel: str) -> Iterator[pa.NativeFile]:
        """A stream that becomes `rel` whole on success (rename on local filesystems, one put on object stores)."""
        final = self._full(rel)
        self.fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
        if not self.local:
            with self.fs.open_output_stream(final) as stream:
                yield stream
            return
        head, name = final.rsplit("/", 1)
        tmp = f"{head}/.{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            with self.fs.open_output_stream(tmp) as stream:
                yield stream
            self.fs.move(tmp, final)
        finally:
            if self.fs.get_file_info(tmp).type == pafs.FileType.File:
                self.fs.delete_file(tmp)

    def write_json(self, rel: str, obj: Any) -> None:
        with self.open_write(rel) as s:
            s.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))

    def delete(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.delete_file(self._full(rel))

    # -------------------------------------------------------------------------------------------- build layout

    @staticmethod
    def part_name(shard: int) -> str:
        return f"part-{shard:05d}.parquet"

    @staticmethod
    def record_name(shard: int) -> str:
        return f"{STATE_DIR}/part-{shard:05d}.json"

    @staticmethod
    def staged_name(unit: int) -> str:
        return f"{STATE_DIR}/prompts/unit-{unit:05d}.parquet"

    def staged_file(self, unit: int) -> pq.ParquetFile:
        return pq.ParquetFile(self.fs.open_input_file(self._full(self.staged_name(unit))))

    def manifest(self) -> dict | None:
        return self.read_json(MANIFEST_NAME) if self.exists(MANIFEST_NAME) else None

    def record_files(self) -> list[str]:
        return self.names(STATE_DIR, "part-", ".json")

    def records(self) -> Iterator[dict[str, Any]]:
        """The finished shards' records, one at a time (the driver never holds them all)."""
        for name in self.record_files():
            yield self.read_json(f"{STATE_DIR}/{name}")

    def finished(self) -> dict[int, str | None]:
        """content_sha of each finished shard, by shard index (None for a record from before issue 16)."""
        return {r["shard"]: r.get("content_sha") for r in self.records()}

    def part_rows(self) -> dict[str, int]:
        """Rows of every part file, from its Parquet footer."""
        return {n: pq.ParquetFile(self.fs.open_input_file(self._full(n))).metadata.num_rows
                for n in self.names("", "part-", ".parquet")}


def open_output(out: OutputDir, cfg_hash: str, resolved: dict) -> str:
    """'new', 'resume' or 'complete' for this config; raises LipoError if the directory holds something else."""
    key, started = "output.dir", f"{STATE_DIR}/config.json"
    manifest = out.manifest()
    if manifest is not None or out.exists(started):
        previous = manifest if manifest is not None else out.read_json(started)
        if previous["config_hash"] != cfg_hash and manifest is None and not out.record_files():
            out.delete(started)  # the other config never finished a shard: nothing to keep, start this one afresh
            return open_output(out, cfg_hash, resolved)
        if previous["config_hash"] != cfg_hash:
            changed = ", ".join(_changed_keys(previous["config"], resolved)) or "model or library defaults"
            raise LipoError(f"{key} {out} holds a build of a different config (changed: {changed}); "
                            f"use another {key}, or delete it to start over")
        return "complete" if manifest is not None else "resume"
    if any(n != STATE_DIR for n in out.children()):
        raise LipoError(f"{key} {out} is not empty and holds no build-lists state; choose an empty directory")
    out.write_json(started, {"config_hash": cfg_hash, "config": resolved})
    return "new"


def stale_shards(finished: dict[int, str | None], planned: dict[int, str]) -> list[int]:
    """Finished shards to build again: their prompts' content digest differs from the plan's, or the plan no longer
    has them (fewer prompts than before). `planned`: content_sha by shard index."""
    return sorted(i for i, sha in finished.items() if planned.get(i) != sha)


def forget(out: OutputDir, stale: list[int]) -> None:
    """Make the stale shards unfinished: the manifest goes first (the directory stops claiming to be complete), then
    each shard's record (it stops counting as finished), then its part file (no stale list is left to read)."""
    out.delete(MANIFEST_NAME)
    for i in stale:
        out.delete(out.record_name(i))
        out.delete(out.part_name(i))


def summarize(out: OutputDir, n_prompts: int, n_shards: int) -> dict[str, Any]:
    """Counts and statistics of the finished dataset from the shard records, checked against the part files'
    footers: every prompt is one list or one counted drop, every part file holds exactly its record's lists."""
    totals: Counter = Counter()
    dropped: Counter = Counter()
    events: Counter = Counter()
    merged = {k: stats.Merged() for k in STAT_KEYS}
    expected: dict[str, int] = {}
    for r in out.records():
        totals.update({k: r[k] for k in ("prompts", "lists", "candidates", "lists_all_tied")})
        totals["shards"] += 1
        dropped.update(r["dropped_lists"])
        events.update(r["events"])
        for k in STAT_KEYS:
            merged[k].add(r["stats"][k])
        if r["lists"]:
            expected[out.part_name(r["shard"])] = r["lists"]
    found = out.part_rows()
    if found != expected or totals["prompts"] != n_prompts or totals["shards"] != n_shards:
        raise LipoError(f"output.dir {out}: the part files hold {sum(found.values())} lists in {len(found)} files "
                        f"but the shard records say {sum(expected.values())} in {len(expected)}; delete the "
                        "directory and rebuild")
    return {
        "counts": {"prompts": n_prompts, "lists": totals["lists"], "candidates": totals["candidates"],
                   "shards": n_shards, "files": len(found),
                   "lists_all_tied": totals["lists_all_tied"]},  # no preference signal
        "dropped_lists": dict(sorted(dropped.items())),
        "events": dict(sorted(events.items())),
        # statistics over all candidates (list_size: over lists)
        **{k: stats.describe(merged[k]) for k in STAT_KEYS},
        "files": sorted(found),
    }


def sample_rows(out: OutputDir, files: list[str], n: int) -> list[dict[str, Any]]:
    """The first `n` lists, flattened to one row per candidate: a small table to eyeball in MLflow."""
    rows: list[dict[str, Any]] = []
    for f in files:
        for lst in pq.read_table(out.fs.open_input_file(out._full(f))).to_pylist():
            if len({r["id"] for r in rows}) >= n:
                return rows
            prompt = lst["prompt"] if lst["prompt"] is not None else json.dumps(lst["prompt_messages"])
            for k, resp in enumerate(lst["responses"]):
                rows.append({"id": lst["id"], "prompt": prompt, "response": resp, "label": lst["labels"][k],
                             "reward": (lst["rewards"] or [None] * (k + 1))[k],
                             "ref_logp": (lst["ref_logps"] or [None] * (k + 1))[k]})
    return rows

