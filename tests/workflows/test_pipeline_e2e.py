"""`lipo run` and `lipo compare` end to end at a small size: the quickstart config with shrunken world and budgets.

The same config file as the README's quickstart runs here; only sizes are overridden, so CI covers the whole
pipeline (bootstrap -> sft -> train-rm -> build-lists -> train -> serve + evaluate -> register) once.
"""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lipo import tracking
from lipo.config import load_config
from lipo.pipeline.config import PipelineConfig

# The module fixture runs the pipeline twice in subprocesses: allow more than the default per-test timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
REPO = Path(__file__).resolve().parents[2]
SMALL = ["world.n_demos=64", "world.n_rm_lists=48", "world.n_prompts=16", "world.n_eval=8",
         "build_lists.generate.num_candidates=4",
         "sft.optim.max_steps=20", "reward_model.optim.max_steps=20", "train.optim.epochs=1",
         "evaluate.bootstrap.resamples=200"]


def lipo(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lipo.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=1500)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """One small quickstart in a subprocess (as a user runs it), then the same command again."""
    work = tmp_path_factory.mktemp("pipeline")
    args = ["run", str(REPO / "configs" / "quickstart.yaml"), f"output_dir={work}/runs", "name=qs", *SMALL]
    first = lipo(*args, cwd=work)
    assert first.returncode == 0, first.stderr[-3000:]
    second = lipo(*args, cwd=work)
    assert second.returncode == 0, second.stderr[-3000:]
    return work, first, second


def test_pipeline_reports_win_rates_and_where_to_look(small_run):
    work, first, _ = small_run
    out = first.stdout
    for line in ("win rate vs SFT, proxy reward model:", "win rate vs SFT, gold reward:", "MLflow UI:", "model:",
                 "report:"):
        assert line in out, out[-2000:]
    assert out.strip().splitlines()[-1].startswith("report:")  # the last lines say where to look
    cfg = load_config(PipelineConfig, REPO / "configs" / "quickstart.yaml", [f"output_dir={work}/runs", "name=qs"])
    uri = tracking.resolve_uri(None, cfg.output_dir)
    c = tracking.client(uri)
    [parent] = c.search_runs([c.get_experiment_by_name("lipo").experiment_id],
                             "tags.mlflow.runName = 'qs' and tags.`lipo.stage` = 'pipeline'")
    m = parent.data.metrics
    for prefix in ("summary/", "summary/fn_"):
        assert m[f"{prefix}win_rate_ci_low"] <= m[f"{prefix}win_rate"] <= m[f"{prefix}win_rate_ci_high"]
    assert 0.0 <= m["summary/reward_model_heldout_pair_accuracy"] <= 1.0
    assert 0.0 <= m["summary/reward_model_gold_agreement_on_lists"] <= 1.0
    assert m["summary/preference_lists"] > 0 and "lists of SFT samples" in out
    children = c.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    stages = sorted(r.data.tags["lipo.stage"] for r in children)
    # two build-lists runs: the reward model's preference data (SFT samples, gold labels), then the LiPO lists
    assert stages == ["build-lists", "build-lists", "eval", "sft", "train", "train-rm"], stages
    # The policy is registered, and its alias resolves to the trained model (what `lipo serve` loads).
    from lipo.serving.model_source import resolve as resolve_model

    version = c.get_model_version_by_alias("lipo-quickstart", "champion")
    train_run = next(r for r in children if r.data.tags["lipo.stage"] == "train")
    assert version.run_id == train_run.info.run_id
    local = Path(resolve_model("models:/lipo-quickstart@champion", uri, str(work / "cache")))
    assert (local / "model.safetensors").is_file() and (local / "config.json").is_file()


BAR = re.compile(r"\d+%\||\d+(step|shard|it) \[|\?(step|shard|it)/s")  # a tqdm bar: 40%|..., 0step [00:00, ?step/s]


