"""`lipo eval` end to end, through the Serve deployments over HTTP, with tiny models on local Ray.

- A tiny policy against itself: the win rate is a coin flip, so 0.5 lies inside its own bootstrap CI, and the KL
  estimate is 0 (same weights).
- A judge biased by construction (longer is better) and a baseline built to stop early: the policy, which matches
  the bias, wins; swapping the sides makes it lose.
- With no server URL, `lipo eval` starts its own app, compares against the data's `reference` responses, and
  removes its app afterwards.
- The MLflow run holds the metrics, the sample table and the histogram, linked to the training run.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from lipo import tracking
from lipo.cli import app as cli

REPO = Path(__file__).resolve().parents[2]
PROMPTS = str(REPO / "examples/data/prompts.jsonl")  # 24 prompts, each with a short `reference`
KEY = "e2e-key-0123456789abcdef"
pytestmark = pytest.mark.slow


def short_model(path: Path) -> Path:
    """A tiny Llama whose next-token distribution is fixed: P(EOS) = 0.8 at every step, so it mostly stops at once.

    All layers write nothing (o_proj = down_proj = 0), every embedding is all-ones and the final norm weight is 1, so
    the last hidden state is the all-ones vector; lm_head is zero except lm_head[EOS, 0] = a, making the logits
    a for EOS and 0 for the other 258 tokens: P(EOS) = e^a / (e^a + 258) = 0.8 for a = ln(4 * 258).
    """
    import torch

    from lipo.models.tiny import EOS, byte_tokenizer, tiny_llama

    model, tok = tiny_llama(seed=0), byte_tokenizer()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.fill_(1.0)
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[tok.convert_tokens_to_ids(EOS), 0] = math.log(4 * 258)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def server(ray_local, tmp_path_factory):
    """One app for the module: the tiny policy, the short-stopping model as `short`, a pairwise reward model."""
    from ray import serve

    from lipo.config import load_config
    from lipo.serving.local import start_local
    from lipo.serving.config import ServeConfig

    short = short_model(tmp_path_factory.mktemp("short"))
    one = "{num_cpus: 0.1}"
    cfg = load_config(ServeConfig, None, [
        "app_name=lipo-e2e", "http.port=0", f"policy.deployment={one}", f"reward.deployment={one}",
        f"baseline={{model: {short}, name: short, deployment: {one}}}", "ingress.num_cpus=0.1",
        "reward.kind=pairwise"])
    os.environ["LIPO_API_KEY"] = KEY  # the evaluation reads the running server's key from server.api_key_env
    yield start_local(cfg, api_key=KEY, log_level="WARNING")
    os.environ.pop("LIPO_API_KEY", None)
    serve.shutdown()


def lipo_eval(tmp_path: Path, cfg: dict, *overrides: str) -> dict:
    """Run `lipo eval` in-process (the session's Ray); returns the metrics it reported."""
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "runs"), "data": {"prompts": [PROMPTS]},
                                    "bootstrap": {"resamples": 1000}, **cfg}))
    res = CliRunner().invoke(cli, ["eval", str(path), *overrides])
    assert res.exit_code == 0, (res.output, res.exception)
    report = next((tmp_path / "runs").glob("*/eval/metrics.json"))
    return json.loads(report.read_text())["metrics"]


