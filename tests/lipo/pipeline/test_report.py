"""The comparison report on synthetic runs: tables, claims verdicts, CSV columns, plots, missing parts, bad input.

Synthetic world: 40 prompts p0..p39, gold scores 1 (win) / 0 (loss) against an SFT score of 0.5, so a policy that
"wins the first w prompts" has gold outcome 1 on p < w and 0 elsewhere, the same on every seed unless stated.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from lipo.errors import LipoError
from lipo.pipeline.report import write_report

N = 40
# (objective, K, weight) -> prompts won on seed 0 and seed 1; lambda dcg K=8 is the reference
WINS = {("lambda", 8, "dcg"): (32, 30), ("pair_logistic", 8, None): (32, 30), ("list_mle", 8, None): (16, 16),
        ("softmax", 8, None): (40, 40), ("point_mse", 8, None): (20, 20),
        ("lambda", 2, "dcg"): (20, 20), ("lambda", 4, "dcg"): (28, 28), ("list_mle", 2, None): (16, 16),
        ("lambda", 8, "constant"): (24, 24), ("lambda", 8, "label_diff"): (32, 30)}


def _samples(path: Path, wins: int, proxy: bool = True, ids=None) -> str:
    with open(path, "w") as f:
        for p, pid in enumerate(ids or [f"p{i}" for i in range(N)]):
            won = p < wins
            f.write(json.dumps({"id": pid, "policy": "x", "baseline": "y", "fn_policy": float(won), "fn_baseline": 0.5,
                                "fn_outcome": float(won), "outcome": float(won) if proxy else None}) + "\n")
    return str(path)


def _runs(tmp_path: Path, table: dict, seeds=(0, 1), proxy: bool = True) -> list[dict]:
    runs = []
    for (obj, k, w), per_seed in table.items():
        for s in seeds:
            wins = per_seed[s]
            path = _samples(tmp_path / f"{obj}-{k}-{w}-{s}.jsonl", wins, proxy)
            runs.append({"objective": obj, "K": k, "weight": w, "seed": s, "train_run_id": f"t{len(runs)}",
                         "eval_run_id": f"e{len(runs)}", "samples": path, "wall_s": 10.0,
                         "metrics": {"eval/win_rate": wins / N, "eval/fn_win_rate": wins / N, "eval/kl": 0.5}})
    return runs


def _csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_full_report_tables_verdicts_csv_and_plots(tmp_path):
    out = write_report(_runs(tmp_path, WINS), tmp_path / "out", full_k=8, reference_weight="dcg", name="synthetic",
                       world="copy", resamples=400, seed=0, wall_s=600.0)
    md = (out / "report.md").read_text()
    assert "# lipo compare: synthetic (world: copy)" in md and "wall time 10.0 min" in md and "40 evaluation" in md
    # lambda: (32 + 30) / 80 = 77.5%; per seed 80.0 / 75.0
    assert "| lambda (LiPO) | " in md and "77.5 (" in md and "80.0 / 75.0 (sd 3.5)" in md
    # pair-logistic = lambda cell by cell: Δ exactly 0 with [0, 0]; all head-to-heads tie
    assert "| pair-logistic | 77.5 (" in md and "+0.0 (+0.0 to +0.0) | 50.0 (50.0 to 50.0)" in md
    claims = md.split("## The paper's claims")[1].split("##")[0]
    lines = {line.split(":")[0]: line for line in claims.splitlines() if line.startswith("- ")}
    assert list(lines)[:3] == ["- lambda vs pair-logistic (DPO-BT)", "- lambda vs list-mle (DPO-PL)",
                               "- lambda vs softmax"]
    assert lines["- lambda vs pair-logistic (DPO-BT)"].count("**not distinguishable**") == 2
    # lambda - list-mle = (16 + 14) / 80 = +37.5 points; head-to-head 0.5 + 0.375 / 2 = 68.75%
    assert "+37.5 (" in lines["- lambda vs list-mle (DPO-PL)"]
    assert lines["- lambda vs list-mle (DPO-PL)"].count("**reproduced**") == 2
    # softmax wins everything: lambda - softmax = -(8 + 10) / 80 = -22.5 points
    assert "-22.5 (" in lines["- lambda vs softmax"] and lines["- lambda vs softmax"].count("**reversed**") == 2
    assert "- lambda vs point-mse" in lines and "CI width, pts: paired " in lines["- lambda vs softmax"]
    ablation = md.split("## List-size ablation")[1].split("##")[0]
    assert "| K=2 | K=4 | K=8 |" in ablation
    # lambda K=8 - K=2: (12 + 10) / 80 = +27.5 -> larger K helps; list-mle: 16 = 16 -> +0.0, not distinguishable
    assert "+27.5 (" in ablation and "| reproduced |" in ablation and "| not distinguishable |" in ablation
    weights = md.split("## Lambda-weight ablation")[1].split("##")[0]
    assert "| dcg (reference) |" in weights and "| constant | 60.0 (" in weights and "| label_diff | 77.5 (" in weights
    rows = {(r["objective"], r["K"], r["weight"]): r for r in _csv(out / "report.csv")}
    assert len(rows) == len(WINS)
    lm = rows[("list_mle", "8", "")]
    for col in ("seeds", "n_prompts", "proxy_win_rate_low", "gold_win_rate_high", "gold_seed_sd", "gold_delta_low",
                "gold_delta_unpaired_high", "proxy_delta_high", "h2h_gold_low", "kl", "wall_s"):
        assert lm[col] != "", col
    assert (lm["seeds"], lm["n_prompts"], float(lm["gold_delta"]), float(lm["h2h_gold"])) == ("2", "40", -0.375, 0.6875)
    assert float(lm["wall_s"]) == 20.0 and float(lm["kl"]) == 0.5
    assert rows[("lambda", "8", "dcg")]["gold_delta"] == ""  # the reference has no difference to itself
    assert len(_csv(out / "runs.csv")) == 2 * len(WINS)
    for png in ("winrate_vs_k.png", "delta_vs_lambda.png", "lambda_weights.png"):
        assert (out / png).stat().st_size > 1024 and f"]({png})" in md


def test_one_seed_no_proxy_no_reference_and_no_ablation(tmp_path):
    table = {k: v for k, v in WINS.items() if k[0] != "lambda" and k[1] == 8}
    out = write_report(_runs(tmp_path, table, seeds=(0,), proxy=False), tmp_path / "out", full_k=8,
                       reference_weight="dcg", name="small", world=None, resamples=200)
    md = (out / "report.md").read_text()
    assert "| list-mle | n/a | 40.0 (" in md and "| 40.0 |" in md  # no proxy; one seed: no sd
    assert "no paired differences" in md and "no proxy (reward model) outcome" in md
    assert "## The paper's claims" not in md and "ablation" not in md
    assert not (out / "delta_vs_lambda.png").exists() and not (out / "winrate_vs_k.png").exists()


def test_misaligned_prompts_and_bad_rows_are_refused(tmp_path):
    runs = _runs(tmp_path, {("lambda", 8, "dcg"): (4, 4), ("softmax", 8, None): (4, 4)})
    runs[-1]["samples"] = _samples(tmp_path / "other.jsonl", 4, ids=[f"p{i}" for i in range(N - 1)] + ["q"])
    with pytest.raises(LipoError, match="softmax K=8: seed 1 has no outcome for prompt 'p39'"):
        write_report(runs, tmp_path / "out", full_k=8, reference_weight="dcg", name="x", world=None, resamples=50)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "p0", "fn_outcome": 1.0, "fn_policy": 1.0}\n{"id": "p1", "fn_outcome": "win"}\n')
    runs[-1]["samples"] = str(bad)
    with pytest.raises(LipoError, match=r"bad.jsonl: row 2: field 'fn_outcome': expected a number"):
        write_report(runs, tmp_path / "out", full_k=8, reference_weight="dcg", name="x", world=None, resamples=50)
