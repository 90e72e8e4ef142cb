"""The distributed validation pass of build-lists: input prompts -> staged Parquet files and shard descriptors.

    units = plan_units(resolve_paths(cfg.input.prompts))          # on the driver: file names and footers only
    staged = stage_prompts(cfg, resolved, units, out, validator)  # Staged(shards, report, input_digest)

One Ray Data task per input unit (`lipo.data.distributed.map_units`; the tokenizer loads once per actor) validates
its rows (`lipo.lists.prompts.PromptValidator`), adds each prompt's seed, and writes the valid rows to
`OUT/_build/prompts/unit-NNNNN.parquet` with one row group per shard (`output.shard_size` rows, the last one
shorter). It returns a small record: its `ReadReport`, its valid count, one 16-byte hash per valid id, and the
`ids_sha` and `content_sha` of each row group (`lipo.lists.prompts`: the content digest is computed here, in the
workers, so the driver never reads the prompts to know whether they changed). The driver then
- merges the reports (a bad row under `on_invalid: error` has already stopped the pass, naming file/row/field);
- finds duplicate ids across all units from the hashes (`lipo.data.distributed.drop_duplicates`, the same check
  training's tokenisation makes): an error naming the later copy (`g.jsonl: row 9: field 'id': duplicate id 'x'
  (first at f.jsonl row 2)`), or under `skip` counted as "id: duplicate" and left out of its shard;
- applies `input.limit` (the first N valid prompts in input order) and numbers the shards globally. A shard that
  keeps only part of its row group (a duplicate left out, or the cut of `input.limit`) gets its digests from the
  rows it keeps: the driver reads that one row group (at most `output.shard_size` rows) to compute them.

So the driver holds the units, the records (16 bytes per valid prompt for the duplicate check) and the shard
descriptors, never more than one shard's prompts. Every build reruns this pass, resumes and finished builds
included: it is one read of the input (cheap next to generation), its output names are fixed and written atomically,
and the same input gives the same staged files and shards; that is also how a rerun notices prompts that changed
(`lipo.lists.manifest.stale_shards`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lipo.data.distributed import drop_duplicates, id_hashes, map_units
from lipo.data.files import ReadUnit
from lipo.data.readers import ReadReport, read_unit
from lipo.errors import DataError
from lipo.lists.config import BuildListsConfig
from lipo.lists.manifest import OutputDir
from lipo.lists.prompts import (PromptValidator, Shard, content_digest, given_column, ids_digest, prompt_schema,
                                with_seeds)



def prompt_tokenizer(cfg: BuildListsConfig):
    """The tokenizer that measures prompts: the reference's, else (generate and reference both off) lipo's byte one."""
    from lipo.models.loading import load_tokenizer

    return load_tokenizer(cfg.tokenizer_model or "builtin:tiny-llama")


def _rebatch(tables: Iterable[pa.Table], size: int) -> Iterator[pa.Table]:
    """The rows of `tables` again, in tables of exactly `size` rows (the last one shorter)."""
    buf: list[pa.Table] = []
    n = 0
    for t in tables:
        buf.append(t)
        n += t.num_rows
        while n >= size:
            whole = pa.concat_tables(buf)
            yield whole.slice(0, size)
            buf = [whole.slice(size)]
            n = buf[0].num_rows
    if n:
        yield pa.concat_tables(buf)


class StagePrompts:
    """The `map_units` worker: validates one unit and writes its valid prompts, one row group per shard."""

    def __init__(self, cfg: dict[str, Any], out: OutputDir):
        self.cfg = BuildListsConfig.model_validate(cfg)
        self.out = out
        self.validator = PromptValidator(self.cfg, prompt_tokenizer(self.cfg))
        self.schema = prompt_schema(self.cfg.score.field)

    def __call__(self, index: int, unit: ReadUnit) -> dict[str, Any]:
        cfg, size = self.cfg, self.cfg.output.shard_size
        report = ReadReport()
        staged = with_seeds(given_column(self.schema.empty_table(), cfg.score.field), cfg.seed).schema
        hashes, shas, contents = [id_hashes([])], [], []
        with self.out.open_write(OutputDir.staged_name(index)) as stream:
            writer = pq.ParquetWriter(stream, staged)
            try:
                valid = read_unit(unit, self.validator, self.schema, cfg.on_invalid, report)
                for table in _rebatch(valid, size):  # one shard's rows
                    table = with_seeds(given_column(table, cfg.score.field), cfg.seed)
                    ids = table.column("id").to_pylist()
                    hashes.append(id_hashes(ids))
                    shas.append(ids_digest(ids))
                    contents.append(content_digest(table))
                    writer.write_table(table, row_group_size=size)
            finally:
                writer.close()
        return {"report": report.to_json(), "valid": report.rows_valid, "hashes": np.concatenate(hashes),
                "shas": shas, "contents": contents}


def read_shard(out: OutputDir, shard: Shard, columns: list[str] | None = None) -> pa.Table:
    """A shard's prompt rows, read from its staged row group (or its in-memory table)."""
    table = shard.table if shard.table is not None else out.staged_file(shard.unit).read_row_group(
        shard.row_group, columns=columns)
    if shard.skip:
        keep = np.ones(table.num_rows, dtype=bool)
        keep[list(shard.skip)] = False
        table = table.filter(pa.array(keep))
    return table.slice(0, shard.rows)