def test_policy_against_itself_is_a_coin_flip_and_mlflow_holds_the_report(server, tmp_path):
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    (tmp_path / "runs").mkdir()
    train_id, _ = tracking.open_run(uri, "lipo", "train-e2e", "train")
    m = lipo_eval(tmp_path, {"server": {"url": server}, "baseline": "model", "policy_model": "policy",
                             "baseline_model": "policy", "run_name": "self-eval",
                             "sampling": {"max_tokens": 12, "seed": 1},
                             "tracking": {"uri": uri, "train_run_id": train_id, "parent_run_id": train_id}})
    print(f"\n[eval] self: win rate {m['eval/win_rate']:.3f} "
          f"[{m['eval/win_rate_ci_low']:.3f}, {m['eval/win_rate_ci_high']:.3f}], KL {m['eval/kl']:.2e}")
    assert m["eval/prompts"] == 24
    assert m["eval/win_rate_ci_low"] <= 0.5 <= m["eval/win_rate_ci_high"]
    assert m["eval/win_rate_ci_low"] < m["eval/win_rate_ci_high"]  # distinct seeds per side: not all ties
    assert abs(m["eval/kl"]) < 1e-4
    assert {"eval/reward_policy", "eval/reward_baseline", "eval/reward_gain", "eval/len_chars_policy",
            "eval/len_tokens_baseline"} <= set(m)

    c = tracking.client(uri)
    run = c.search_runs([c.get_experiment_by_name("lipo").experiment_id],
                        "tags.mlflow.runName = 'self-eval'")[0]
    assert run.data.metrics["eval/win_rate"] == pytest.approx(m["eval/win_rate"])
    assert run.data.tags["eval.train_run_id"] == train_id and run.data.tags["mlflow.parentRunId"] == train_id
    assert run.data.tags["lipo.stage"] == "eval" and run.info.status == "FINISHED"
    arts = {a.path for a in c.list_artifacts(run.info.run_id, "eval")}
    assert {"eval/samples_table.json", "eval/rewards_hist.png", "eval/samples.jsonl", "eval/metrics.json"} <= arts
    table = json.loads(Path(c.download_artifacts(run.info.run_id, "eval/samples_table.json", str(tmp_path)))
                       .read_text())
    assert len(table["data"]) == 24
    assert {"prompt", "policy", "baseline", "reward_policy", "reward_baseline"} <= set(table["columns"])


def test_pairwise_compare_matches_the_model(server):
    """/v1/compare of a pairwise reward model equals the debiased pairwise_matrix entry, to 1e-5."""
    import httpx

    from lipo.models.reward import pairwise_matrix
    from lipo.models.reward_loading import load_reward_model

    rm, tok = load_reward_model("builtin:tiny-reward")
    body = {"prompt": "Reverse: abc", "first": "cba", "second": "abc"}
    got = httpx.post(f"{server}/v1/compare", headers={"Authorization": f"Bearer {KEY}"}, json=body).json()
    assert got["kind"] == "pairwise"
    assert got["probability"] == pytest.approx(pairwise_matrix(rm, tok, "Reverse: abc", ["cba", "abc"])[0, 1].item(),
                                               abs=1e-5)


@pytest.mark.parametrize("policy,baseline,wins", [("policy", "short", True), ("short", "policy", False)])
def test_biased_judge_favours_the_policy_matching_its_bias(server, tmp_path, policy, baseline, wins):
    m = lipo_eval(tmp_path, {"server": {"url": server}, "baseline": "model", "policy_model": policy,
                             "baseline_model": baseline, "kl": False, "sampling": {"max_tokens": 12},
                             "judge": {"reward_model": True, "function": "lipo.evaluation.winrate:response_length"}})
    print(f"\n[eval] {policy} vs {baseline}, longer-is-better judge: win rate {m['eval/fn_win_rate']:.3f} "
          f"[{m['eval/fn_win_rate_ci_low']:.3f}, {m['eval/fn_win_rate_ci_high']:.3f}]; "
          f"lengths {m['eval/len_chars_policy']:.1f} vs {m['eval/len_chars_baseline']:.1f}")
    if wins:
        assert m["eval/fn_win_rate"] > 0.85 and m["eval/fn_win_rate_ci_low"] > 0.5
    else:
        assert m["eval/fn_win_rate"] < 0.15 and m["eval/fn_win_rate_ci_high"] < 0.5
    assert "eval/kl" not in m


def test_without_url_starts_its_own_app_and_uses_references(server, tmp_path):
    from ray import serve

    m = lipo_eval(tmp_path, {"baseline": "auto", "kl": False, "sampling": {"max_tokens": 12},
                             "judge": {"reward_model": False, "function": "lipo.evaluation.winrate:response_length"},
                             "serve": {"reward": None, "policy": {"deployment": {"num_cpus": 0.1}},
                                       "ingress": {"num_cpus": 0.1}}})
    # The references are 3-6 letter words; the tiny policy rambles for 12 tokens, so it is longer and wins.
    assert m["eval/fn_win_rate"] > 0.85 and "eval/len_tokens_baseline" not in m
    assert set(serve.status().applications) == {"lipo-e2e"}  # its own app is gone; the module's Serve stays
