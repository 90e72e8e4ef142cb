"""The streaming build: the distributed validation pass, workers that write their own shards, the manifest from
records, resume, and `file://` input and output.

The writer and statistics tests run in this process; the others start a small local Ray and use the cheapest
pipeline there is (`generate: null`, `reference: null`, a scoring function), so each build takes seconds.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from lists_helpers import build_config

from lipo.data.readers import read_lists
from lipo.errors import DataError
from lipo.lists import stats
from lipo.lists.build import build_lists
from lipo.lists.manifest import OutputDir, summarize
from lipo.lists.pipeline import finalize, prepare
from lipo.lists.prompts import ids_digest, plan_shards, read_prompts
from lipo.lists.shards import WriteShard
from lipo.lists.staging import read_shard
from lipo.lists.stages import ScoreStage, work_table
from lipo.models.tiny import byte_tokenizer

LISTS = ("generate=null", "reference=null")  # prompts with responses in: only the scorer runs


def _row(i: int, word: str = "cafe") -> dict:
    return {"id": f"p{i}", "prompt": f"Reverse the word: {word}\nAnswer:",
            "responses": [word[::-1], word, "x" * (i % 3 + 1)][: 2 + i % 2]}


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _expected_stats(out) -> dict:
    """What the old manifest code computed, by reading every part file's columns."""
    table = pq.read_table([str(p) for p in sorted(out.glob("part-*.parquet"))])

    def describe(values):
        a = np.asarray(values, dtype=np.float64)
        q = np.quantile(a, [0.05, 0.5, 0.95])
        return {"count": a.size, "mean": a.mean(), "std": a.std(), "min": a.min(), "p05": q[0], "p50": q[1],
                "p95": q[2], "max": a.max()}

    labels = table.column("labels").to_pylist()
    return {"labels": describe([x for v in labels for x in v]),
            "rewards": describe([x for v in table.column("rewards").to_pylist() for x in v]),
            "list_size": describe([len(v) for v in labels]),
            "lists_all_tied": sum(1 for v in labels if len(set(v)) == 1), "lists": table.num_rows}


def _assert_manifest_matches(manifest, out):
    want = _expected_stats(out)
    assert manifest["counts"]["lists"] == want["lists"]
    assert manifest["counts"]["lists_all_tied"] == want["lists_all_tied"]
    for key in ("labels", "rewards", "list_size"):
        assert manifest[key] == pytest.approx(want[key], abs=1e-12), key
    assert manifest["ref_logps"] == {"count": 0}


# ------------------------------------------------------------------------------------------------ in process


def test_merged_statistics_equal_numpy_when_small_and_stay_close_when_large():
    rng = np.random.default_rng(0)
    small = [rng.normal(size=n).tolist() for n in (3, 0, 40, 7)]
    got = stats.describe(stats.merge(stats.partial(v) for v in small))
    a = np.concatenate([np.asarray(v) for v in small])
    q = np.quantile(a, [0.05, 0.5, 0.95])
    assert got == pytest.approx({"count": a.size, "mean": a.mean(), "std": a.std(), "min": a.min(), "p05": q[0],
                                 "p50": q[1], "p95": q[2], "max": a.max()}, abs=1e-12)
    big = [rng.normal(size=5000) for _ in range(4)]  # over SAMPLE_SIZE per shard: quantiles from the samples
    got = stats.describe(stats.merge(stats.partial(v.tolist()) for v in big))
    a = np.concatenate(big)
    assert got["count"] == a.size and got["min"] == a.min() and got["max"] == a.max()
    assert got["mean"] == pytest.approx(a.mean(), abs=1e-9)
    assert [got["p05"], got["p50"], got["p95"]] == pytest.approx(np.quantile(a, [0.05, 0.5, 0.95]), abs=0.03)
    assert stats.describe(stats.merge([stats.partial([])])) == {"count": 0}


