"""`resolve`: a `PipelineConfig` -> one validated config per stage, wired together, before anything runs.

    stages = resolve(cfg, tracking_uri)     # StageConfigs(sft=SFTConfig, reward_model=..., train=TrainConfig, ...)

One function per stage, in pipeline order; each takes what the earlier stages decided (a model directory, a lists
directory) and returns its validated stage config. The user's keys of a section always win over the wiring, and a
typo anywhere fails here, naming the key with its section (e.g. `train.optim.lr`).

Two wiring decisions follow common RLHF practice (InstructGPT, Stiennon et al. 2020):
- the reward model starts from the SFT policy's weights (a new scalar head) when the pipeline trains an SFT policy
  and `reward_model.model.path` is not given: it then already reads the task as the policy does;
- with `world.rm_data: samples` (the default), the reward model's data are K answers sampled from the SFT policy for
  each of the world's preference prompts, labelled by the gold reward (stage `preferences`, a build-lists run with
  the `function` scorer). A reward model trained on the policy's own kind of answers ranks the lists that LiPO
  learns from far better than one trained on synthetic corruptions (`world.rm_data: corruptions`).

Each stage's run name (and so its Ray Train run and output directory) carries a hash of its config: a changed config
is a new run rather than a resume of the old one, and an unchanged one resumes or is skipped.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from lipo.bootstrap import gold_reward_spec
from lipo.config import config_hash, format_validation_error
from lipo.errors import ConfigError
from lipo.evaluation.config import EvalConfig
from lipo.lists.config import BuildListsConfig, identity_hash
from lipo.pipeline.config import Paths, PipelineConfig
from lipo.training.config import RewardTrainConfig, SFTConfig, TrainConfig

M = TypeVar("M", bound=BaseModel)


@dataclass
class StageConfigs:
    """The validated config of every stage of one pipeline; a stage set to null (or not needed) is None."""

    sft: SFTConfig | None
    preferences: BuildListsConfig | None
    reward_model: RewardTrainConfig | None
    build_lists: BuildListsConfig
    train: TrainConfig
    evaluate: EvalConfig


def resolve(cfg: PipelineConfig, tracking_uri: str) -> StageConfigs:
    paths, track = Paths.of(cfg), {"uri": tracking_uri, "experiment": cfg.experiment}
    sft = sft_stage(cfg, paths, track)
    sft_model = str(sft.model_dir()) if sft else None
    preferences = preferences_stage(cfg, paths, sft_model, track)
    reward_model = reward_model_stage(cfg, paths, sft_model, preferences, track)
    lists = build_lists_stage(cfg, paths, sft_model, reward_model, track)
    policy_start = sft_model or lists.reference_model or (lists.generate.model if lists.generate else None)
    train = train_stage(cfg, paths, policy_start, lists, track)
    evaluate = evaluate_stage(cfg, paths, policy_start, reward_model, lists, train, tracking_uri)
    return StageConfigs(sft, preferences, reward_model, lists, train, evaluate)


def sft_stage(cfg: PipelineConfig, paths: Paths, track: dict) -> SFTConfig | None:
    if cfg.sft is None:
        return None
    derived = {"output_dir": str(paths.root), "tracking": track,
               "data": {"train": [str(paths.demos)] if cfg.world else []}}
    return _named(SFTConfig, derived, cfg.sft, "sft", f"{cfg.name}-sft")


def preferences_stage(cfg: PipelineConfig, paths: Paths, sft_model: str | None,
                      track: dict) -> BuildListsConfig | None:
    """The world's preference data: `rm_list_size` SFT samples per preference prompt, labelled by the gold reward.

    Sampling follows the `build_lists.generate` settings (temperature, length), so the reward model is trained on
    the same kind of answers it will rank.
    """
    if cfg.reward_model is None or cfg.world is None or cfg.world.rm_data != "samples":
        return None
    if sft_model is None:
        raise ConfigError("world.rm_data: 'samples' draws the reward model's data from the SFT policy, so it needs "
                          "the sft stage; set world.rm_data: corruptions to train the reward model without one")
    gen = {**(cfg.build_lists.get("generate") or {}), "model": sft_model, "num_candidates": cfg.world.rm_list_size,
           "include_reference": False}
    inp = {"prompts": [str(paths.rm_prompts)]}
    if "max_prompt_tokens" in (cfg.build_lists.get("input") or {}):
        inp["max_prompt_tokens"] = cfg.build_lists["input"]["max_prompt_tokens"]
    score = {"name": "function", "function": gold_reward_spec(cfg.world.task)}  # the world's raters
    tree = {"input": inp, "generate": gen, "score": score,
            "label": {"method": "identity"}, "reference": None, "output": {"dir": ""}, "tracking": {**track},
            "resources": cfg.build_lists.get("resources") or {}}
    return _lists(cfg, paths, tree, "world (preference data)", {}, "preferences", "preferences")


def reward_model_stage(cfg: PipelineConfig, paths: Paths, sft_model: str | None,
                       preferences: BuildListsConfig | None, track: dict) -> RewardTrainConfig | None:
    if cfg.reward_model is None:
        return None
    data = [preferences.output.dir] if preferences else [str(paths.rm_lists)] if cfg.world else []
    derived: dict[str, Any] = {"output_dir": str(paths.root), "tracking": track, "data": {"train": data}}
    if sft_model:
        derived["model"] = {"path": sft_model}
    return _named(RewardTrainConfig, derived, cfg.reward_model, "reward_model", f"{cfg.name}-rm")


def build_lists_stage(cfg: PipelineConfig, paths: Paths, sft_model: str | None,
                      rm: RewardTrainConfig | None, track: dict) -> BuildListsConfig:
    derived: dict[str, Any] = {"input": {"prompts": [str(paths.prompts)] if cfg.world else []},
                               "output": {"dir": ""}, "tracking": {**track}}
    if sft_model:
        derived["generate"] = {"model": sft_model}
    if rm is not None:
        derived["score"] = {"name": rm.reward.kind, "model": str(rm.model_dir())}
        derived["label"] = {"method": "winrate" if rm.reward.kind == "pairwise" else "minmax"}
    return _lists(cfg, paths, deep_merge(derived, cfg.build_lists), "build_lists", cfg.build_lists, "lists",
                  "build-lists")


def train_stage(cfg: PipelineConfig, paths: Paths, policy_start: str | None, lists: BuildListsConfig,
                track: dict) -> TrainConfig:
    derived: dict[str, Any] = {"output_dir": str(paths.root), "tracking": track,
                               "data": {"train": [lists.output.dir], "max_prompt_tokens": lists.input.max_prompt_tokens}}
    if policy_start:  # the lists' ref_logps came from this model, so training must start from it too
        derived["model"] = {"path": policy_start}
    if lists.reference is not None:
        derived["data"]["max_response_tokens"] = lists.reference.max_response_tokens
    return _named(TrainConfig, derived, cfg.train, "train", f"{cfg.name}-lipo")


def evaluate_stage(cfg: PipelineConfig, paths: Paths, policy_start: str | None, rm: RewardTrainConfig | None,
                   lists: BuildListsConfig, train: TrainConfig, tracking_uri: str) -> EvalConfig:
    serve: dict[str, Any] = {"policy": {"model": str(train.model_dir()), "name": "policy"},
                             "ingress": {"num_replicas": 1},  # one client, this process (see EvalConfig.serve)
                             "tracking_uri": tracking_uri}
    if policy_start:
        serve["baseline"] = {"model": policy_start, "name": "sft"}
    if rm is not None:
        serve["reward"] = {"model": str(rm.model_dir()), "kind": rm.reward.kind,
                           "pair_template": rm.reward.pair_template, "max_tokens": rm.reward.max_tokens}
    elif lists.score.name in ("pointwise", "pairwise"):  # judge with the reward model that labelled the lists
        s = lists.score
        serve["reward"] = {"model": s.model, "kind": s.name, "max_tokens": s.max_tokens,
                           **({"pair_template": s.pair_template} if s.pair_template else {})}
    derived = {"output_dir": str(paths.root), "serve": serve,
               "data": {"prompts": [str(paths.eval_prompts)] if cfg.world else []},
               "baseline": "model" if policy_start else "auto",
               "tracking": {"uri": tracking_uri, "experiment": cfg.experiment}}
    if cfg.world:
        derived["judge"] = {"function": gold_reward_spec(cfg.world.task)}
    return _named(EvalConfig, derived, cfg.evaluate, "evaluate", f"{cfg.name}-eval")


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _validate(model: type[M], tree: dict, section: str) -> M:
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, f"section '{section}'")) from None


def _named(model: type[M], derived: dict, user: dict, section: str, prefix: str) -> M:
    """Validate `derived` with the user's keys on top, then name the run `<prefix>-<config hash>` unless the user
    named it."""
    cfg = _validate(model, deep_merge(derived, user), section)
    if "run_name" not in user:
        cfg.run_name = f"{prefix}-{config_hash(cfg)[:8]}"
    return cfg


def _lists(cfg: PipelineConfig, paths: Paths, tree: dict, section: str, user: dict, dir_prefix: str,
           run_kind: str) -> BuildListsConfig:
    """A validated build-lists config whose output directory and run name carry the hash of what it builds."""
    bl = _validate(BuildListsConfig, tree, section)
    if "dir" not in (user.get("output") or {}):
        bl.output.dir = str(paths.root / f"{dir_prefix}-{identity_hash(bl)[:8]}")
    if "run_name" not in (user.get("tracking") or {}):
        bl.tracking.run_name = f"{cfg.name}-{run_kind}-{identity_hash(bl)[:8]}"
    return bl
