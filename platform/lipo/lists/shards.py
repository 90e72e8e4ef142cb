"""Both ends of the build-lists dataset: loading a shard's prompts, and writing its lists and record.

    ds = ray.data.from_items(descriptors(pending), override_num_blocks=len(pending))   # one small row per shard
    ds = ds.map_batches(LoadShard, fn_constructor_kwargs={"out": out}, ...)   # -> the shard's WORK_SCHEMA rows
    ... generate -> reference -> score (lipo.lists.stages) ...
    ds = ds.map_batches(WriteShard, fn_constructor_kwargs={"out": out, "expected": ...}, ...)   # -> {"record"}

Only descriptors go in and only records (a few KB each, JSON) come out; the prompts and lists stay in the workers.
The invariant of every stage, one block = one shard = one call, is checked at both ends: `LoadShard` refuses a block
of several descriptors and `WriteShard` refuses a block that is not exactly one complete shard (its ids in order
must hash to the planned `ids_sha`), each with a RuntimeError, since either would be a bug, not a user's mistake.

`WriteShard` writes the part file (the kept lists, validated against the list contract), then the shard's record
(`shard_record`: counts, drops, events, mergeable statistics), both under fixed names and atomically
(`lipo.lists.manifest.OutputDir`). A task that Ray retries, or one that died between the two writes, therefore
replaces the same files: a prompt can never become two lists.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lipo.data.records import LIST_SCHEMA, record_to_row, row_to_record
from lipo.lists import stats
from lipo.lists.manifest import OutputDir
from lipo.lists.prompts import Shard, ids_digest
from lipo.lists.staging import read_shard
from lipo.lists.stages import work_table

_LIST_COLUMNS = ("id", "prompt", "prompt_messages", "responses", "labels", "rewards", "ref_logps")


def descriptor(shard: Shard) -> dict[str, Any]:
    return {"shard": shard.index, "unit": shard.unit, "row_group": shard.row_group, "skip": list(shard.skip),
            "rows": shard.rows, "ids_sha": shard.ids_sha}


class LoadShard:
    """The first map: one shard descriptor -> the shard's prompt rows as the pipeline's input block."""

    def __init__(self, out: OutputDir):
        self.out = out

    def __call__(self, batch: pa.Table) -> pa.Table:
        if batch.num_rows != 1:
            raise RuntimeError(f"LoadShard got {batch.num_rows} shard descriptors in one block; expected one")
        d = batch.to_pylist()[0]
        shard = Shard(d["shard"], d["ids_sha"], d["rows"], d["unit"], d["row_group"], tuple(d["skip"]))
        return work_table(shard.index, read_shard(self.out, shard))


def shard_record(index: int, ids_sha: str, rows: list[dict[str, Any]], content_sha: str = "") -> dict[str, Any]:
    """What one shard's rows (kept or dropped) add to the manifest: counts, drops by reason, events (truncations,
    candidate drops), lists with every label tied, and each statistic's mergeable summary (`lipo.lists.stats`); and
    the digest of the prompts it was built from (`content_sha`), which a rerun compares."""
    kept = [r for r in rows if r["drop"] is None]

    def flat(column: str) -> list[float]:
        return [x for r in kept if r[column] is not None for x in r[column]]

    return {"shard": index, "ids_sha": ids_sha, "content_sha": content_sha, "prompts": len(rows), "lists": len(kept),
            "candidates": sum(len(r["responses"]) for r in kept),
            "lists_all_tied": sum(1 for r in kept if len(set(r["labels"])) == 1),  # no preference signal
            "dropped_lists": dict(Counter(r["drop"] for r in rows if r["drop"] is not None)),
            "events": dict(Counter(e for r in rows for e in r["events"])),
            "stats": {"labels": stats.partial(flat("labels")), "rewards": stats.partial(flat("rewards")),
                      "ref_logps": stats.partial(flat("ref_logps")),
                      "list_size": stats.partial([len(r["labels"]) for r in kept])}}


class WriteShard:
    """The last map: one complete shard's rows -> its part file and record, written here; one record row out."""

    def __init__(self, out: OutputDir, expected: dict[int, tuple[int, str, str]]):
        self.out, self.expected = out, expected  # shard index -> (prompts, ids_sha, content_sha)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        index = self.check(rows)
        _, ids_sha, content_sha = self.expected[index]
        record = shard_record(index, ids_sha, rows, content_sha)
        self.write(index, [r for r in rows if r["drop"] is None], record)
        return pa.table({"record": [json.dumps(record)]})

    def check(self, rows: list[dict[str, Any]]) -> int:
        """The shard index of `rows`, which must be exactly one planned shard, complete and in order."""
        found = sorted({r["shard"] for r in rows})
        if len(found) != 1 or found[0] not in self.expected:
            raise RuntimeError(f"WriteShard got a block of shards {found}; expected exactly one planned shard")
        n, sha, _ = self.expected[found[0]]
        if len(rows) != n or ids_digest([r["id"] for r in rows]) != sha:
            raise RuntimeError(f"WriteShard got {len(rows)} rows for shard {found[0]}, not its {n} planned prompts")
        return found[0]

    def write(self, index: int, kept: list[dict[str, Any]], record: dict[str, Any]) -> None:
        """The shard's lists, then its record: the order resume relies on."""
        part = self.out.part_name(index)
        if kept:
            table = pa.Table.from_pylist([record_to_row(row_to_record({k: r[k] for k in _LIST_COLUMNS}))
                                          for r in kept], schema=LIST_SCHEMA)
            with self.out.open_write(part) as stream:
                pq.write_table(table, stream)
        else:
            self.out.delete(part)  # every list of this shard was dropped: no file, the record says so
        self.out.write_json(self.out.record_name(index), record)
