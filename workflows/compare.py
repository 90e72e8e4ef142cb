"""`lipo compare [CONFIG.yaml]`: the paper's comparison of objectives (its Table 1) and the list-size ablation.

On one fixed set of lists (built once by the pipeline's upstream stages), every objective in `compare.objectives`
is trained with the same budget and seeds and evaluated by proxy (reward model) and gold (function judge) win rate
against the SFT policy; `compare.ablation_objectives` are also trained on the lists subsampled to each of
`compare.list_sizes`. Writes `report.md`, `report.csv` and `winrate_vs_k.png` under `<output_dir>/compare/`, and
logs them to an MLflow parent run whose child runs are the individual trainings and evaluations.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lipo.pipeline.config import PipelineConfig


def variants(cfg: PipelineConfig, full_k: int) -> list[tuple[str, int]]:
    out = [(obj, full_k) for obj in cfg.compare.objectives]
    out += [(obj, k) for obj in cfg.compare.ablation_objectives for k in cfg.compare.list_sizes
            if k < full_k and (obj, k) not in out]
    return out


def run(cfg: PipelineConfig) -> list[dict]:
    from lipo import tracking
    from lipo.config import config_hash
    from lipo.pipeline.ablation import subsample_lists
    from lipo.pipeline.report import write_report
    from lipo.pipeline.stages import run_once
    from workflows import evaluate, train
    from workflows.pipeline import eval_summary, train_summary, upstream

    p, uri, stages, parent, res, skipped = upstream(cfg, f"{cfg.name}-compare", "compare")
    if stages["evaluate"].server.url:
        from lipo.errors import ConfigError

        raise ConfigError("evaluate.server.url: compare serves each trained policy itself; leave it unset")
    full_k = stages["build_lists"].generate.num_candidates if stages["build_lists"].generate else max(
        cfg.compare.list_sizes)
    rows = []
    for obj, k in variants(cfg, full_k):
        tag = f"{obj}-k{k}"
        built = Path(stages["build_lists"].output.dir)
        lists = built if k >= full_k else built.with_name(f"{built.name}-k{k}") / "lists.parquet"
        if k < full_k and not lists.exists():
            subsample_lists(built, k, lists, seed=stages["train"].seed)
        tcfg = stages["train"].model_copy(deep=True)
        tcfg.objective.name = obj
        tcfg.data.train = [str(lists)]
        tcfg.run_name = f"{cfg.name}-{tag}-{config_hash(tcfg.model_copy(update={'run_name': None}))[:8]}"
        tr = run_once(p["root"], f"train-{tag}", tcfg,
                      lambda: train_summary(train.run(tcfg, parent_run_id=parent)), skipped)
        ecfg = stages["evaluate"].model_copy(deep=True)
        ecfg.serve.policy.model = tr["model_dir"]
        ecfg.tracking.train_run_id = tr["run_id"]
        ecfg.run_name = f"{cfg.name}-eval-{tag}-{config_hash(ecfg.model_copy(update={'run_name': None}))[:8]}"
        ev = run_once(p["root"], f"eval-{tag}", ecfg, lambda: eval_summary(evaluate.run(ecfg)), skipped)
        rows.append({"objective": obj, "K": k, **{key: ev["metrics"].get(key) for key in (
            "eval/win_rate", "eval/win_rate_ci_low", "eval/win_rate_ci_high", "eval/fn_win_rate",
            "eval/fn_win_rate_ci_low", "eval/fn_win_rate_ci_high", "eval/kl")},
            "train_run_id": tr["run_id"], "eval_run_id": ev["run_id"]})
    out_dir = write_report(rows, p["root"] / "compare", full_k, cfg.name)
    tracking.log_artifacts(uri, parent, out_dir, "compare")
    tracking.finish_run(uri, parent)
    print(f"[lipo] comparison report: {out_dir / 'report.md'}", flush=True)
    return rows


if __name__ == "__main__":
    from lipo.config import load_config
    from workflows.pipeline import DEFAULT_CONFIG

    args = sys.argv[1:]
    run(load_config(PipelineConfig, args[0] if args else str(DEFAULT_CONFIG), args[1:]))
