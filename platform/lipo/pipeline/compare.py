"""`lipo compare [CONFIG.yaml]`: the paper's comparison of objectives (its Table 1), with paired statistics over
prompts and training seeds, the list-size ablation and the lambda-weight ablation.

    rows = compare(load_config(PipelineConfig, "configs/quickstart.yaml"))       # the copy world
    rows = compare(load_config(PipelineConfig, "configs/sort.yaml"))             # the sort world (graded quality)

On one fixed set of lists (built once by the pipeline's upstream stages, `lipo.pipeline.run.upstream`), each variant
is trained once per seed (`compare.seeds`: train.seed, train.seed + 1, ...) and evaluated by proxy (reward model)
and gold (function judge) win rate against the SFT policy. The variants:
- every objective in `compare.objectives` at the full K (LiPO-lambda with `train.objective.lambda_weight`, the
  reference every difference is taken against);
- `compare.ablation_objectives` on the lists subsampled to each smaller K in `compare.list_sizes`;
- LiPO-lambda at the full K with each other weight in `compare.lambda_weights`.

Pairing is by design: every evaluation uses the same prompts and the same SFT baseline samples (the evaluation's
sampling seeds are fixed per prompt and not varied with the training seed), and training seed s gives every variant
the same data order, so `lipo.evaluation.paired` bootstraps differences over (seed, prompt) pairs. The report
(`lipo.pipeline.report`) goes under `<output_dir>/compare/` and to an MLflow parent run whose child runs are the
trainings and evaluations. A rerun skips the variants already done (`lipo.pipeline.ledger`); the report's wall time
counts this invocation, and its compute time sums every stage's own wall time, also of the skipped ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Variant:
    objective: str
    k: int
    weight: str | None  # LiPO-lambda's weight; None for the other objectives
    seed: int

    def tag(self, reference_weight: str, base_seed: int) -> str:
        """Run-name part; the reference weight and the base seed add nothing, so one-seed runs keep their names."""
        tag = f"{self.objective}-k{self.k}"
        if self.weight is not None and self.weight != reference_weight:
            tag += f"-{self.weight}"
        return tag if self.seed == base_seed else f"{tag}-s{self.seed}"


def variants(cfg: PipelineConfig, full_k: int, reference_weight: str, base_seed: int) -> list[Variant]:
    """Every (objective, K, weight) to train: the objectives once per seed, then the ablations once per ablation
    seed, so a comparison stopped part-way holds the main table's seeds first (a rerun skips what is done)."""
    def weight(obj: str) -> str | None:
        return reference_weight if obj == "lambda" else None

    c = cfg.compare
    main = [(obj, full_k, weight(obj)) for obj in c.objectives]
    ablations = [(obj, k, weight(obj)) for obj in c.ablation_objectives for k in c.list_sizes if k < full_k]
    ablations += [("lambda", full_k, w) for w in c.lambda_weights]
    out = [Variant(obj, k, w, base_seed + i) for i in range(c.seeds) for obj, k, w in main]
    out += [v for i in range(c.ablation_seeds) for obj, k, w in ablations
            if (v := Variant(obj, k, w, base_seed + i)) not in out]  # lambda's reference weight is a main run
    return out


def compare(cfg: PipelineConfig) -> list[dict]:
    start = time.monotonic()
    paths = Paths.of(cfg)
    uri = tracking.resolve_uri(cfg.tracking_uri, str(paths.root))
    stages = resolve(cfg, uri)
    if stages.evaluate.server.url:
        raise ConfigError("evaluate.server.url: compare serves each trained policy itself; leave it unset")
    ledger = Ledger(paths.root)
    ref_weight, base_seed = stages.train.objective.lambda_weight, stages.train.seed
    with tracking.stage_run(uri, cfg.experiment, f"{cfg.name}-compare", "compare", output=paths.root) as parent:
        up = upstream(cfg, paths, stages, ledger, parent.run_id)
        full_k = stages.build_lists.generate.num_candidates if stages.build_lists.generate else max(
            cfg.compare.list_sizes)
        todo = variants(cfg, full_k, ref_weight, base_seed)
        runs = []
        for i, v in enumerate(todo):
            print(f"[lipo] compare: variant {i + 1}/{len(todo)}: {v.tag(ref_weight, base_seed)}", flush=True)
            runs.append(run_variant(cfg, up, ledger, v, full_k, ref_weight))
        out_dir = write_report(runs, paths.compare, full_k=full_k, reference_weight=ref_weight, name=cfg.name,
                               world=cfg.world.task if cfg.world else None,
                               resamples=stages.evaluate.bootstrap.resamples,
                               confidence=stages.evaluate.bootstrap.confidence, seed=stages.evaluate.bootstrap.seed,
                               wall_s=time.monotonic() - start,
                               compute_s=sum(r.get("wall_s") or 0.0 for r in [*up.results.values(), *runs]))
        parent.log_artifacts(out_dir, "compare")
    print(f"[lipo] comparison report: {out_dir / 'report.md'}", flush=True)
    return runs


def run_variant(cfg: PipelineConfig, up: Upstream, ledger: Ledger, v: Variant, full_k: int, ref_weight: str) -> dict:
    """Train the variant on the lists cut to `v.k` responses and evaluate it: one run of the report."""
    tag = v.tag(ref_weight, up.stages.train.seed)
    built = Path(up.stages.build_lists.output.dir)
    lists = built if v.k >= full_k else built.with_name(f"{built.name}-k{v.k}") / "lists.parquet"
    if v.k < full_k and not lists.exists():  # one subsample per K, shared by every seed and objective
        subsample_lists(built, v.k, lists, seed=up.stages.train.seed)
    stage, tcfg = train_stage(cfg, up.stages, v, tag, lists)
    tr = ledger.run(stage, tcfg, train_policy, tcfg, up.parent_run_id)
    ecfg = variant_eval_config(cfg, up.stages, tag, tr)
    ev = ledger.run(f"eval-{tag}", ecfg, evaluate_policy, ecfg)
    return {"objective": v.objective, "K": v.k, "weight": v.weight, "seed": v.seed,
            "train_run_id": tr["run_id"], "eval_run_id": ev["run_id"], "metrics": ev["metrics"],
            "samples": str(Path(ev["report_dir"]) / "samples.jsonl"),
            "wall_s": (tr.get("wall_s") or 0.0) + (ev.get("wall_s") or 0.0)}


def train_stage(cfg: PipelineConfig, stages: StageConfigs, v: Variant, tag: str,
                lists: Path) -> tuple[str, TrainConfig]:
    """The ledger stage and config that train `v`: the pipeline's own `train` stage when `v` is exactly the policy
    `lipo run` trains (same objective, weight, seed and lists), so `lipo run` then `lipo compare` trains it once."""
    tcfg = variant_train_config(cfg, stages, v, tag, lists)
    if tcfg.model_copy(update={"run_name": None}) == stages.train.model_copy(update={"run_name": None}):
        return "train", stages.train
    return f"train-{tag}", tcfg


def variant_train_config(cfg: PipelineConfig, stages: StageConfigs, v: Variant, tag: str,
                         lists: Path) -> TrainConfig:
    tcfg = stages.train.model_copy(deep=True)
    tcfg.objective.name = v.objective
    if v.weight is not None:
        tcfg.objective.lambda_weight = v.weight
    tcfg.seed = v.seed
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