@dataclass
class Staged:
    shards: list[Shard]
    report: ReadReport
    input_digest: str  # see lipo.lists.manifest


def _plan(records: list[dict], excluded: set[int], limit: int | None, size: int, out: OutputDir) -> list[Shard]:
    """Shards in input order: each staged row group, less its excluded rows, cut at `limit` prompts in all."""
    shards: list[Shard] = []
    start, taken = 0, 0
    for u, r in enumerate(records):
        for g, (sha, content) in enumerate(zip(r["shas"], r["contents"])):
            lo = start + g * size
            n = min(size, r["valid"] - g * size)
            skip = tuple(p - lo for p in range(lo, lo + n) if p in excluded)
            rows = n - len(skip) if limit is None else min(n - len(skip), limit - taken)
            if rows <= 0:
                continue
            shard = Shard(len(shards), sha, rows, u, g, skip, content_sha=content)
            if rows < n:  # not the whole row group: its digests are those of the rows it keeps
                kept = read_shard(out, shard)
                shard = Shard(shard.index, ids_digest(kept.column("id").to_pylist()), rows, u, g, skip,
                              content_sha=content_digest(kept))
            shards.append(shard)
            taken += rows
        start += r["valid"]
    return shards


def stage_prompts(cfg: BuildListsConfig, resolved: dict, units: list[ReadUnit], out: OutputDir,
                  validator: PromptValidator) -> Staged:
    """Run the validation pass over `units` and plan the shards; raises DataError for bad input."""
    records = map_units(units, StagePrompts, {"cfg": resolved, "out": out}, desc="build-lists: validate prompts")
    report = ReadReport()
    for r in records:
        report.merge(ReadReport.from_json(r["report"]))
    source = (validator, prompt_schema(cfg.score.field))
    dropped = drop_duplicates(units, [r["hashes"] for r in records], source, cfg.on_invalid, report)
    starts = np.cumsum([0] + [r["valid"] for r in records])
    excluded = {int(starts[u]) + k for u, k in dropped}  # global positions over the units' valid rows
    shards = _plan(records, excluded, cfg.input.limit, cfg.output.shard_size, out)
    if not shards:
        first = report.first_errors[0] if report.first_errors else ""
        raise DataError(f"no valid rows: {report.summary()}; first error: {first}")
    return Staged(shards, report, ids_digest([s.content_sha for s in shards]))