def test_a_replayed_shard_write_leaves_one_list_per_prompt(tmp_path):
    src = _jsonl(tmp_path / "in.jsonl", [_row(i) for i in range(5)])
    cfg = build_config(tmp_path, src, "out", *LISTS)
    table, _ = read_prompts(cfg, byte_tokenizer())
    shards = plan_shards(table, cfg.seed, cfg.output.shard_size)  # 2 + 2 + 1 prompts
    score = ScoreStage(cfg.model_dump(mode="json"))
    blocks = [score(work_table(s.index, read_shard(None, s))) for s in shards]
    out = OutputDir(tmp_path / "out")
    writer = WriteShard(out, {s.index: (s.rows, s.ids_sha, s.content_sha) for s in shards})
    for block in blocks:
        writer(block)
    writer(blocks[1])  # a retried task: the same names replaced
    out.delete(out.record_name(2))  # a task that died between its part file and its record ...
    writer(blocks[2])  # ... is redone: the part file is replaced, not added to
    lists, _ = read_lists([tmp_path / "out"])
    assert sorted(lists.column("id").to_pylist()) == [f"p{i}" for i in range(5)]
    assert sorted(out.finished()) == [0, 1, 2]
    _assert_manifest_matches(summarize(out, 5, 3), tmp_path / "out")
    # a block that is not exactly one complete planned shard is a bug, refused before anything is written
    with pytest.raises(RuntimeError, match="not its 2 planned prompts"):
        writer(blocks[0].slice(0, 1))
    with pytest.raises(RuntimeError, match="expected exactly one planned shard"):
        writer(pa.concat_tables(blocks[:2]))


def _build_in_process(plan) -> dict:
    """What the Ray pipeline does to the pending shards (LoadShard -> ScoreStage -> WriteShard), in this process."""
    score = ScoreStage(plan.resolved)
    writer = WriteShard(plan.out, {s.index: (s.rows, s.ids_sha, s.content_sha) for s in plan.pending})
    for shard in plan.pending:
        writer(score(work_table(shard.index, read_shard(plan.out, shard))))
    return finalize(plan)


