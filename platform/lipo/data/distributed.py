"""Distributed passes over read units: one Ray Data task per unit, and only a small record back to the driver.

    records = map_units(units, TokenizeUnit, {"task": task, "out": tmp}, workers=None, desc="tokenise")
    dropped = drop_duplicates(units, [r["id_hashes"] for r in records], source, on_invalid, report)

`map_units` runs `worker_cls(**kwargs)` in a pool of Ray Data actors (so a tokenizer or model loads once per actor,
not once per unit) and calls `worker(index, unit) -> dict` for every `lipo.data.files.ReadUnit`. The worker writes
whatever is big (tokenised rows, a shard of lists) to storage itself and returns a record of counts and digests.
The records come back in unit order whatever order the tasks finished in. The driver therefore holds the plan (the
units), the records and nothing else: its memory grows with the number of units and, for the duplicate check, by
16 bytes per row (one id hash).

Errors: a `LipoError` raised by a worker (a bad row under `on_invalid: error`, a scoring function's own message) is
returned in the record and raised again on the driver as it is (a one-line error), never as a stack trace from
inside Ray. Any other exception is a bug and keeps Ray's traceback. Ray Data retries a task
whose actor died; a worker must therefore write idempotently (same name, atomic rename).

Why actors over `map_batches` rather than Ray Data's `read_json` / `read_parquet`: those lose the file's row numbers
once blocks are split and fused, and lipo's errors name the file, row and field. Here Ray Data still schedules,
retries and streams; the unit only fixes where a task starts reading (`lipo.data.files`).
Tests: tests/lipo/data/test_distributed.py.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from lipo.data.files import ReadUnit
from lipo.data.readers import MAX_FIRST_ERRORS, ReadReport, valid_row_number
from lipo.errors import DataError, LipoError


class UnitWorker(Protocol):
    def __call__(self, index: int, unit: ReadUnit) -> dict[str, Any]: ...


class _Actor:
    """The Ray Data callable: one row per unit in, one pickled record out."""

    def __init__(self, worker_cls: type, kwargs: dict[str, Any], units: list[ReadUnit]):
        self.worker: UnitWorker = worker_cls(**kwargs)
        self.units = units

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = []
        for i in batch["unit"].tolist():
            out.append(pickle.dumps(_run(self.worker, i, self.units[i])))
        return {"record": np.array(out, dtype=object)}


def _run(worker: UnitWorker, index: int, unit: ReadUnit) -> dict[str, Any]:
    try:
        return {"unit": index, **worker(index, unit)}
    except LipoError as exc:  # the user's mistake: raised again, as it is, on the driver
        return {"unit": index, "error": exc}


def default_workers(n_units: int) -> int:
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized() else (os.cpu_count() or 1)
    return max(1, min(n_units, cpus))


def map_units(units: Sequence[ReadUnit], worker_cls: type, kwargs: dict[str, Any], workers: int | None = None,
              num_cpus: float = 1.0, desc: str = "units") -> list[dict[str, Any]]:
    """Run `worker_cls(**kwargs)(index, unit)` over every unit on a pool of Ray Data actors; records in unit order.

    One unit (a single JSONL file, or a small Parquet file) has nothing to spread: it runs in this process, streaming
    all the same, which spares the seconds an actor takes to start and import its worker."""
    units = list(units)
    if len(units) == 1 and (workers or 1) == 1:
        record = _run(worker_cls(**kwargs), 0, units[0])
        if "error" in record:
            raise record["error"]
        return [record]
    import ray.data
    from ray.data import ActorPoolStrategy
    from tqdm import tqdm

    from lipo.runtime import ensure_ray

    ensure_ray()
    size = workers or default_workers(len(units))
    ds = ray.data.from_items([{"unit": i} for i in range(len(units))], override_num_blocks=len(units))
    ds = ds.map_batches(_Actor, fn_constructor_kwargs={"worker_cls": worker_cls, "kwargs": kwargs, "units": units},
                        compute=ActorPoolStrategy(size=size), batch_size=1, batch_format="numpy", num_cpus=num_cpus)
    records: dict[int, dict[str, Any]] = {}
    with tqdm(total=len(units), desc=desc, unit="unit") as bar:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for blob in batch["record"]:
                record = pickle.loads(blob)
                if "error" in record:
                    raise record["error"]
                records.setdefault(record["unit"], record)  # a retried task's late copy is the same record
                bar.update(1)
    missing = len(units) - len(records)
    if missing:
        raise RuntimeError(f"{missing} of {len(units)} units returned no record")
    return [records[i] for i in range(len(units))]


def id_hashes(ids: Sequence[str]) -> np.ndarray:
    """A 128-bit hash of each id (stable across processes and machines), for the cross-unit duplicate check.

    128 bits make a false match negligible (about 10^-25 for 10^7 ids), so a shared hash is taken as a shared id."""
    return np.array([hashlib.blake2b(i.encode(), digest_size=16).digest() for i in ids], dtype="S16")


def duplicate_groups(hashes: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Groups of global row positions (units concatenated in order) that share an id hash, each sorted, so that
    position [0] is the first occurrence and the others are its duplicates."""
    hashes = [h for h in hashes if h.size]
    if not hashes:
        return []
    flat = np.concatenate(hashes)  # [N] S16
    order = np.argsort(flat, kind="stable")
    sorted_h = flat[order]
    starts = np.flatnonzero(np.r_[True, sorted_h[1:] != sorted_h[:-1]])
    sizes = np.diff(np.r_[starts, flat.size])
    return [np.sort(order[s:s + n]) for s, n in zip(starts[sizes > 1], sizes[sizes > 1])]


