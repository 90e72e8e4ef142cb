"""`lipo compare [CONFIG.yaml]`: the paper's comparison of objectives (its Table 1) and the list-size ablation.

    rows = compare(load_config(PipelineConfig, "configs/quickstart.yaml"))

On one fixed set of lists (built once by the pipeline's upstream stages, `lipo.pipeline.run.upstream`), every
objective in `compare.objectives` is trained with the same budget and seeds and evaluated by proxy (reward model)
and gold (function judge) win rate against the SFT policy; `compare.ablation_objectives` are also trained on the
lists subsampled to each of `compare.list_sizes`. Writes `report.md`, `report.csv` and `winrate_vs_k.png` under
`<output_dir>/compare/`, and logs them to an MLflow parent run whose child runs are the trainings and evaluations.
"""

from __future__ import annotations

from pathlib import Path

from lipo import tracking
from lipo.config import config_hash
from lipo.errors import ConfigError
from lipo.evaluation.config import EvalConfig
from lipo.pipeline.ablation import subsample_lists
from lipo.pipeline.config import Paths, PipelineConfig
from lipo.pipeline.ledger import Ledger
from lipo.pipeline.report import write_report
from lipo.pipeline.resolve import StageConfigs, resolve
from lipo.pipeline.run import Upstream, evaluate_policy, train_policy, upstream
from lipo.training.config import TrainConfig

REPORTED = ("eval/win_rate", "eval/win_rate_ci_low", "eval/win_rate_ci_high", "eval/fn_win_rate",
            "eval/fn_win_rate_ci_low", "eval/fn_win_rate_ci_high", "eval/kl")


def variants(cfg: PipelineConfig, full_k: int) -> list[tuple[str, int]]:
    """(objective, K) pairs to train: every objective at the full K, then the ablation's smaller K."""
    out = [(obj, full_k) for obj in cfg.compare.objectives]
    out += [(obj, k) for obj in cfg.compare.ablation_objectives for k in cfg.compare.list_sizes
            if k < full_k and (obj, k) not in out]
    return out


def compare(cfg: PipelineConfig) -> list[dict]:
    paths = Paths.of(cfg)
    uri = tracking.resolve_uri(cfg.tracking_uri, str(paths.root))
    stages = resolve(cfg, uri)
    if stages.evaluate.server.url:
        raise ConfigError("evaluate.server.url: compare serves each trained policy itself; leave it unset")
    ledger = Ledger(paths.root)
    with tracking.stage_run(uri, cfg.experiment, f"{cfg.name}-compare", "compare", output=paths.root) as parent:
        up = upstream(cfg, paths, stages, ledger, parent.run_id)
        full_k = stages.build_lists.generate.num_candidates if stages.build_lists.generate else max(
            cfg.compare.list_sizes)
        rows = [variant(cfg, up, ledger, obj, k, full_k) for obj, k in variants(cfg, full_k)]
        out_dir = write_report(rows, paths.compare, full_k, cfg.name)
        parent.log_artifacts(out_dir, "compare")
    print(f"[lipo] comparison report: {out_dir / 'report.md'}", flush=True)
    return rows


def variant(cfg: PipelineConfig, up: Upstream, ledger: Ledger, objective: str, k: int, full_k: int) -> dict:
    """Train `objective` on the lists cut to `k` responses, evaluate it; one row of the report."""
    tag = f"{objective}-k{k}"
    built = Path(up.stages.build_lists.output.dir)
    lists = built if k >= full_k else built.with_name(f"{built.name}-k{k}") / "lists.parquet"
    if k < full_k and not lists.exists():
        subsample_lists(built, k, lists, seed=up.stages.train.seed)
    tcfg = variant_train_config(cfg, up.stages, objective, tag, lists)
    tr = ledger.run(f"train-{tag}", tcfg, train_policy, tcfg, up.parent_run_id)
    ecfg = variant_eval_config(cfg, up.stages, tag, tr)
    ev = ledger.run(f"eval-{tag}", ecfg, evaluate_policy, ecfg)
    return {"objective": objective, "K": k, **{key: ev["metrics"].get(key) for key in REPORTED},
            "train_run_id": tr["run_id"], "eval_run_id": ev["run_id"]}


def variant_train_config(cfg: PipelineConfig, stages: StageConfigs, objective: str, tag: str,
                         lists: Path) -> TrainConfig:
    tcfg = stages.train.model_copy(deep=True)
    tcfg.objective.name = objective
    tcfg.data.train = [str(lists)]
    return _hash_named(tcfg, f"{cfg.name}-{tag}")


def variant_eval_config(cfg: PipelineConfig, stages: StageConfigs, tag: str, trained: dict) -> EvalConfig:
    ecfg = stages.evaluate.model_copy(deep=True)
    ecfg.serve.policy.model = trained["model_dir"]
    ecfg.tracking.train_run_id = trained["run_id"]
    return _hash_named(ecfg, f"{cfg.name}-eval-{tag}")


def _hash_named(stage_cfg, prefix: str):
    """`stage_cfg` with its run named `<prefix>-<hash of the rest of its config>` (a changed variant is a new run)."""
    stage_cfg.run_name = f"{prefix}-{config_hash(stage_cfg.model_copy(update={'run_name': None}))[:8]}"
    return stage_cfg