def test_an_edited_prompt_redoes_its_shard_and_keeps_the_others(tmp_path, capsys):
    """Issue 16, point 10: editing a prompt's text under the same id reported "already complete" (ids-only digest).

    One input file, so the validation pass runs in this process and the test needs no Ray."""
    rows = [_row(i) for i in range(5)]  # shards of 2: [p0 p1] [p2 p3] [p4]
    src = _jsonl(tmp_path / "in.jsonl", rows)
    cfg = build_config(tmp_path, src, "out", *LISTS)
    first = _build_in_process(prepare(cfg))
    out = tmp_path / "out"
    assert prepare(cfg).status == "complete" and prepare(cfg).pending == []
    parts = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    rows[2] = _row(2, "deaf")  # same id, new text (shard 1)
    _jsonl(src, rows)
    plan = prepare(cfg)
    assert plan.status == "resume" and [s.index for s in plan.pending] == [1]
    assert "changed since 1 finished shard(s) were built (1)" in capsys.readouterr().out
    assert not (out / "_manifest.json").exists() and not (out / "part-00001.parquet").exists()
    second = _build_in_process(plan)
    assert second["input_digest"] != first["input_digest"]
    prompts = dict(zip(*read_lists([out])[0].select(["id", "prompt"]).to_pydict().values()))
    assert prompts["p2"] == "Reverse the word: deaf\nAnswer:" and len(prompts) == 5
    assert {n: t for n, t in parts.items() if n != "part-00001.parquet"} == {
        p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet") if p.name != "part-00001.parquet"}
    fresh = _build_in_process(prepare(build_config(tmp_path, src, "fresh", *LISTS)))  # the edited input from scratch
    assert read_lists([out])[0].sort_by("id") == read_lists([tmp_path / "fresh"])[0].sort_by("id")
    assert second["input_digest"] == fresh["input_digest"] and prepare(cfg).status == "complete"
    # A shorter input: the shard it no longer has is forgotten, its lists gone; a reference edit counts as content.
    rows = rows[:4]
    rows[0] = {**rows[0], "reference": "efac"}
    _jsonl(src, rows)
    plan = prepare(cfg)
    assert [s.index for s in plan.pending] == [0] and not (out / "part-00002.parquet").exists()
    assert _build_in_process(plan)["counts"]["prompts"] == 4


# ------------------------------------------------------------------------------------------------ on Ray


@pytest.fixture
def two_files(tmp_path):
    """a.jsonl: p0 p1 p2; b.parquet: p3, p1 again (its row 2), p4; bad.jsonl: a row without a prompt (row 2)."""
    a = _jsonl(tmp_path / "a.jsonl", [_row(i) for i in range(3)])
    b = tmp_path / "b.parquet"
    pq.write_table(pa.Table.from_pylist([_row(3), _row(1, "deaf"), _row(4)]), b)
    bad = _jsonl(tmp_path / "bad.jsonl", [_row(5), {"id": "q", "responses": ["a", "b"]}])
    return a, b, bad


def _cfg(tmp_path, files, *overrides):
    return build_config(tmp_path, files[0], "out", f"input.prompts=[{','.join(str(f) for f in files)}]", *LISTS,
                        *overrides)


def test_the_validation_pass_names_file_row_and_field(ray_local, tmp_path, two_files):
    a, b, bad = two_files
    with pytest.raises(DataError, match=rf"^{bad}: row 2: field 'prompt': missing"):
        prepare(_cfg(tmp_path, [a, bad]))
    with pytest.raises(DataError) as err:
        prepare(_cfg(tmp_path, [a, b]))
    assert str(err.value) == f"{b}: row 2: field 'id': duplicate id 'p1' (first at {a} row 2)"
    plan = prepare(_cfg(tmp_path, [a, bad, b], "on_invalid=skip", "input.limit=5"))
    r = plan.report
    assert (r.rows_read, r.rows_valid, r.rows_skipped) == (8, 6, 2)
    assert r.skipped_by_reason == {"prompt: missing": 1, "id: duplicate": 1}
    assert f"{b}: row 2: field 'id': duplicate id 'p1' (first at {a} row 2)" in r.first_errors
    ids = [read_shard(plan.out, s).column("id").to_pylist() for s in plan.shards]
    assert ids == [["p0", "p1"], ["p2"], ["p5"], ["p3"]]  # per-unit shards; p1 skipped; cut at 5 prompts
    assert [s.rows for s in plan.shards] == [2, 1, 1, 1] and plan.pending == plan.shards


@pytest.mark.slow  # two whole builds
def test_file_uris_resume_and_manifest_from_records(ray_local, tmp_path, two_files):
    a, _, _ = two_files
    c = _jsonl(tmp_path / "c.jsonl", [_row(i) for i in range(10, 13)])
    uri = f"file://{tmp_path / 'uri-out'}"
    cfg = build_config(tmp_path, a, "x", f"input.prompts=[file://{a},file://{c}]", f"output.dir={uri}", *LISTS)
    first = build_lists(cfg)
    out = tmp_path / "uri-out"
    assert first.output_dir == out and first.manifest["counts"]["shards"] == 4
    lists, _ = read_lists([out])
    assert sorted(lists.column("id").to_pylist()) == ["p0", "p1", "p10", "p11", "p12", "p2"]
    _assert_manifest_matches(first.manifest, out)
    assert first.manifest["input"]["rows_read"] == 6 and first.manifest["files"] == [
        f"part-0000{i}.parquet" for i in range(4)]
    records = [json.loads((out / "_build" / f"part-0000{i}.json").read_text()) for i in range(4)]
    assert first.manifest["input_digest"] == ids_digest([r["content_sha"] for r in records])  # the workers' digests
    # A partial build: shard 1 never finished, shard 3 died between its part file and its record.
    saved = tmp_path / "saved"
    shutil.copytree(out, saved)
    (out / "_manifest.json").unlink()
    (out / "part-00001.parquet").unlink()
    for i in (1, 3):
        (out / "_build" / f"part-0000{i}.json").unlink()
    resumed = build_lists(cfg)
    assert read_lists([out])[0].sort_by("id") == read_lists([saved])[0].sort_by("id")
    drop = ("created",)
    assert {k: v for k, v in resumed.manifest.items() if k not in drop} == {
        k: v for k, v in first.manifest.items() if k not in drop}
    # Issue 16, point 10 (an edited prompt redoes its shard) is tested in process above: a rebuild here would add a
    # whole Ray build to CI for the same decision; the workers' content digests are checked against the manifest here.


def test_vllm_samples_are_regrouped_inside_the_block():
    from lipo.lists.stages import WORK_SCHEMA
    from lipo.lists.vllm_engine import regroup

    base = {c: None for c in WORK_SCHEMA.names} | {"shard": 0, "events": []}
    rows = [{**base, "id": pid, "sample": j, "text": f"{pid}-{j}" if (pid, j) != ("b", 1) else "b-0"}
            for pid, j in [("a", 1), ("b", 0), ("a", 0), ("b", 1), ("a", 2), ("b", 2)]]
    out = regroup(pa.Table.from_pylist(rows), k=3, include_reference=False, dedup=True).to_pylist()
    assert [r["id"] for r in out] == ["a", "b"]
    assert out[0]["responses"] == ["a-0", "a-1", "a-2"]
    assert out[1]["responses"] == ["b-0", "b-2"] and out[1]["events"] == ["duplicate_candidate"]
    with pytest.raises(RuntimeError, match="expected all 3"):
        regroup(pa.Table.from_pylist(rows[:-1]), k=3, include_reference=False, dedup=True)
