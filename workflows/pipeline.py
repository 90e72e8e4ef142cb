"""`lipo run [CONFIG.yaml] [key=value ...]`: the whole workflow, each stage the existing component called once.

    (bootstrap world) -> sft -> preferences -> train-rm -> build-lists -> train (LiPO) -> evaluate -> register

`preferences` (world only) samples the reward model's lists from the SFT policy and labels them with the gold reward.

With no config, `configs/quickstart.yaml` (the embedded default). One MLflow parent run holds the stages' child runs
and the final summary. Rerunning the same config skips the finished stages. Ray job entrypoint:
`python -m workflows.pipeline CONFIG.yaml`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lipo.pipeline.config import PipelineConfig

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def upstream(cfg: PipelineConfig, parent_name: str, kind: str):
    """Open the parent run and run the stages before training (world, sft, preferences, train-rm, build-lists),
    each once."""
    from lipo import tracking
    from lipo.bootstrap.copytask import make_world
    from lipo.pipeline.config import paths, resolve
    from lipo.pipeline.stages import run_once
    from workflows import build_lists, sft, train_rm

    p = paths(cfg)
    uri = tracking.resolve_uri(cfg.tracking_uri, str(p["root"]))
    stages = resolve(cfg, uri)  # every stage config validated before any work starts
    parent, _ = tracking.open_run(uri, cfg.experiment, parent_name, kind)
    stages["evaluate"].tracking.parent_run_id = parent
    skipped: list[str] = []
    if cfg.world is not None:
        w = cfg.world
        run_once(p["root"], "world", w, lambda: {k: str(v) for k, v in make_world(
            p["world"], w.n_demos, w.n_rm_lists, w.n_prompts, w.n_eval, w.noise, w.rm_list_size, w.seed).items()},
            skipped)
    res: dict[str, dict] = {}
    if "sft" in stages:
        res["sft"] = run_once(p["root"], "sft", stages["sft"],
                              lambda: train_summary(sft.run(stages["sft"], parent_run_id=parent)), skipped)
    if "preferences" in stages:
        res["preferences"] = run_once(p["root"], "preferences", stages["preferences"], lambda: lists_summary(
            build_lists.run(stages["preferences"], parent_run_id=parent)), skipped)
    if "reward_model" in stages:
        res["reward_model"] = run_once(p["root"], "reward_model", stages["reward_model"], lambda: train_summary(
            train_rm.run(stages["reward_model"], parent_run_id=parent)), skipped)
    res["build_lists"] = run_once(p["root"], "build_lists", stages["build_lists"], lambda: lists_summary(
        build_lists.run(stages["build_lists"], parent_run_id=parent)), skipped)
    return p, uri, stages, parent, res, skipped


def run(cfg: PipelineConfig) -> dict:
    from lipo import tracking
    from lipo.pipeline.stages import run_once
    from lipo.pipeline.summary import register_model, report_summary
    from workflows import evaluate, train

    p, uri, stages, parent, res, skipped = upstream(cfg, cfg.name, "pipeline")
    res["train"] = run_once(p["root"], "train", stages["train"],
                            lambda: train_summary(train.run(stages["train"], parent_run_id=parent)), skipped)
    stages["evaluate"].tracking.train_run_id = res["train"]["run_id"]  # links the runs; a new policy re-evaluates
    res["evaluate"] = run_once(p["root"], "evaluate", stages["evaluate"],
                               lambda: eval_summary(evaluate.run(stages["evaluate"])), skipped)
    if cfg.register.name:
        what = {**cfg.register.model_dump(), "train_run_id": res["train"]["run_id"]}  # a new policy registers anew
        res["register"] = run_once(p["root"], "register", what, lambda: register_model(
            uri, res["train"]["run_id"], cfg.register.name, cfg.register.alias), skipped)
    summary = report_summary(uri, parent, cfg, res, skipped)
    tracking.finish_run(uri, parent)
    return summary


def train_summary(r) -> dict:
    return {"run_id": r.run_id, "model_dir": str(r.model_dir), "metrics": r.metrics}


def lists_summary(r) -> dict:
    return {"run_id": r.run_id, "output_dir": str(r.output_dir), "counts": r.manifest.get("counts", {}),
            "labels": r.manifest.get("labels", {})}


def eval_summary(r) -> dict:
    return {"run_id": r.run_id, "metrics": r.metrics, "report_dir": str(r.report_dir)}


def main(argv: list[str] | None = None) -> None:
    from lipo.config import load_config

    args = sys.argv[1:] if argv is None else argv
    config = args[0] if args and "=" not in args[0] else str(DEFAULT_CONFIG)
    overrides = args[1:] if args and "=" not in args[0] else args
    run(load_config(PipelineConfig, config, overrides))


if __name__ == "__main__":
    main()
