"""`PipelineConfig`: the config of `lipo run` and `lipo compare`, and `Paths`, the one layout of its output
directory. `lipo.pipeline.resolve` turns it into one validated config per stage.

    cfg = load_config(PipelineConfig, "configs/quickstart.yaml", ["train.optim.max_steps=10"])

Each stage section (`sft`, `reward_model`, `build_lists`, `train`, `evaluate`) is a *partial* stage config; the
pipeline fills in the wiring between stages, and the user's keys win. `world` bootstraps the embedded quickstart
task (`lipo.bootstrap`, chosen by `world.task`); with `world: null`, give your own prompt files, models and data in
the stage sections (and `sft: null` / `reward_model: null` to use existing models).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from lipo.bootstrap import WorldTask
from lipo.config import Strict
from lipo.training.config import LambdaWeightName, ObjectiveName

# `lipo run` / `lipo compare` with no config file: the embedded quickstart of this checkout.
DEFAULT_CONFIG = Path(__file__).resolve().parents[3] / "configs" / "quickstart.yaml"


class WorldConfig(Strict):
    task: WorldTask = "copy"  # lipo.bootstrap.WORLDS: copy (the quickstart) or sort (graded quality)
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
    # Each objective is trained once per seed (train.seed, train.seed + 1, ...) on the same lists; the report pairs
    # the runs by seed and prompt. The ablations (list sizes, lambda weights) take the first `ablation_seeds` of
    # them: one by default, so the full comparison (7 x 3 + 9 trainings) stays within 90 minutes on 2 CPU cores.
    seeds: int = Field(3, ge=1)
    ablation_seeds: int = Field(1, ge=1)
    # LiPO-lambda at the full K with each of these weights (the lambda-weight ablation); the one equal to
    # train.objective.lambda_weight is the main table's lambda run, not trained twice.
    lambda_weights: list[LambdaWeightName] = ["dcg", "dcg2", "label_diff", "constant"]


# The field `register` shadows the `register` method that pydantic models inherit from ABC, which nothing here
# calls; pydantic warns about that at class creation, on every `lipo` command, so the warning is silenced here.
warnings.filterwarnings("ignore", message='Field name "register" in "PipelineConfig" shadows', category=UserWarning)


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


@dataclass(frozen=True)
class Paths:
    """Where the pipeline's files live under `output_dir`; stage outputs add their own directories under `root`.
    The world's file names are the ones every `lipo.bootstrap` world's `make_world` writes."""

    root: Path
    world: Path
    demos: Path
    rm_lists: Path
    rm_prompts: Path
    prompts: Path
    eval_prompts: Path
    compare: Path

    @classmethod
    def of(cls, cfg: PipelineConfig) -> "Paths":
        root = Path(cfg.output_dir).expanduser().resolve()
        w = root / "world"
        return cls(root, w, w / "demos.jsonl", w / "rm_lists.jsonl", w / "rm_prompts.jsonl", w / "prompts.jsonl",
                   w / "eval_prompts.jsonl", root / "compare")