def locate(positions: np.ndarray, counts: Sequence[int]) -> list[tuple[int, int]]:
    """Global row positions -> (unit index, position inside the unit), given each unit's row count."""
    bounds = np.cumsum(counts)
    units = np.searchsorted(bounds, positions, side="right")
    starts = bounds - np.asarray(counts)
    return [(int(u), int(p - starts[u])) for u, p in zip(units, positions)]


def drop_duplicates(units: Sequence[ReadUnit], hashes: Sequence[np.ndarray], source: tuple[Callable, Any],
                    on_invalid: str, report: ReadReport) -> list[tuple[int, int]]:
    """The cross-unit duplicate-id check, with `read_records`' rules: the first copy in input order stays; a later
    copy raises `DataError` naming its file, row and field (`on_invalid: error`), or is counted as skipped under
    "id: duplicate" in `report` (`skip`). Returns the (unit, valid-row position) of the copies to drop, sorted.

    `hashes[u]` holds `id_hashes` of unit u's valid rows, in order. Messages need row numbers, which only the unit's
    file holds: the few units named in a message are read again (`valid_row_number`)."""
    counts = [h.size for h in hashes]
    first_of: dict[tuple[int, int], tuple[int, int]] = {}
    for group in duplicate_groups(hashes):
        first, *later = locate(group, counts)
        first_of.update({copy: first for copy in later})
    if not first_of:
        return []
    to_row, schema = source

    def message(copy: tuple[int, int]) -> str:
        (n, rid), (m, _) = (valid_row_number(units[u], to_row, schema, k) for u, k in (copy, first_of[copy]))
        return (f"{units[copy[0]].name}: row {n}: field 'id': duplicate id '{rid}' "
                f"(first at {units[first_of[copy][0]].name} row {m})")

    dropped = sorted(first_of)
    if on_invalid == "error":
        raise DataError(message(dropped[0]))
    for copy in dropped:
        name = units[copy[0]].name
        report.rows_valid -= 1
        report.rows_skipped += 1
        report.files[name].rows_valid -= 1
        report.files[name].rows_skipped += 1
        report.skipped_by_reason["id: duplicate"] += 1
        if len(report.first_errors) < MAX_FIRST_ERRORS:
            report.first_errors.append(message(copy))
    return dropped
