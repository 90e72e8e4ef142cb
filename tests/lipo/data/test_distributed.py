"""Distributed unit passes (`lipo.data.distributed`): records in unit order, user errors as one line, id hashes and
duplicate groups. Starts a small local Ray."""

import json
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lipo.data.distributed import duplicate_groups, id_hashes, locate, map_units
from lipo.data.files import plan_units, resolve_paths
from lipo.data.readers import LIST_SCHEMA, ReadReport, read_unit
from lipo.data.records import record_to_row, row_to_record
from lipo.errors import LipoError


def _row(item):
    rec = row_to_record(item)
    return rec.id, record_to_row(rec)


class CountRows:
    """A test worker: reads its unit, returns its report and id hashes."""

    def __init__(self, on_invalid):
        self.on_invalid = on_invalid

    def __call__(self, index, unit):
        report = ReadReport()
        ids = [i for t in read_unit(unit, _row, LIST_SCHEMA, self.on_invalid, report)
               for i in t.column("id").to_pylist()]
        return {"report": report.to_json(), "ids": ids, "hashes": id_hashes(ids)}


def _lists(n, start=0):
    return [{"id": f"l{i}", "prompt": f"q{i}", "responses": ["a", "b"], "labels": [1.0, 0.0]}
            for i in range(start, start + n)]


@pytest.fixture(autouse=True)
def _workers_by_value():
    """Ray workers cannot import a test module: ship its classes by value."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_map_units_returns_records_in_unit_order(tmp_path, ray_local):
    for k in range(3):
        (tmp_path / f"f{k}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _lists(5, 5 * k)))
    pq.write_table(pa.Table.from_pylist(_lists(20, 100)), tmp_path / "g.parquet", row_group_size=4)
    units = plan_units(resolve_paths(str(tmp_path)))
    records = map_units(units, CountRows, {"on_invalid": "error"}, workers=2)
    ids = [i for r in records for i in r["ids"]]
    assert ids == [f"l{i}" for i in range(15)] + [f"l{i}" for i in range(100, 120)]
    assert [r["unit"] for r in records] == list(range(len(units)))
    total = ReadReport()
    for r in records:
        total.merge(ReadReport.from_json(r["report"]))
    assert (total.rows_read, total.rows_valid, len(total.files)) == (35, 35, 4)


def test_a_bad_row_is_one_line_naming_file_row_and_field(tmp_path, ray_local):
    rows = _lists(4)
    rows[2]["labels"] = [1.0, float("nan")]
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "good.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _lists(2, 10)))
    units = plan_units(resolve_paths(str(tmp_path)))  # two units, so two actors
    with pytest.raises(LipoError) as err:
        map_units(units, CountRows, {"on_invalid": "error"}, workers=2)
    assert str(err.value) == f"{tmp_path / 'bad.jsonl'}: row 3: field 'labels[1]': must be finite, got NaN"
    skipped = map_units(units, CountRows, {"on_invalid": "skip"}, workers=2)[0]["report"]
    assert skipped["rows_skipped"] == 1 and skipped["skipped_by_reason"] == {"labels: not finite": 1}


def test_duplicate_groups_and_locate_by_hand():
    h = [id_hashes(["a", "b"]), id_hashes(["c", "a", "d"]), id_hashes(["b"])]
    groups = duplicate_groups(h)
    assert sorted(g.tolist() for g in groups) == [[0, 3], [1, 5]]
    assert locate(np.array([0, 3, 5]), [2, 3, 1]) == [(0, 0), (1, 1), (2, 0)]
    assert id_hashes(["a"])[0] == id_hashes(["a"])[0] and id_hashes(["a"])[0] != id_hashes(["b"])[0]
