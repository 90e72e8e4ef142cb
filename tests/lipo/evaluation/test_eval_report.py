"""Evaluation inputs, summary and report, without a server: prompts, config, metrics, files and MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lipo import tracking
from lipo.config import load_config
from lipo.errors import ConfigError, DataError
from lipo.evaluation.config import EvalConfig
from lipo.evaluation.report import log_report, train_run_id, write_report
from lipo.evaluation.runner import Sample, read_prompts, sample_rows, summarize

REPO = Path(__file__).resolve().parents[3]


def test_example_config_loads():
    cfg = load_config(EvalConfig, REPO / "configs/eval_example.yaml")
    assert (cfg.policy_id(), cfg.baseline_id()) == ("policy", "sft")
    assert cfg.judge.function == "lipo.evaluation.winrate:response_length"


@pytest.mark.parametrize("override,needle", [
    ("judge.reward_model=false", "judge: Value error, set reward_model: true or a function judge"),
    ("judge.function=no_colon", "function must look like"),
    ("bootstrap.confidence=1.5", "bootstrap.confidence"),
    ("serve.policy.modle=x", "serve.policy.modle: unknown key"),
])
def test_bad_config_names_the_key(tmp_path, override, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        load_config(EvalConfig, None, ["data.prompts=[x.jsonl]", override])


def test_read_prompts_text_chat_reference_and_bad_rows(tmp_path):
    f = tmp_path / "p.jsonl"
    rows = [{"id": "a", "prompt": "2+2?", "reference": "4"},
            {"prompt": [{"role": "user", "content": "hi"}]},
            {"id": "c", "prompt": "x", "responses": ["r1", "r2"], "labels": [1, 0]}]  # a list record works too
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    got = read_prompts([str(f)])
    assert [g["prompt"] for g in got] == ["2+2?", [{"role": "user", "content": "hi"}], "x"]
    assert [g["reference"] for g in got] == ["4", None, None]
    assert got[0]["id"] == "a" and got[1]["id"]  # a content id when none is given
    assert len(read_prompts([str(f)], max_prompts=2)) == 2
    f.write_text(json.dumps({"id": "a", "prompt": "p", "reference": 3}) + "\n")
    with pytest.raises(DataError, match=r"row 1: field 'reference': must be a string"):
        read_prompts([str(f)])
    f.write_text(json.dumps({"id": "a", "reference": "r"}) + "\n")
    with pytest.raises(DataError, match=r"row 1: field 'prompt'"):
        read_prompts([str(f)])


def _samples() -> list[Sample]:
    """Three prompts. Rewards: (1 vs 0) win, (2 vs 2) tie, (0 vs 3) loss -> win rate 0.5, mean rewards 1 and
    5/3. Function judge (lengths): 3 vs 1, 2 vs 2, 4 vs 0 -> 1, 0.5, 1 -> 2.5/3. Log-ratios 0.1, 0.2, 0.3 -> 0.2."""
    data = [("abc", "a", 1.0, 0.0, 0.1), ("xy", "zw", 2.0, 2.0, 0.2), ("long", "", 0.0, 3.0, 0.3)]
    return [Sample(id=str(i), prompt=f"p{i}", policy=a, baseline=b, policy_tokens=len(a), baseline_tokens=len(b),
                   reward_policy=ra, reward_baseline=rb, fn_policy=float(len(a)), fn_baseline=float(len(b)),
                   log_ratio=lr) for i, (a, b, ra, rb, lr) in enumerate(data)]


def test_summarize_hand_computed():
    cfg = load_config(EvalConfig, None, ["data.prompts=[x]", "judge.function=lipo.evaluation.winrate:response_length",
                                         "bootstrap.resamples=200"])
    samples = _samples()
    m = summarize(samples, cfg, {"reward_kind": "pointwise", "kl_ref": "sft"})
    assert m["eval/win_rate"] == pytest.approx(0.5)
    assert (m["eval/wins"], m["eval/ties"], m["eval/losses"]) == (1, 1, 1)
    assert m["eval/reward_policy"] == pytest.approx(1.0) and m["eval/reward_baseline"] == pytest.approx(5 / 3)
    assert m["eval/reward_gain"] == pytest.approx(-2 / 3)
    assert m["eval/fn_win_rate"] == pytest.approx(2.5 / 3)
    assert m["eval/kl"] == pytest.approx(0.2)
    assert m["eval/len_chars_policy"] == pytest.approx(3.0) and m["eval/len_chars_baseline"] == pytest.approx(1.0)
    assert m["eval/win_rate_ci_low"] <= 0.5 <= m["eval/win_rate_ci_high"]
    assert [s.outcome for s in samples] == [1.0, 0.5, 0.0]
    pairwise = summarize(samples, cfg, {"reward_kind": "pairwise", "kl_ref": None})  # P = reward_policy
    assert pairwise["eval/win_rate"] == pytest.approx((1 + 1 + 0) / 3) and "eval/kl" not in pairwise


def test_identical_answers_tie_whatever_the_judge_numbers_say():
    """A reward model scored one text 1.9e-6 apart in two batches (seen in a quickstart run): still a tie."""
    cfg = load_config(EvalConfig, None, ["data.prompts=[x]", "bootstrap.resamples=200"])
    samples = [Sample(id="0", prompt="p", policy="efcbc", baseline="efcbc", reward_policy=10.3357353,
                      reward_baseline=10.3357334),
               Sample(id="1", prompt="p", policy="efcbd", baseline="efcbc", reward_policy=10.3357353,
                      reward_baseline=10.3357334)]
    m = summarize(samples, cfg, {"reward_kind": "pointwise", "kl_ref": None})
    assert [s.outcome for s in samples] == [0.5, 1.0]  # different texts keep the judge's verdict
    assert m["eval/win_rate"] == pytest.approx(0.75)


def test_report_files_and_mlflow(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    train_id, _ = tracking.open_run(uri, "lipo", "train-1", "train")
    run_id, _ = tracking.open_run(uri, "lipo", "eval-1", "eval", parent_run_id=train_id)
    rows = sample_rows(_samples())
    metrics = {"eval/win_rate": 0.5, "eval/kl": 0.2}
    out = write_report(tmp_path / "eval", rows, metrics, {"reward_kind": "pointwise", "judge_function": "f"})
    assert {p.name for p in out.iterdir()} == {"samples.jsonl", "metrics.json", "rewards_hist.png",
                                               "function_hist.png"}
    assert (out / "rewards_hist.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log_report(uri, run_id, out, rows, metrics, {"eval.train_run_id": train_id})
    c = tracking.client(uri)
    run = c.get_run(run_id)
    assert run.data.metrics == metrics
    assert run.data.tags["eval.train_run_id"] == train_id and run.data.tags["mlflow.parentRunId"] == train_id
    arts = {a.path for a in c.list_artifacts(run_id, "eval")}
    assert {"eval/samples_table.json", "eval/rewards_hist.png", "eval/samples.jsonl"} <= arts
    table = json.loads(Path(c.download_artifacts(run_id, "eval/samples_table.json", str(tmp_path))).read_text())
    assert table["columns"][:4] == ["id", "prompt", "policy", "baseline"]
    assert len(table["data"]) == 3 and "reward_policy" in table["columns"]


def test_train_run_id_from_policy_uri(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert train_run_id("given", "runs:/abc/model", uri) == "given"
    assert train_run_id(None, "runs:/abc/model", uri) == "abc"
    assert train_run_id(None, "builtin:tiny-llama", uri) is None
    run_id, _ = tracking.open_run(uri, "lipo", "train-2", "train")
    c = tracking.client(uri)
    c.create_registered_model("lipo-policy")
    mv = c.create_model_version("lipo-policy", f"runs:/{run_id}/model", run_id=run_id)
    c.set_registered_model_alias("lipo-policy", "champion", mv.version)
    assert train_run_id(None, "models:/lipo-policy@champion", uri) == run_id
    assert train_run_id(None, f"models:/lipo-policy/{mv.version}", uri) == run_id
    assert train_run_id(None, "models:/missing@x", uri) is None
