"""The tokenised training rows: built once by a distributed Ray Data pass, cached as Arrow files that every worker
memory-maps.

    cache = token_cache(task, tokenizer)    # driver: reuse `<cache dir>/tokens-<key>/`, or build it once
    rows = TokenRows(cache.path)            # worker: memory-mapped, nothing read yet
    items = rows.take([7, 2, 9])            # the lists the plan assigns this micro-batch, as plain dicts

Building: the driver plans read units (`lipo.data.files`: a JSONL file, or Parquet row groups; footers only) and
`lipo.data.distributed.map_units` runs `TokenizeUnit` on a pool of Ray Data actors, one per CPU by default
(`data.tokenize_workers`). Each actor validates its unit with the task's row validator, tokenises it in chunks of a
few thousand rows (`task.tokenize`), and writes each chunk as `part-<unit>-<chunk>.arrow`. Only counts, the skip
report and one 16-byte hash per valid id come back to the driver, which checks ids across units
(`drop_duplicates`) and writes `meta.json` last: the cache exists once its meta does, so a crash never leaves a
half-built cache that a later run would trust. A retried task rewrites the same part names.

The key is a hash of what decides the rows: the stage, its `data` section (but not `tokenize_workers`) and `reward`
section, each input file's name, size and modification time (a cheap digest that needs no read; a rewrite with
the same size and mtime is not detected), and the tokenizer's fingerprint (its vocabulary, chat template and
special tokens). A rerun, a resumed run or a later stage on the same data reuses the cache; an edited file, another
tokenizer or other truncation limits build a new one. Drop and truncation counts live in `meta.json`, so a reused
cache logs the same metrics (`data/tokenize_seconds` is the time the cache took to build). Old caches are not
cleaned up.

Where: `data.cache_dir`, by default `<output_dir>/.cache`: a path every node sees, or an object-store URI
(`lipo.storage`). Workers memory-map the files: from a shared path directly, from a bucket after one copy per node
to local disk (`LIPO_LOCAL_CACHE`, default `<tmp>/lipo-token-cache`). The operating system shares the mapped pages
between the workers of one node, and a worker reads only the rows of its micro-batches (`lipo.training.plan`).
Token ids are stored as int32.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from lipo import storage
from lipo.data.distributed import drop_duplicates, id_hashes, map_units
from lipo.data.files import DataFile, ReadUnit, plan_units, resolve_paths
from lipo.data.readers import ReadReport, read_unit
from lipo.errors import DataError, LipoError
from lipo.training.plan import row_tokens
from lipo.training.tasks import Task

FORMAT = 2  # bump when the file layout changes
# A cache on object storage is copied once per node to local disk (memory-mapping needs a file); the copy is keyed,
# like the cache, by its content's hash, so a stale copy is never read.
LOCAL_COPIES = Path(os.environ.get("LIPO_LOCAL_CACHE", Path(tempfile.gettempdir()) / "lipo-token-cache"))


@dataclass(frozen=True)
class TokenCache:
    path: str  # the cache directory (meta.json and the part files): a local path or a URI
    rows: int
    has_ref: bool  # every row carries reference log-probs (no reference model needed)
    metrics: dict[str, float]
    summary: str
    reused: bool


def tokenizer_fingerprint(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    blob = json.dumps([vocab, getattr(tokenizer, "chat_template", None), tokenizer.eos_token_id,
                       tokenizer.bos_token_id, tokenizer.pad_token_id], default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_key(task: Task, files: list[DataFile], tokenizer) -> str:
    cfg = task.cfg
    reward = getattr(cfg, "reward", None)
    what = {"format": FORMAT, "stage": task.stage, "data": cfg.data.model_dump(mode="json", exclude={
        "tokenize_workers", "cache_dir"}), "files": [[f.name, f.size, f.mtime_ns] for f in files],
        "reward": reward.model_dump(mode="json") if reward is not None else None,
        "tokenizer": tokenizer_fingerprint(tokenizer)}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def cache_dir(cfg) -> str:
    return storage.join(cfg.data.cache_dir or storage.join(cfg.output_dir, ".cache"))


def _int32_ids(table: pa.Table) -> pa.Table:
    """Token-id columns (`*_ids`) as int32: half the bytes of Python's int64, and every vocabulary fits."""
    for i, f in enumerate(table.schema):
        if f.name.endswith("_ids"):
            target = pa.list_(pa.int32()) if pa.types.is_integer(f.type.value_type) else pa.list_(pa.list_(pa.int32()))
            table = table.set_column(i, f.name, table.column(i).cast(target))
    return table


def _write_arrow(table: pa.Table, spec: str) -> None:
    """Atomically, under a fixed name: a retried task replaces the same file, never adds a second copy."""
    path = storage.local(spec)
    if path is None:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=4096)
        return storage.write_bytes(spec, sink.getvalue().to_pybytes())
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=4096)
    os.replace(tmp, path)


class TokenizeUnit:
    """A Ray Data actor: validate and tokenise one read unit, write its rows, return its counts and id hashes."""

    def __init__(self, task: Task, tokenizer, out: str):
        self.task, self.tokenizer, self.out = task, tokenizer, out

    def __call__(self, index: int, unit: ReadUnit) -> dict:
        report, counts, parts, hashes, kept = ReadReport(), Counter(), [], [], []
        has_ref = True
        to_row, schema = self.task.source
        for chunk, table in enumerate(read_unit(unit, to_row, schema, self.task.cfg.data.on_invalid, report)):
            ids = table.column("id").to_pylist()
            rows, c = self.task.tokenize(table.to_pylist(), self.tokenizer)
            counts.update(c)
            hashes.append(id_hashes(ids))
            kept.append(_kept_mask(ids, [r["id"] for r in rows]))
            if rows:
                has_ref = has_ref and all(r.get("ref_logps") is not None for r in rows)
                name = f"part-{index:06d}-{chunk:05d}.arrow"
                _write_arrow(_int32_ids(pa.Table.from_pylist(rows)), storage.join(self.out, name))
                parts.append([name, len(rows)])
        return {"report": report.to_json(), "counts": dict(counts), "parts": parts, "has_ref": has_ref,
                "id_hashes": np.concatenate(hashes) if hashes else id_hashes([]),
                "kept": np.concatenate(kept) if kept else np.zeros(0, bool)}


