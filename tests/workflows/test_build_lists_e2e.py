"""`lipo build-lists` end to end on local Ray with tiny models: the acceptance runs of the list builder.

Covered: the function, pointwise and pairwise scorers (and `existing` on imported pairs); determinism of two runs;
parity of the stored reference log-probs with what training computes on the fly; `lipo train` on the output as is;
MLflow contents; resume after a killed driver and completeness after a killed scorer actor; one-line errors.
Builds call the library's driver, `lipo.lists.build.build_lists`; the killed-driver test goes through `lipo.cli`.
Runs from the repository root (the scorer actors import `tests.lipo.lists.lists_helpers`):
`.venv/bin/python -m pytest -q tests/workflows/test_build_lists_e2e.py`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "lipo" / "lists"))
from lists_helpers import build_config, write_prompts  # noqa: E402

from lipo import tracking  # noqa: E402
from lipo.config import load_config  # noqa: E402
from lipo.data.collate import collate_lists  # noqa: E402
from lipo.data.importers import import_file  # noqa: E402
from lipo.data.readers import read_lists  # noqa: E402
from lipo.data.tokenize import TokenizeSpec, tokenize_lists  # noqa: E402
from lipo.errors import LipoError  # noqa: E402
from lipo.lists.build import build_lists  # noqa: E402
from lipo.models.logps import sequence_logps  # noqa: E402
from lipo.models.tiny import byte_tokenizer, tiny_llama  # noqa: E402
from lipo.training.config import TrainConfig  # noqa: E402
from lipo.training.launch import launch  # noqa: E402
from lipo.training.tasks import ListwiseTask  # noqa: E402

pytestmark = pytest.mark.slow


def dataset(out: Path) -> dict[str, dict]:
    """Every list of a build output, by id, read with the reader training uses (so it is valid training data)."""
    table, _ = read_lists([out])
    rows = table.to_pylist()
    assert len(rows) == len({r["id"] for r in rows})
    return {r["id"]: r for r in rows}


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    return write_prompts(tmp_path_factory.mktemp("prompts") / "prompts.jsonl", n=6)


@pytest.fixture(scope="module")
def baseline(ray_local, tmp_path_factory, prompts):
    tmp = tmp_path_factory.mktemp("baseline")
    result = build_lists(build_config(tmp, prompts, "base"))
    return tmp, result


def test_function_scorer_run_is_complete_deterministic_and_not_redone(baseline, prompts, tmp_path):
    tmp, result = baseline
    m = result.manifest
    assert m["counts"]["prompts"] == 6 and m["counts"]["lists"] + sum(m["dropped_lists"].values()) == 6
    assert m["counts"]["shards"] == 3 and m["schema_version"] == 1 and m["tokenize"]["max_response_tokens"] == 16
    lists = dataset(result.output_dir)
    assert len(lists) == m["counts"]["lists"] >= 4
    for row in lists.values():
        assert len(row["responses"]) == len(row["labels"]) == len(row["rewards"]) == len(row["ref_logps"]) >= 2
        assert all(0.0 <= x <= 1.0 for x in row["labels"])
    # Determinism: the same config run again (elsewhere) gives identical candidates, rewards, labels, ref_logps.
    again = build_lists(build_config(tmp_path, prompts, "again"))
    assert dataset(again.output_dir) == lists
    # A finished build is not redone; a different config into the same directory is refused.
    parts = {p: p.stat().st_mtime_ns for p in result.output_dir.glob("part-*.parquet")}
    assert build_lists(build_config(tmp, prompts, "base")).run_id is None
    assert {p: p.stat().st_mtime_ns for p in result.output_dir.glob("part-*.parquet")} == parts
    with pytest.raises(LipoError, match=r"different config \(changed: generate.num_candidates\)"):
        build_lists(build_config(tmp, prompts, "base", "generate.num_candidates=4"))


def test_killed_scorer_actor_leaves_no_hole(baseline, prompts, tmp_path):
    _, result = baseline
    marker = tmp_path / "killed"
    cfg = build_config(tmp_path, prompts, "killed", f"score.function_kwargs={{kill_marker: '{marker}'}}")
    killed = build_lists(cfg)
    assert marker.exists()  # a scorer actor did die mid-stage (it wrote its pid, then exited)
    assert dataset(killed.output_dir) == dataset(result.output_dir)


def test_killed_driver_resumes_to_the_same_dataset(ray_local, baseline, prompts, tmp_path):
    _, result = baseline
    # Slow scoring (0.3 s per candidate) keeps the run alive long enough to kill it after its first shard.
    args = ["score.function_kwargs={delay: 0.3}"]
    cfg_path = tmp_path / "build.yaml"
    cfg_path.write_text(yaml.safe_dump(build_config(tmp_path, prompts, "resumed", *args).model_dump(mode="json")))
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    log = open(tmp_path / "driver.log", "w")  # noqa: SIM115 - closed below, after the process is gone
    proc = subprocess.Popen([sys.executable, "-m", "lipo.cli", "build-lists", str(cfg_path)], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    out = tmp_path / "resumed"
    try:
        deadline = time.time() + 240
        while not list(out.glob("_build/part-*.json")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver dies between shards or mid-shard, never cleanly
    finally:
        proc.wait(timeout=60)
        log.close()
    done = list(out.glob("_build/part-*.json"))
    tail = (tmp_path / "driver.log").read_text()[-2000:]
    assert 1 <= len(done) < 3 and not (out / "_manifest.json").exists(), f"the kill should land mid-run:\n{tail}"
    resumed = build_lists(build_config(tmp_path, prompts, "resumed", *args))
    assert resumed.manifest["counts"] == result.manifest["counts"]
    assert dataset(resumed.output_dir) == dataset(result.output_dir)


def test_pointwise_lists_train_as_is_with_ref_logps_equal_to_on_the_fly(ray_local, prompts, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = build_config(tmp_path, prompts, "pointwise", "score.name=pointwise", "score.model=builtin:tiny-reward",
                       "score.function=null", "tracking.enabled=true", f"tracking.uri={uri}",
                       "generate.include_reference=true")
    result = build_lists(cfg)
    lists = dataset(result.output_dir)
    assert len(lists) == result.manifest["counts"]["lists"] >= 4
    # Parity: training re-tokenises the stored lists (dropping nothing) and gets the stored ref_logps to 1e-5.
    rows = list(lists.values())
    tokenised, stats = tokenize_lists(rows, byte_tokenizer(), TokenizeSpec(64, 16))
    assert stats.counts["lists_kept"] == len(rows) and stats.counts["dropped_duplicate_response"] == 0
    assert stats.counts["dropped_empty_response"] == 0
    batch = collate_lists(tokenised, pad_id=0)
    with torch.no_grad():
        on_the_fly = sequence_logps(tiny_llama(seed=0), batch)  # [B, K]
    assert torch.allclose(on_the_fly[batch["list_mask"]], batch["ref_logps"][batch["list_mask"]], atol=1e-5)
    # MLflow holds the build as its own run: config, counts, label statistics, the manifest and a sample table.
    c = tracking.client(uri)
    run = c.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags[tracking.STAGE_TAG] == "build-lists"
    assert run.data.params["score.name"] == "pointwise"
    assert run.data.metrics["lists/lists"] == len(lists) and "labels/mean" in run.data.metrics
    arts = {a.path for a in c.list_artifacts(result.run_id, "build-lists")}
    assert arts == {"build-lists/manifest.json", "build-lists/sample_table.json"}
    sample = json.loads(Path(c.download_artifacts(result.run_id, "build-lists/sample_table.json", str(tmp_path)))
                        .read_text())
    assert sample["columns"][:3] == ["id", "prompt", "response"] and sample["data"]
    # `lipo train` reads the directory as is; with ref_logps present it needs only the policy.
    tcfg = load_config(TrainConfig, None, [
        f"output_dir={tmp_path / 'runs'}", f"data.train=[{result.output_dir}]", "data.max_prompt_tokens=64",
        "data.max_response_tokens=16", "scaling.num_workers=1", "optim.max_steps=2", "run_name=on-lists",
        f"tracking.uri={uri}", "checkpoint.every=1000"])
    trained = launch(ListwiseTask(tcfg))
    assert trained.model_dir.is_dir() and "train/loss" in trained.metrics


def test_pairwise_winrate_labels(ray_local, prompts, tmp_path):
    cfg = build_config(tmp_path, prompts, "pairwise", "score.name=pairwise", "score.model=builtin:tiny-reward",
                       "score.function=null", "label.method=winrate", "input.limit=2", "reference=null")
    lists = dataset(build_lists(cfg).output_dir)
    assert len(lists) == 2
    for row in lists.values():  # psi_k = mean_i P(k beats i), P(a>b) + P(b>a) = 1  =>  sum_k psi_k = K / 2
        assert sum(row["labels"]) == pytest.approx(len(row["labels"]) / 2, abs=1e-5)
        assert row["labels"] == row["rewards"] and row["ref_logps"] is None


def test_existing_scores_on_imported_pairs_get_ref_logps(ray_local, tmp_path):
    src = tmp_path / "pairs.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"Q{i}?", "chosen": f"yes {i}", "rejected": "no"}) + "\n"
                           for i in range(3)))
    import_file("pairs", str(src), str(tmp_path / "pairs.parquet"), quiet=True)
    cfg = build_config(tmp_path, tmp_path / "pairs.parquet", "existing", "generate=null",
                       "reference.model=builtin:tiny-llama", "score.name=existing", "score.field=labels",
                       "score.function=null", "label.method=identity")
    lists = dataset(build_lists(cfg).output_dir)
    imported, _ = read_lists([tmp_path / "pairs.parquet"])
    for row in imported.to_pylist():
        got = lists[row["id"]]
        assert got["responses"] == row["responses"] and got["labels"] == row["labels"] == [1.0, 0.0]
        assert len(got["ref_logps"]) == 2


def test_scoring_function_error_is_one_line(ray_local, tmp_path):
    # Lists in, no generation and no reference model: a one-actor pipeline, so the failure is cheap to reach.
    lists = tmp_path / "lists.jsonl"
    lists.write_text(json.dumps({"id": "p0", "prompt": "Q?", "responses": ["a", "b"], "labels": [1.0, 0.0]}) + "\n")
    cfg = build_config(tmp_path, lists, "failing", "generate=null", "reference=null",
                       "score.function=tests.lipo.lists.lists_helpers:failing_reward")
    with pytest.raises(LipoError) as err:
        build_lists(cfg)
    assert str(err.value) == ("score.function tests.lipo.lists.lists_helpers:failing_reward raised ValueError on "
                              "id 'p0': boom")
    assert not (tmp_path / "failing" / "_manifest.json").exists()