def test_console_shows_lipo_lines_and_bars_and_logs_the_rest(small_run):
    """`lipo run` is quiet by default (lipo.console): Ray's chatter is in the printed log file, not on the screen,
    and each stage fits on about one screen (24 lines) of stdout, with its bars on stderr."""
    _, first, _ = small_run
    screen = first.stdout + first.stderr
    # (Not "core_worker.cc": the driver's own C++ core worker writes its ERROR lines to the terminal directly; see
    # lipo.console.)
    for noise in ("PlacementGroupCleaner", "(TrainController", "(raylet)", "FutureWarning", "streaming_executor",
                  "mlflow.store.db", "graceful_shutdown", "Token authentication is enabled"):
        assert noise not in screen, noise
    log = re.search(r"\[lipo\] Ray, DeepSpeed and MLflow logs: (\S+)", first.stdout)
    assert log is not None, first.stdout[-2000:]
    assert "TrainController" in Path(log[1]).read_text()  # the chatter went to the file, not away
    stages = first.stdout.split("===== stage:")[1:]
    assert len(stages) >= 7 and max(len(s.splitlines()) for s in stages) <= 24, stages
    # stderr holds the bars (redrawn in place with \r) and lipo's worker lines; nothing else, a few lines per stage
    shown = [line.split("\r")[-1] for line in first.stderr.split("\n")]
    other = [line for line in shown if line.strip() and not BAR.search(line) and "[lipo]" not in line]
    assert len(other) <= len(stages), other


def test_rerun_skips_finished_stages_and_says_so(small_run):
    _, _, second = small_run
    for stage in ("world", "sft", "preferences", "reward_model", "build_lists", "train", "evaluate", "register"):
        assert f"skip {stage}: finished earlier" in second.stdout, second.stdout[-2000:]
    assert "===== stage:" not in second.stdout


def test_compare_pairs_by_prompt_and_reuses_the_pipelines_policy(small_run):
    work, _, _ = small_run
    # lambda and pair-logistic at the full K=4, one seed: the fewest runs that give a paired difference, a
    # head-to-head and a claim. Lambda is the policy `lipo run` trained (reused, not trained again), so this trains
    # one policy and evaluates two. Several seeds and the ablations are planned and reported by the same code,
    # covered without Ray by tests/lipo/pipeline/test_compare.py and test_report.py (CI time: each more policy here
    # costs about a minute).
    args = ["compare", str(REPO / "configs" / "quickstart.yaml"), f"output_dir={work}/runs", "name=qs", *SMALL,
            "compare.objectives=[lambda, pair_logistic]", "compare.ablation_objectives=[]",
            "compare.lambda_weights=[dcg]", "compare.seeds=1"]
    proc = lipo(*args, cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage in ("build_lists", "train"):  # the lists and the reference policy are shared with the pipeline run
        assert f"skip {stage}: finished earlier" in proc.stdout, proc.stdout[-3000:]
    out = work / "runs" / "compare"
    runs = list(csv.DictReader(open(out / "runs.csv")))
    assert sorted((r["objective"], r["seed"]) for r in runs) == [("lambda", "0"), ("pair_logistic", "0")]
    rows = {r["objective"]: r for r in csv.DictReader(open(out / "report.csv"))}
    assert set(rows) == {"lambda", "pair_logistic"} and all(r["seeds"] == "1" for r in rows.values())
    for obj, row in rows.items():  # the report's numbers come from the samples and agree with the evaluation's own
        [own] = [r for r in runs if r["objective"] == obj]
        for mine, theirs in (("", ""), ("_low", "_ci_low"), ("_high", "_ci_high")):  # one seed: the same bootstrap
            assert float(row[f"gold_win_rate{mine}"]) == pytest.approx(float(own[f"eval/fn_win_rate{theirs}"]))
    pl = rows["pair_logistic"]
    delta = float(rows["pair_logistic"]["gold_win_rate"]) - float(rows["lambda"]["gold_win_rate"])
    assert float(pl["gold_delta"]) == pytest.approx(delta)  # paired by (seed, prompt): the same prompts for both
    assert float(pl["gold_delta_low"]) <= float(pl["gold_delta"]) <= float(pl["gold_delta_high"])
    report = (out / "report.md").read_text()
    verdicts = "(reproduced|reversed|not distinguishable)"
    claim = re.search(r"- lambda vs pair-logistic \(DPO-BT\): .*\*\*" + verdicts + r"\*\*", report)
    assert claim is not None, report
    assert (out / "delta_vs_lambda.png").stat().st_size > 1000
    uri = tracking.resolve_uri(None, str(work / "runs"))
    c = tracking.client(uri)
    [parent] = c.search_runs([c.get_experiment_by_name("lipo").experiment_id],
                             "tags.mlflow.runName = 'qs-compare' and tags.`lipo.stage` = 'compare'")
    children = c.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sum(r.data.tags["lipo.stage"] == "train" for r in children) == 1  # lambda's is the pipeline's
    assert sum(r.data.tags["lipo.stage"] == "eval" for r in children) == 2
    arts = {a.path for a in c.list_artifacts(parent.info.run_id, "compare")}
    assert {"compare/report.md", "compare/report.csv", "compare/runs.csv", "compare/delta_vs_lambda.png"} <= arts