def _kept_mask(ids: list[str], kept_ids: list[str]) -> np.ndarray:
    """[valid rows] True where tokenisation kept the row (it keeps rows in order, so one walk pairs them)."""
    mask, j = np.zeros(len(ids), bool), 0
    for i, rid in enumerate(ids):
        if j < len(kept_ids) and kept_ids[j] == rid:
            mask[i], j = True, j + 1
    return mask


def token_cache(task: Task, tokenizer) -> TokenCache:
    """The task's tokenised rows on disk: reused when the key matches, else built by a distributed pass."""
    cfg = task.cfg
    files = resolve_paths(cfg.data.train)
    root = storage.join(cache_dir(cfg), f"tokens-{cache_key(task, files, tokenizer)}")
    if (text := storage.read_text(storage.join(root, "meta.json"))) is not None:
        meta = json.loads(text)
        return TokenCache(root, meta["rows"], meta["has_ref"], meta["metrics"], meta["summary"], True)
    t0 = time.perf_counter()
    units = plan_units(files)
    if (path := storage.local(root)) is not None:
        path.mkdir(parents=True, exist_ok=True)
    records = map_units(units, TokenizeUnit, {"task": task, "tokenizer": tokenizer, "out": root},
                        workers=cfg.data.tokenize_workers, desc=f"{task.stage}: tokenise")
    report, counts = ReadReport(), Counter()
    for r in records:
        report.merge(ReadReport.from_json(r["report"]))
        counts.update(r["counts"])
    dropped = drop_duplicates(units, [r["id_hashes"] for r in records], task.source, cfg.data.on_invalid, report)
    exclude = _cache_positions(records, dropped)
    rows = sum(n for r in records for _, n in r["parts"]) - len(exclude)
    metrics = {**report.as_metrics(), **counts, "data/tokenize_seconds": time.perf_counter() - t0}
    summary = f"{report.summary()}; tokenised: " + ", ".join(
        f"{k.removeprefix('data/')}={int(v)}" for k, v in sorted(counts.items()))
    if rows <= 0:
        if (path := storage.local(root)) is not None:
            shutil.rmtree(path, ignore_errors=True)
        if report.rows_valid == 0:
            first = report.first_errors[0] if report.first_errors else ""
            raise DataError(f"no valid rows: {report.summary()}; first error: {first}")
        raise LipoError(f"no usable rows left in {cfg.data.train} ({summary})")
    meta = {"format": FORMAT, "rows": rows, "has_ref": all(r["has_ref"] for r in records), "metrics": metrics,
            "summary": summary, "parts": [p for r in records for p in r["parts"]], "exclude": exclude}
    storage.write_bytes(storage.join(root, "meta.json"), json.dumps(meta, indent=1).encode())  # last: complete
    return TokenCache(root, rows, meta["has_ref"], metrics, summary, False)


def _cache_positions(records: list[dict], dropped: list[tuple[int, int]]) -> list[int]:
    """Cache row positions of the dropped duplicates that tokenisation had kept (units' rows concatenated)."""
    offsets = np.cumsum([0] + [int(r["kept"].sum()) for r in records])
    out = []
    for u, k in dropped:
        kept = records[u]["kept"]
        if kept[k]:
            out.append(int(offsets[u] + kept[:k].sum()))
    return sorted(out)


class TokenRows:
    """Random access into the cached rows; nothing is read until `take`."""

    def __init__(self, path: str | Path):
        root = storage.local(path) or storage.download_dir(str(path), LOCAL_COPIES / Path(str(path)).name)
        meta = json.loads((root / "meta.json").read_text())
        tables = [pa.ipc.open_file(pa.memory_map(str(root / name), "r")).read_all() for name, _ in meta["parts"]]
        # zero-copy: pages load on use; `default` promotion unifies an all-null column with its typed copies
        self.table = pa.concat_tables(tables, promote_options="default")
        self.index = (np.delete(np.arange(self.table.num_rows), meta["exclude"]) if meta["exclude"] else None)
        # `Table.take` concatenates a column's chunks first, copying the whole data set into memory: take from
        # each record batch instead.
        self.batches = self.table.to_batches()
        self.starts = np.cumsum([0] + [b.num_rows for b in self.batches])  # [batches + 1]

    def __len__(self) -> int:
        return self.table.num_rows if self.index is None else int(self.index.size)

    def tokens(self) -> np.ndarray:
        """[len(self)] token ids per row (`lipo.training.plan.row_tokens`), for token-budget batching."""
        counts = row_tokens(self.table)
        return counts if self.index is None else counts[self.index]

    def take(self, indices: list[int]) -> list[dict]:
        """The rows at `indices`, in that order, as plain dicts; only their record batches are touched."""
        rows = np.asarray(indices if self.index is None else self.index[indices], dtype=np.int64)  # [n]
        batch = np.searchsorted(self.starts, rows, side="right") - 1  # [n]
        out: list[dict] = [{}] * len(rows)
        for b in np.unique(batch).tolist():
            at = np.flatnonzero(batch == b)
            for i, row in zip(at.tolist(), self.batches[b].take(pa.array(rows[at] - self.starts[b])).to_pylist()):
                out[i] = row
        return out
