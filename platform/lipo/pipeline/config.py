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

from lipo.config import Strict, config_hash, format_validation_error
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
            "prompts": world / "prompts.jsonl", "eval_prompts": world / "eval_prompts.jsonl"}


def _validate(model: type[BaseModel], tree: dict, section: str) -> BaseModel:
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, f"section '{section}'")) from None


def _named(model: type[BaseModel], derived: dict, user: dict, section: str, prefix: str) -> BaseModel:
    """Validate, then name the run `<prefix>-<hash of its config>` unless the user named it.

    A stage's run name (and so its Ray Train run and output directory) is tied to its config: a changed config is a
    new run rather than a resume of the old one, and an unchanged one resumes or is skipped.
    """
    cfg = _validate(model, deep_merge(derived, user), section)
    if "run_name" in user:
        return cfg
    cfg.run_name = f"{prefix}-{config_hash(cfg)[:8]}"
    return cfg


def model_dir(stage_cfg: BaseModel) -> str:
    return str(Path(stage_cfg.output_dir).expanduser().resolve() / stage_cfg.run_name / "model")


def resolve(cfg: PipelineConfig, tracking_uri: str) -> dict[str, BaseModel]:
    """One validated config per stage, wired together; stages set to null are left out."""
    from lipo.evaluation.config import EvalConfig
    from lipo.lists.config import BuildListsConfig, identity_hash
    from lipo.training.config import RewardTrainConfig, SFTConfig, TrainConfig

    p, world = paths(cfg), cfg.world is not None
    root = str(p["root"])
    track = {"uri": tracking_uri, "experiment": cfg.experiment}
    stages: dict[str, BaseModel] = {}
    if cfg.sft is not None:
        derived = {"output_dir": root, "tracking": track, "data": {"train": [str(p["demos"])] if world else []}}
        stages["sft"] = _named(SFTConfig, derived, cfg.sft, "sft", f"{cfg.name}-sft")
    if cfg.reward_model is not None:
        derived = {"output_dir": root, "tracking": track, "data": {"train": [str(p["rm_lists"])] if world else []}}
        stages["reward_model"] = _named(RewardTrainConfig, derived, cfg.reward_model, "reward_model", f"{cfg.name}-rm")
    sft_model = model_dir(stages["sft"]) if "sft" in stages else None
    rm = stages.get("reward_model")
    derived = {"input": {"prompts": [str(p["prompts"])] if world else []}, "output": {"dir": ""},
               "tracking": {**track}}
    if sft_model:
        derived["generate"] = {"model": sft_model}
    if rm is not None:
        derived["score"] = {"name": rm.reward.kind, "model": model_dir(rm)}
        derived["label"] = {"method": "winrate" if rm.reward.kind == "pairwise" else "minmax"}
    bl = _validate(BuildListsConfig, deep_merge(derived, cfg.build_lists), "build_lists")
    if "dir" not in (cfg.build_lists.get("output") or {}):
        bl.output.dir = str(p["root"] / f"lists-{identity_hash(bl)[:8]}")
    if "run_name" not in (cfg.build_lists.get("tracking") or {}):
        bl.tracking.run_name = f"{cfg.name}-build-lists-{identity_hash(bl)[:8]}"
    stages["build_lists"] = bl
    derived = {"output_dir": root, "tracking": track,
               "data": {"train": [bl.output.dir], "max_prompt_tokens": bl.input.max_prompt_tokens}}
    policy_start = sft_model or bl.reference_model or (bl.generate.model if bl.generate else None)
    if policy_start:  # the lists' ref_logps came from this model, so training must start from it too
        derived["model"] = {"path": policy_start}
    if bl.reference is not None:
        derived["data"]["max_response_tokens"] = bl.reference.max_response_tokens
    stages["train"] = _named(TrainConfig, derived, cfg.train, "train", f"{cfg.name}-lipo")
    serve: dict[str, Any] = {"policy": {"model": model_dir(stages["train"]), "name": "policy"},
                             "tracking_uri": tracking_uri}
    if policy_start:
        serve["baseline"] = {"model": policy_start, "name": "sft"}
    if rm is not None:
        serve["reward"] = {"model": model_dir(rm), "kind": rm.reward.kind,
                           "pair_template": rm.reward.pair_template, "max_tokens": rm.reward.max_tokens}
    elif bl.score.name in ("pointwise", "pairwise"):  # judge with the reward model that labelled the lists
        serve["reward"] = {"model": bl.score.model, "kind": bl.score.name, "max_tokens": bl.score.max_tokens,
                           **({"pair_template": bl.score.pair_template} if bl.score.pair_template else {})}
    derived = {"output_dir": root, "serve": serve, "data": {"prompts": [str(p["eval_prompts"])] if world else []},
               "baseline": "model" if policy_start else "auto", "tracking": {"uri": tracking_uri,
                                                                           "experiment": cfg.experiment}}
    if world:
        derived["judge"] = {"function": "lipo.bootstrap.copytask:gold_reward"}
    stages["evaluate"] = _named(EvalConfig, derived, cfg.evaluate, "evaluate", f"{cfg.name}-eval")
    return stages
