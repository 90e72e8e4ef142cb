"""The actor stages, called directly (no Ray): seeding by id, training's tokenisation drops, scoring and labels."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch
from lists_helpers import build_config, write_prompts

from lipo.data.collate import collate_lists
from lipo.data.tokenize import TokenizeSpec, tokenize_list
from lipo.lists.prompts import plan_shards, read_prompts
from lipo.lists.stages import WORK_SCHEMA, GenerateStage, ReferenceStage, ScoreStage, work_table
from lipo.models.logps import sequence_logps
from lipo.models.tiny import byte_tokenizer, tiny_llama


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stages")
    cfg = build_config(tmp, write_prompts(tmp / "p.jsonl", n=3), "out", "generate.temperature=1.5",
                       "resources.generate.batch_size=3")
    table, _ = read_prompts(cfg, byte_tokenizer())
    return cfg, work_table(0, plan_shards(table, cfg.seed, 10)[0].table)


def test_candidates_depend_on_the_prompt_id_not_its_position(setup):
    cfg, block = setup
    stage = GenerateStage(cfg.model_dump(mode="json"))
    first = {r["id"]: r["responses"] for r in stage(block).to_pylist()}
    again = {r["id"]: r["responses"] for r in stage(block.take([2, 0, 1])).to_pylist()}
    assert first == again and all(len(v) >= 2 for v in first.values())
    renamed = block.set_column(1, "id", pa.array(["q0", "q1", "q2"]))
    renamed = renamed.set_column(WORK_SCHEMA.get_field_index("seed"), "seed", pa.array([7, 8, 9], pa.int64()))
    other = [r["responses"] for r in stage(renamed).to_pylist()]
    assert other != list(first.values())  # another id, another seed, other samples


def test_reference_stage_applies_trainings_drops_and_aligns_ref_logps(setup):
    cfg, block = setup
    rows = block.to_pylist()[:2]
    rows[0]["responses"] = ["ab", "ab", "", "cd", "x" * 40]  # a duplicate, an empty one, one truncated to 16
    rows[1]["responses"] = ["same", "same"]  # nothing left but one response: the list goes
    out = ReferenceStage(cfg.model_dump(mode="json"))(pa.Table.from_pylist(rows, schema=WORK_SCHEMA)).to_pylist()
    assert out[0]["responses"] == ["ab", "cd", "x" * 40] and out[0]["drop"] is None
    assert sorted(out[0]["events"]) == ["dropped_duplicate_response", "dropped_empty_response", "response_truncated"]
    assert out[1]["drop"] == "reference: fewer than 2 responses left after tokenisation"
    # What training computes on the fly for the stored list: same tokens, nothing dropped, same log-probs.
    spec = TokenizeSpec(cfg.input.max_prompt_tokens, cfg.reference.max_response_tokens)
    tl, stats = tokenize_list({**out[0], "labels": [1.0, 0.5, 0.0]}, byte_tokenizer(), spec)
    assert stats.counts["lists_kept"] == 1 and len(tl["response_ids"]) == 3
    with torch.no_grad():
        want = sequence_logps(tiny_llama(seed=0), collate_lists([tl], pad_id=0))[0]
    assert torch.allclose(torch.tensor(out[0]["ref_logps"]), want, atol=1e-5)


def test_score_stage_labels_and_drops(setup):
    cfg, block = setup
    rows = block.to_pylist()
    rows[0]["responses"] = ["cab", "bac", "zzz"]  # overlap reward with "cab": 1, 1, 0
    rows[1]["responses"] = ["def", "q"]
    rows[2]["drop"] = "generate: fewer than 2 distinct candidates"  # already dropped: untouched
    out = ScoreStage(cfg.model_dump(mode="json"))(pa.Table.from_pylist(rows, schema=WORK_SCHEMA)).to_pylist()
    assert out[0]["rewards"] == [1.0, 1.0, 0.0] and out[0]["labels"] == [1.0, 1.0, 0.0]
    assert out[1]["rewards"] == [1.0, 0.0] and out[1]["labels"] == [1.0, 0.0]
    assert out[2]["rewards"] is None and out[2]["labels"] is None
