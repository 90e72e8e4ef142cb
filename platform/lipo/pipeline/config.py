"""`PipelineConfig`: the config of `lipo run` and `lipo compare`, resolved into one config per stage.

Each stage section (`sft`, `reward_model`, `build_lists`, `train`, `evaluate`) is a *partial* stage config; the
pipeline fills in the wiring between stages (which model and which files a stage reads) and the shared tracking
store, and the user's keys win over those defaults. `resolve` validates every stage config up front, so a typo
anywhere fails before Ray starts, naming the key with its section (e.g. `train.optim.lr`).

    cfg = load_config(PipelineConfig, "configs/quickstart.yaml", ["train.optim.max_steps=10"])
    stages = resolve(cfg)          # {"sft": SFTConfig, "reward_model": RewardTrainConfig, ...}

`world` bootstraps the embedded quickstart task (`lipo.bootstrap.copytask`); with `world: null`, give your own
prompt files, models and data in the stage sections (and `sft: null` / `reward_model: null` to use existing models).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from lipo.config import Strict, format_validation_error
from lipo.errors import ConfigError
from lipo.losses import ObjectiveName


class WorldConfig(Strict):
    task: Literal["copy"] = "copy"
    n_demos: int = Field(400, ge=8)
    n_rm_lists: int = Field(300, ge=8)
    n_prompts: int = Field(128, ge=4)
    n_eval: int = Field(64, ge=4)
    noise: float = Field(0.5, ge=0, le=1)  # fraction of demonstrations with errors
    seed: int = 0


class RegisterConfig(Strict):
    name: str | None = None  # MLflow registered model name; null: do not register
    alias: str = "champion"


class CompareConfig(Strict):
    objectives: list[ObjectiveName] = ["point_mse", "point_sigmoid", "softmax", "pair_hinge", "pair_logistic",
                                       "list_mle", "lambda"]
    ablation_objectives: list[ObjectiveName] = ["lambda", "pair_logistic", "list_mle"]
    list_sizes: list[int] = [2, 4, 8]


class PipelineConfig(Strict):
    name: str = "quickstart"
    output_dir: str = "runs/quickstart"
    tracking_uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else sqlite:///<output_dir>/mlflow.db
    experiment: str = "lipo"
    world: WorldConfig | None = WorldConfig()
    sft: dict[str, Any] | None = {}
    reward_model: dict[str, Any] | None = {}
    build_lists: dict[str, Any] = {}
    train: dict[str, Any] = {}
    evaluate: dict[str, Any] = {}
    register: RegisterConfig = RegisterConfig()
    compare: CompareConfig = CompareConfig()


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def paths(cfg: PipelineConfig) -> dict[str, Path]:
    root = Path(cfg.output_dir).expanduser().resolve()
    world = root / "world"
    return {"root": root, "world": world, "demos": world / "demos.jsonl", "rm_lists": world / "rm_lists.jsonl",
            "prompts": world / "prompts.jsonl", "eval_prompts": world / "eval_prompts.jsonl",
            "sft_model": root / f"{cfg.name}-sft" / "model", "rm_model": root / f"{cfg.name}-rm" / "model",
            "lists": root / "lists", "policy_model": root / f"{cfg.name}-lipo" / "model"}


def _validate(model: type[BaseModel], tree: dict, section: str) -> BaseModel:
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, f"section '{section}'")) from None


def resolve(cfg: PipelineConfig, tracking_uri: str) -> dict[str, BaseModel]:
    """One validated config per stage, wired together; stages set to null are left out."""
    from lipo.evaluation.config import EvalConfig
    from lipo.lists.config import BuildListsConfig
    from lipo.training.config import RewardTrainConfig, SFTConfig, TrainConfig

    p, root, world = paths(cfg), str(paths(cfg)["root"]), cfg.world is not None
    track = {"uri": tracking_uri, "experiment": cfg.experiment}
    stages: dict[str, BaseModel] = {}
    if cfg.sft is not None:
        derived = {"run_name": f"{cfg.name}-sft", "output_dir": root, "tracking": track,
                   "data": {"train": [str(p["demos"])] if world else []}}
        stages["sft"] = _validate(SFTConfig, deep_merge(derived, cfg.sft), "sft")
    if cfg.reward_model is not None:
        derived = {"run_name": f"{cfg.name}-rm", "output_dir": root, "tracking": track,
                   "data": {"train": [str(p["rm_lists"])] if world else []}}
        stages["reward_model"] = _validate(RewardTrainConfig, deep_merge(derived, cfg.reward_model), "reward_model")
    sft_model = str(p["sft_model"]) if cfg.sft is not None else None
    rm = stages.get("reward_model")
    derived = {"input": {"prompts": [str(p["prompts"])] if world else []},
               "output": {"dir": str(p["lists"])},
               "tracking": {**track, "run_name": f"{cfg.name}-build-lists"}}
    if sft_model:
        derived["generate"] = {"model": sft_model}
    if rm is not None:
        derived["score"] = {"name": rm.reward.kind, "model": str(p["rm_model"])}
        derived["label"] = {"method": "winrate" if rm.reward.kind == "pairwise" else "minmax"}
    stages["build_lists"] = _validate(BuildListsConfig, deep_merge(derived, cfg.build_lists), "build_lists")
    bl = stages["build_lists"]
    derived = {"run_name": f"{cfg.name}-lipo", "output_dir": root, "tracking": track,
               "data": {"train": [str(p["lists"])], "max_prompt_tokens": bl.input.max_prompt_tokens}}
    if sft_model:
        derived["model"] = {"path": sft_model}
    if bl.reference is not None:
        derived["data"]["max_response_tokens"] = bl.reference.max_response_tokens
    stages["train"] = _validate(TrainConfig, deep_merge(derived, cfg.train), "train")
    serve: dict[str, Any] = {"policy": {"model": str(p["policy_model"]), "name": "policy"}, "tracking_uri": tracking_uri}
    if sft_model:
        serve["baseline"] = {"model": sft_model, "name": "sft"}
    if rm is not None:
        serve["reward"] = {"model": str(p["rm_model"]), "kind": rm.reward.kind,
                           "pair_template": rm.reward.pair_template, "max_tokens": rm.reward.max_tokens}
    derived = {"run_name": f"{cfg.name}-eval", "output_dir": root, "serve": serve,
               "data": {"prompts": [str(p["eval_prompts"])] if world else []},
               "baseline": "model" if sft_model else "auto",
               "tracking": {"uri": tracking_uri, "experiment": cfg.experiment}}
    if world:
        derived["judge"] = {"function": "lipo.bootstrap.copytask:gold_reward"}
    stages["evaluate"] = _validate(EvalConfig, deep_merge(derived, cfg.evaluate), "evaluate")
    return stages
