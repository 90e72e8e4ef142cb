"""BuildListsConfig validation and prompt reading: every user mistake is one line naming the key, file, row or field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from lists_helpers import build_config, write_prompts

from lipo.config import load_config
from lipo.errors import ConfigError, DataError, LipoError
from lipo.lists.config import BuildListsConfig, identity_hash
from lipo.lists.manifest import OutputDir, open_output
from lipo.lists.pipeline import check_environment
from lipo.lists.prompts import plan_shards, prompt_seed, read_prompts
from lipo.lists.stages import work_table
from lipo.models.tiny import byte_tokenizer

REPO = Path(__file__).resolve().parents[3]


def test_example_config_loads_and_its_models_and_files_exist(monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = load_config(BuildListsConfig, REPO / "configs" / "build_lists_example.yaml")
    check_environment(cfg)
    table, report = read_prompts(cfg, byte_tokenizer())
    assert report.rows_skipped == 0 and table.num_rows >= 8


@pytest.mark.parametrize("overrides,needle", [
    (["score.name=pointwise", "score.function=null"], "score.model is required"),
    (["score.function=not-a-path"], "score.function must be an import path"),
    (["score.name=existing"], "set generate to null"),
    (["label.method=winrate"], "needs score.name 'pairwise'"),
    (["generate=null"], "reference.model is required"),
    (["generate.temprature=0.5"], "generate.temprature: unknown key"),
    (["generate.num_candidates=1"], "generate.num_candidates"),
    (["score.name=pairwise", "score.model=builtin:tiny-reward", "score.pair_template=A {a} B {b}"], "{prompt}"),
])
def test_bad_config_values_name_the_key(tmp_path, overrides, needle):
    with pytest.raises(ConfigError, match=needle.replace("{", r"\{").replace("}", r"\}")):
        build_config(tmp_path, tmp_path / "p.jsonl", "out", *overrides)


def test_missing_models_and_functions_fail_before_ray(tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl")
    with pytest.raises(LipoError, match="generate.model: model directory not found"):
        check_environment(build_config(tmp_path, prompts, "o", f"generate.model={tmp_path / 'nope'}"))
    with pytest.raises(LipoError, match="score.model: unknown builtin reward model 'builtin:huge'"):
        check_environment(build_config(tmp_path, prompts, "o", "score.name=pointwise", "score.model=builtin:huge"))
    with pytest.raises(LipoError, match="score.function: module 'lists_helpers' has no callable 'nope'"):
        check_environment(build_config(tmp_path, prompts, "o", "score.function=lists_helpers:nope"))
    with pytest.raises(LipoError, match="generate.engine: vllm needs the `vllm` package"):
        check_environment(build_config(tmp_path, prompts, "o", "generate.engine=vllm"))


def test_identity_hash_ignores_resources_tracking_and_output_dir(tmp_path):
    p = tmp_path / "p.jsonl"
    a = build_config(tmp_path, p, "a")
    assert identity_hash(a) == identity_hash(build_config(
        tmp_path, p, "b", "resources.score.concurrency=4", "resources.generate.batch_size=2", "tracking.enabled=true"))
    assert identity_hash(a) != identity_hash(build_config(tmp_path, p, "a", "generate.temperature=0.5"))
    assert identity_hash(a) != identity_hash(build_config(tmp_path, p, "a", "output.shard_size=3"))


def _read(tmp_path, lines: list, *overrides):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(b"".join(x if isinstance(x, bytes) else (json.dumps(x) + "\n").encode() for x in lines))
    cfg = build_config(tmp_path, path, "out", *overrides)
    return read_prompts(cfg, byte_tokenizer())


@pytest.mark.parametrize("bad,field", [
    ({"id": "x"}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": [{"role": "user"}]}, "prompt[0].content"),
    ({"prompt": "ok", "reference": 3}, "reference"),
    ({"prompt": "ok", "id": ""}, "id"),
])
def test_bad_prompt_rows_name_file_row_and_field(tmp_path, bad, field):
    with pytest.raises(DataError, match=rf"prompts\.jsonl: row 2: field '{field.replace('[', '.').replace(']', '.')}'"):
        _read(tmp_path, [{"prompt": "fine"}, bad])


def test_non_utf8_empty_file_and_duplicates(tmp_path):
    with pytest.raises(DataError, match="row 2: field '<json>': line is not valid UTF-8"):
        _read(tmp_path, [{"prompt": "fine"}, b'{"prompt": "caf\xe9"}\n'])
    with pytest.raises(DataError, match="has no rows"):
        _read(tmp_path, [])
    with pytest.raises(DataError, match="row 2: field 'id': duplicate id 'a'"):
        _read(tmp_path, [{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}])


def test_skip_counts_bad_rows_by_reason(tmp_path):
    table, report = _read(tmp_path, [{"prompt": "good"}, {"prompt": ""}, b"\xff\n", {"x": 1}, {"prompt": "good"},
                                     {"prompt": [{"role": "user", "content": "chat"}]}], "on_invalid=skip")
    assert table.num_rows == 2  # the second "good" has the same content id as the first: a duplicate
    assert report.skipped_by_reason == {"prompt: empty": 1, "<json>: not utf-8": 1, "prompt: missing": 1,
                                        "id: duplicate": 1}
    assert table.column("prompt_messages").to_pylist()[1] == [{"role": "user", "content": "chat"}]


def test_long_prompts_are_truncated_and_counted_or_invalid(tmp_path):
    rows = [{"prompt": "short"}, {"prompt": "x" * 100}]
    table, _ = _read(tmp_path, rows, "input.max_prompt_tokens=20")
    assert table.column("prompt_truncated").to_pylist() == [False, True]
    with pytest.raises(DataError, match=r"row 2: field 'prompt': 101 tokens, over input.max_prompt_tokens=20"):
        _read(tmp_path, rows, "input.max_prompt_tokens=20", "input.long_prompts=invalid")


def test_existing_scorer_reads_responses_and_its_field(tmp_path):
    good = {"prompt": "p", "responses": ["a", "b"], "rating": [3, 1.5]}
    ov = ("generate=null", "reference.model=builtin:tiny-llama", "score.name=existing", "score.field=rating")
    table, _ = _read(tmp_path, [good], *ov)
    row = table.to_pylist()[0]
    assert row["responses"] == ["a", "b"] and row["given"] == [3.0, 1.5]
    for bad, field in [({**good, "rating": [1.0]}, "rating"), ({**good, "rating": [1, "x"]}, "rating.1."),
                       ({**good, "rating": None}, "rating"), ({"prompt": "p", "rating": [1, 2]}, "responses")]:
        with pytest.raises(DataError, match=f"row 1: field '{field}'"):
            _read(tmp_path, [bad], *ov)


def test_prompt_roles_and_nan_scores_get_named_errors(tmp_path):
    """Issue 16, point 13, in build-lists' input: a `robot` turn and a NaN in the existing scorer's column."""
    with pytest.raises(DataError) as exc:
        _read(tmp_path, [{"prompt": [{"role": "robot", "content": "beep"}]}])
    assert str(exc.value) == (f"{tmp_path / 'prompts.jsonl'}: row 1: field 'prompt[0].role': must be one of system, "
                              "user, assistant, tool, got 'robot'")
    ov = ("generate=null", "reference.model=builtin:tiny-llama", "score.name=existing", "score.field=rating")
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "p", "responses": ["a", "b"], "rating": [1, NaN]}\n')
    with pytest.raises(DataError, match=r"row 1: field 'rating\[1\]': must be finite, got NaN$"):
        read_prompts(build_config(tmp_path, path, "out", *ov), byte_tokenizer())


def test_seeds_come_from_the_id_not_the_row_position(tmp_path):
    table, _ = _read(tmp_path, [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}, {"id": "c", "prompt": "z"}])
    shards = plan_shards(table, seed=5, shard_size=2)
    assert [s.table.num_rows for s in shards] == [2, 1]
    assert shards[1].table.column("seed").to_pylist() == [prompt_seed(5, "c")]
    reordered = plan_shards(table.take([2, 0, 1]), seed=5, shard_size=2)
    assert reordered[0].table.column("seed").to_pylist()[0] == prompt_seed(5, "c")
    assert prompt_seed(5, "c") != prompt_seed(6, "c")


def test_output_dir_refusals(tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl")

    def status(*overrides, out="out"):
        cfg = build_config(tmp_path, prompts, out, *overrides)
        return open_output(OutputDir(cfg.output.dir), identity_hash(cfg), cfg.model_dump(mode="json"))

    assert status() == "new"
    assert status() == "resume"
    # No shard finished yet: another config may take over (a failed first attempt leaves nothing to keep) ...
    assert status("generate.temperature=0.7") == "new"
    assert status() == "new"
    out = OutputDir(tmp_path / "out")
    out.write_json(out.record_name(0), {"shard": 0, "ids_sha": "x"})
    # ... but once a shard is done, a different config is refused, naming what changed.
    with pytest.raises(LipoError, match=r"different config \(changed: generate.temperature\)"):
        status("generate.temperature=0.3")
    assert status("resources.score.concurrency=2") == "resume"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(LipoError, match="not empty and holds no build-lists state"):
        status(out="other")


def test_truncated_prompts_become_counted_events(tmp_path):
    table, _ = _read(tmp_path, [{"prompt": "short"}, {"prompt": "x" * 100}], "input.max_prompt_tokens=20")
    block = work_table(0, plan_shards(table, 0, 10)[0].table)
    assert block.column("events").to_pylist() == [[], ["prompt_truncated"]]


def test_cli_errors_are_one_line_before_ray(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "fine"}\n{"id": "x"}\n')
    cfg = tmp_path / "build.yaml"
    cfg.write_text(yaml.safe_dump(build_config(tmp_path, prompts, "out").model_dump(mode="json")))

    def lipo(*args):
        return subprocess.run([sys.executable, "-m", "lipo.cli", "build-lists", str(cfg), *args], cwd=REPO,
                              capture_output=True, text=True, timeout=120)

    for proc, needle in [(lipo("generate.temprature=1"), "generate.temprature: unknown key"),
                         (lipo(), f"{prompts}: row 2: field 'prompt': missing")]:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], proc.stderr
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("part-*"))
