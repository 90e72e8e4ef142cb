"""`lipo run [CONFIG.yaml] [key=value ...]`: the whole workflow, each stage the library's own driver called once.

    (bootstrap world) -> sft -> preferences -> train-rm -> build-lists -> train (LiPO) -> evaluate -> register

    summary = run_pipeline(load_config(PipelineConfig, "configs/quickstart.yaml"))

`preferences` (world only) samples the reward model's lists from the SFT policy and labels them with the gold reward.
Every stage config is resolved and validated first (`lipo.pipeline.resolve`). One MLflow parent run holds the
stages' child runs and the final summary; a failed stage marks it FAILED. Rerunning the same config skips the
finished stages (`lipo.pipeline.ledger`). `lipo compare` (`compare.py`) shares everything up to the lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lipo import tracking
from lipo.bootstrap import WORLDS
from lipo.evaluation.config import EvalConfig
from lipo.evaluation.stage import run_eval
from lipo.lists.build import build_lists
from lipo.lists.config import BuildListsConfig
from lipo.pipeline.config import Paths, PipelineConfig, WorldConfig
from lipo.pipeline.ledger import Ledger
from lipo.pipeline.resolve import StageConfigs, resolve
from lipo.pipeline.summary import register_model, report_summary
from lipo.training.config import RewardTrainConfig, SFTConfig, TrainConfig
from lipo.training.launch import TrainResult, launch
from lipo.training.reward import RewardTask
from lipo.training.tasks import ListwiseTask, SFTTask

Result = dict[str, Any]  # what a stage leaves in its ledger marker (JSON)


@dataclass
class Upstream:
    """Everything before the LiPO training, done: what `lipo run` and `lipo compare` share."""

    stages: StageConfigs
    parent_run_id: str
    results: dict[str, Result]


def run_pipeline(cfg: PipelineConfig) -> dict:
    paths = Paths.of(cfg)
    uri = tracking.resolve_uri(cfg.tracking_uri, str(paths.root))
    stages = resolve(cfg, uri)  # every stage config validated before any work starts
    ledger = Ledger(paths.root)
    with tracking.stage_run(uri, cfg.experiment, cfg.name, "pipeline", output=paths.root) as parent:
        up = upstream(cfg, paths, stages, ledger, parent.run_id)
        res = up.results
        res["train"] = ledger.run("train", stages.train, train_policy, stages.train, parent.run_id)
        stages.evaluate.tracking.train_run_id = res["train"]["run_id"]  # links the runs; a new policy re-evaluates
        res["evaluate"] = ledger.run("evaluate", stages.evaluate, evaluate_policy, stages.evaluate)
        if cfg.register.name:
            what = {**cfg.register.model_dump(), "train_run_id": res["train"]["run_id"]}  # a new policy registers anew
            res["register"] = ledger.run("register", what, register_model, uri, res["train"]["run_id"],
                                         cfg.register.name, cfg.register.alias)
        return report_summary(parent, cfg, res, ledger.skipped)


def upstream(cfg: PipelineConfig, paths: Paths, stages: StageConfigs, ledger: Ledger, parent: str) -> Upstream:
    """Run the stages before training (world, sft, preferences, train-rm, build-lists), each once."""
    stages.evaluate.tracking.parent_run_id = parent
    if cfg.world is not None:
        ledger.run("world", cfg.world, write_world, paths, cfg.world)
    res: dict[str, Result] = {}
    if stages.sft is not None:
        res["sft"] = ledger.run("sft", stages.sft, train_sft, stages.sft, parent)
    if stages.preferences is not None:
        res["preferences"] = ledger.run("preferences", stages.preferences, make_lists, stages.preferences, parent)
    if stages.reward_model is not None:
        res["reward_model"] = ledger.run("reward_model", stages.reward_model, train_reward_model,
                                         stages.reward_model, parent)
    res["build_lists"] = ledger.run("build_lists", stages.build_lists, make_lists, stages.build_lists, parent)
    return Upstream(stages, parent, res)


# One function per stage: run it with the library's driver, keep what later stages and the summary need.
def write_world(paths: Paths, w: WorldConfig) -> Result:
    files = WORLDS[w.task].make_world(paths.world, w.n_demos, w.n_rm_lists, w.n_prompts, w.n_eval, w.noise,
                                      w.rm_list_size, w.seed)
    return {name: str(path) for name, path in files.items()}


def train_sft(cfg: SFTConfig, parent: str) -> Result:
    return trained(launch(SFTTask(cfg), parent_run_id=parent))


def train_reward_model(cfg: RewardTrainConfig, parent: str) -> Result:
    return trained(launch(RewardTask(cfg), parent_run_id=parent))


def train_policy(cfg: TrainConfig, parent: str) -> Result:
    return trained(launch(ListwiseTask(cfg), parent_run_id=parent))


def make_lists(cfg: BuildListsConfig, parent: str) -> Result:
    r = build_lists(cfg, parent_run_id=parent)
    return {"run_id": r.run_id, "output_dir": str(r.output_dir), "counts": r.manifest.get("counts", {}),
            "labels": r.manifest.get("labels", {})}


def evaluate_policy(cfg: EvalConfig) -> Result:
    r = run_eval(cfg)
    return {"run_id": r.run_id, "metrics": r.metrics, "report_dir": str(r.report_dir)}


def trained(r: TrainResult) -> Result:
    return {"run_id": r.run_id, "model_dir": str(r.model_dir), "metrics": r.metrics}
