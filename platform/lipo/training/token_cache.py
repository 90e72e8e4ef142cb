"""The tokenised training rows, cached on disk as one Arrow IPC file that every worker memory-maps.

    cache = token_cache(task, tokenizer)    # driver: reuse `<output_dir>/.cache/tokens-<key>/`, or build it once
    rows = TokenRows(cache.path)            # worker: memory-mapped, nothing read yet
    items = rows.take([7, 2, 9])            # the lists the plan assigns this micro-batch, as plain dicts

The key is a hash of what decides the rows: the stage, its `data` section (and `reward` section), each input file's
path, size and modification time, and the tokenizer's fingerprint (its vocabulary and chat template). A rerun, a
resumed run or another run on the same data reuses the file; an edited file, another tokenizer or other truncation
limits build a new one. The drop and truncation counts are stored beside it (`meta.json`), so a reused cache logs
the same metrics.

Why a memory-mapped file: a worker reads only the rows its plan gives it (`lipo.training.plan`), one micro-batch at
a time, so no worker holds the data set as Python objects; the operating system shares the mapped pages between
the workers of one node. The file is written next to the run's outputs, so on a multi-node cluster it lives on the
shared storage that `output_dir` must be (`lipo.runtime.check_shared_storage`). The rows are still read and
tokenised on the driver, once per key.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from lipo.data.readers import resolve_paths
from lipo.errors import LipoError
from lipo.training.tasks import Task

FORMAT = 1  # bump when the file layout changes


@dataclass(frozen=True)
class TokenCache:
    path: Path  # rows.arrow
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


def cache_key(task: Task, tokenizer) -> str:
    cfg = task.cfg
    files = []
    for path in resolve_paths(cfg.data.train):
        st = os.stat(path)
        files.append([os.path.realpath(path), st.st_size, st.st_mtime_ns])
    reward = getattr(cfg, "reward", None)
    what = {"format": FORMAT, "stage": task.stage, "data": cfg.data.model_dump(mode="json"), "files": files,
            "reward": reward.model_dump(mode="json") if reward is not None else None,
            "tokenizer": tokenizer_fingerprint(tokenizer)}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def token_cache(task: Task, tokenizer) -> TokenCache:
    """The task's tokenised rows on disk: reused when the key matches, else built with `task.rows` and written
    atomically (a crash never leaves a half-written cache that a later run would trust)."""
    root = Path(task.cfg.output_dir).expanduser().resolve() / ".cache" / f"tokens-{cache_key(task, tokenizer)}"
    meta_file = root / "meta.json"
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        return TokenCache(root / "rows.arrow", meta["rows"], meta["has_ref"], meta["metrics"], meta["summary"], True)
    rows, metrics, summary = task.rows(tokenizer)
    if not rows:
        raise LipoError(f"no usable rows left in {task.cfg.data.train} ({summary})")
    has_ref = all(r.get("ref_logps") is not None for r in rows)
    table = pa.Table.from_pylist(rows)
    del rows
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    with pa.OSFile(str(tmp / "rows.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=4096)
    meta = {"rows": table.num_rows, "has_ref": has_ref, "metrics": metrics, "summary": summary}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    try:
        tmp.rename(root)
    except OSError:  # another run built the same cache meanwhile: theirs is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
    return TokenCache(root / "rows.arrow", meta["rows"], has_ref, metrics, summary, False)


class TokenRows:
    """Random access into the cached rows; nothing is read until `take`."""

    def __init__(self, path: str | Path):
        self.table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()  # zero-copy: pages load on use

    def __len__(self) -> int:
        return self.table.num_rows

    def take(self, indices: list[int]) -> list[dict]:
        return self.table.take(indices).to_pylist()
