"""`PipelineConfig`: the config of `lipo run` and `lipo compare`, resolved into one config per stage.

Each stage section (`sft`, `reward_model`, `build_lists`, `train`, `evaluate`) is a *partial* stage config; the
pipeline fills in the wiring between stages (which model and which files a stage reads) and the shared tracking
store, and the user's keys win over those defaults. `resolve` validates every stage config up front, so a typo
anywhere fails before Ray starts, naming the key with its section (e.g. `train.optim.lr`).

    cfg = load_config(PipelineConfig, "configs/quickstart.yaml", ["train.optim.max_steps=10"])
    stages = resolve(cfg)          # {"sft": SFTConfig, "reward_model": RewardTrainConfig, ...}

`world` bootstraps the embedded quickstart task (`lipo.bootstrap.copytask`); with `world: null`, give your own
prompt files, models and data in the stage sections (and `sft: null` / `reward_model: null` to use existing models).

Two wiring decisions follow common RLHF practice (InstructGPT, Stiennon et al. 2020):
- the reward model starts from the SFT policy's weights (a new scalar head) when the pipeline trains an SFT policy
  and `reward_model.model.path` is not given: it then already reads the task as the policy does;
- with `world.rm_data: samples` (the default), the reward model's data are K answers sampled from the SFT policy for
  each of the world's preference prompts, labelled by the gold reward (stage `preferences`, a build-lists run with
  the `function` scorer). A reward model trained on the policy's own kind of answers ranks the lists that LiPO
  learns from far better than one trained on synthetic corruptions (`world.rm_data: corruptions`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from lipo.config import Strict, config_hash, format_validation_error
from lipo.errors import ConfigError
from lipo.losses import ObjectiveName

GOLD_REWARD = "lipo.bootstrap.copytask:gold_reward"  # the world's exact reward: its raters and its judge


class WorldConfig(Strict):
    task: Literal["copy"] = "copy"
    n_demos: int = Field(400, ge=8)
    n_rm_lists: int = Field(300, ge=8)
    n_prompts: int = Field(128, ge=4)
    n_eval: int = Field(64, ge=4)
    noise: float = Field(0.5, ge=0, le=1)  # fraction of demonstrations with errors
    rm_data: Literal["samples", "corruptions"] = "samples"  # reward-model lists: SFT samples, or synthetic errors
    rm_list_size: int = Field(8, ge=2)  # answers per reward-model list
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
            "rm_prompts": world / "rm_prompts.jsonl", "prompts": world / "prompts.jsonl",
            "eval_prompts": world / "eval_prompts.jsonl"}


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


def _lists_stage(cfg: PipelineConfig, tree: dict, section: str, user: dict, dir_prefix: str,
                 run_kind: str) -> BaseModel:
    """A validated build-lists config whose output directory and run name carry the hash of what it builds."""
    from lipo.lists.config import BuildListsConfig, identity_hash

    bl = _validate(BuildListsConfig, tree, section)
    if "dir" not in (user.get("output") or {}):
        bl.output.dir = str(paths(cfg)["root"] / f"{dir_prefix}-{identity_hash(bl)[:8]}")
    if "run_name" not in (user.get("tracking") or {}):
        bl.tracking.run_name = f"{cfg.name}-{run_kind}-{identity_hash(bl)[:8]}"
    return bl


def _preferences(cfg: PipelineConfig, p: dict[str, Path], sft_model: str | None, track: dict) -> BaseModel:
    """The world's preference data: `rm_list_size` SFT samples per preference prompt, labelled by the gold reward.

    Sampling follows the `build_lists.generate` settings (temperature, length), so the reward model is trained on
    the same kind of answers it will rank.
    """
    if sft_model is None:
        raise ConfigError("world.rm_data: 'samples' draws the reward model's data from the SFT policy, so it needs "
                          "the sft stage; set world.rm_data: corruptions to train the reward model without one")
    gen = {**(cfg.build_lists.get("generate") or {}), "model": sft_model, "num_candidates": cfg.world.rm_list_size,
           "include_reference": False}
    inp = {"prompts": [str(p["rm_prompts"])]}
    if "max_prompt_tokens" in (cfg.build_lists.get("input") or {}):
        inp["max_prompt_tokens"] = cfg.build_lists["input"]["max_prompt_tokens"]
    tree = {"input": inp, "generate": gen, "score": {"name": "function", "function": GOLD_REWARD},
            "label": {"method": "identity"}, "reference": None, "output": {"dir": ""}, "tracking": {**track},
            "resources": cfg.build_lists.get("resources") or {}}
    return _lists_stage(cfg, tree, "world (preference data)", {}, "preferences", "preferences")


def resolve(cfg: PipelineConfig, tracking_uri: str) -> dict[str, BaseModel]:
    """One validated config per stage, wired together; stages set to null are left out."""
    from lipo.evaluation.config import EvalConfig
    from lipo.training.config import RewardTrainConfig, SFTConfig, TrainConfig

    p, world = paths(cfg), cfg.world is not None
    root = str(p["root"])
    track = {"uri": tracking_uri, "experiment": cfg.experiment}
    stages: dict[str, BaseModel] = {}
    if cfg.sft is not None:
        derived = {"output_dir": root, "tracking": track, "data": {"train": [str(p["demos"])] if world else []}}
        stages["sft"] = _named(SFTConfig, derived, cfg.sft, "sft", f"{cfg.name}-sft")
    sft_model = model_dir(stages["sft"]) if "sft" in stages else None
    if cfg.reward_model is not None:
        rm_data = [str(p["rm_lists"])] if world else []
        if world and cfg.world.rm_data == "samples":
            stages["preferences"] = _preferences(cfg, p, sft_model, track)
            rm_data = [stages["preferences"].output.dir]
        derived = {"output_dir": root, "tracking": track, "data": {"train": rm_data}}
        if sft_model:
            derived["model"] = {"path": sft_model}
        stages["reward_model"] = _named(RewardTrainConfig, derived, cfg.reward_model, "reward_model", f"{cfg.name}-rm")
    rm = stages.get("reward_model")
    derived = {"input": {"prompts": [str(p["prompts"])] if world else []}, "output": {"dir": ""},
               "tracking": {**track}}
    if sft_model:
        derived["generate"] = {"model": sft_model}
    if rm is not None:
        derived["score"] = {"name": rm.reward.kind, "model": model_dir(rm)}
        derived["label"] = {"method": "winrate" if rm.reward.kind == "pairwise" else "minmax"}
    bl = _lists_stage(cfg, deep_merge(derived, cfg.build_lists), "build_lists", cfg.build_lists, "lists",
                      "build-lists")
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
        derived["judge"] = {"function": GOLD_REWARD}
    stages["evaluate"] = _named(EvalConfig, derived, cfg.evaluate, "evaluate", f"{cfg.name}-eval")
    return stages
