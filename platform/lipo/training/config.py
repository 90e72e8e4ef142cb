"""Configs of the three training stages, validated before Ray starts.

- `TrainConfig`: `lipo train` (LiPO on lists);
- `SFTConfig`: `lipo sft` (next-token loss on demonstrations);
- `RewardTrainConfig`: `lipo train-rm` (pointwise Bradley-Terry or the paper's pairwise ranking model).

    cfg = load_config(TrainConfig, "configs/train_example.yaml", ["objective.name=list_mle"])

They share the sections of `StageConfig` (model, data, optim, deepspeed, scaling, checkpoint, tracking); every
section forbids unknown keys, so a typo fails with a message that names it.

This module imports no torch: the CLI loads it for every command (and `lipo --help`), so the objective names are
written here as a Literal and `tests/lipo/training/test_training_config.py` checks them against `lipo.losses`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from lipo import storage
from lipo.config import Strict
from lipo.models.templates import DEFAULT_PAIR_TEMPLATE

# The keys of `lipo.losses.LOSSES` and `LAMBDA_WEIGHTS` (checked by a test; see the module docstring).
ObjectiveName = Literal["point_mse", "point_sigmoid", "softmax", "pair_hinge", "pair_logistic", "list_mle", "lambda"]
LambdaWeightName = Literal["dcg", "dcg2", "label_diff", "constant"]


class LoraConfig(Strict):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]


class ModelConfig(Strict):
    path: str = "builtin:tiny-llama"
    reference: str | None = None  # defaults to `path`; ignored when the data carries ref_logps
    # auto: flex_attention on a GPU (packed lists then need no dense [L, L] mask), sdpa on CPU, where FlexAttention
    # has no backward (lipo.models.attention).
    attn_implementation: Literal["auto", "sdpa", "eager", "flex_attention"] = "auto"
    lora: LoraConfig | None = None
    # Recompute each layer's activations in the backward pass (non-reentrant): less memory for ~1/3 more compute.
    gradient_checkpointing: bool = False


class DataConfig(Strict):
    train: list[str] = Field(min_length=1)
    on_invalid: Literal["error", "skip"] = "error"
    max_prompt_tokens: int = Field(512, ge=1)
    max_response_tokens: int = Field(256, ge=1)
    # Shared-prefix packing of each list (prompt once, K responses), where the model family supports it. auto packs
    # where it is faster: always under flex_attention, and with a dense mask only when it saves enough tokens
    # (lipo.models.attention.choose_packing); the choice is printed at the start of training.
    packing: bool | Literal["auto"] = "auto"
    # The distributed tokenisation (lipo.training.token_cache): actors (null: one per CPU of the cluster, at most one
    # per read unit) and where the tokenised rows are cached (null: <output_dir>/.cache; a path every node sees).
    tokenize_workers: int | None = Field(None, ge=1)
    cache_dir: str | None = None

    @field_validator("cache_dir")
    @classmethod
    def _local_cache_dir(cls, v: str | None) -> str | None:
        return storage.normalize(v) if v is not None else None


class ObjectiveConfig(Strict):
    name: ObjectiveName = "lambda"
    beta: float = Field(0.05, gt=0)
    lambda_weight: LambdaWeightName = "dcg"
    normalize: bool = False
    # Optional NLL (per token) of each list's best-labelled response, added with this weight. 0 is the paper's
    # pure ranking loss; > 0 keeps the likelihood of good responses from sinking along with the bad ones.
    sft_weight: float = Field(0.0, ge=0)


class OptimConfig(Strict):
    lr: float = Field(1e-6, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float = Field(1.0, ge=0)
    micro_batch_size: int = Field(1, ge=1)  # lists per worker per forward pass (unless the token budget below is set)
    # Token budget of one micro-batch per worker (tokens as `lipo.training.plan.row_tokens` counts them). When set,
    # lists are grouped greedily up to this many tokens and `micro_batch_size` no longer decides the grouping
    # (DeepSpeed still gets it as its nominal micro-batch size). A micro-batch's loss stays the mean over its lists,
    # as without a budget, and DeepSpeed averages the micro-batches: so a list in a micro-batch of few long lists
    # weighs more than one among many short lists (weighting every list equally would need each step's list count
    # across ranks before the backward passes).
    max_tokens_per_micro_batch: int | None = Field(None, ge=1)
    grad_accum: int = Field(1, ge=1)
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)  # optimizer steps; caps `epochs`


class DeepSpeedConfig(Strict):
    # auto: each worker picks 2, or 3 when stage 2's weights, gradients and optimizer states would not fit 60% of its
    # GPU memory (lipo.training.memory has the arithmetic); 2 on CPU. The choice is printed at the start of training.
    stage: Literal[0, 1, 2, 3, "auto"] = "auto"
    offload_optimizer: bool = False


class ScalingConfig(Strict):
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    # Fractional CPUs leave room for Ray Data and the driver on small machines.
    cpus_per_worker: float = Field(0.5, gt=0)
    gpus_per_worker: float = Field(1.0, ge=0)


class CheckpointConfig(Strict):
    every: int = Field(50, ge=1)  # optimizer steps
    keep: int = Field(2, ge=1)
    max_failures: int = Field(1, ge=-1)  # -1: retry forever


class TrackingConfig(Strict):
    uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else sqlite:///<output_dir>/mlflow.db
    experiment: str = "lipo"
    log_every: int = Field(1, ge=1)


class StageConfig(Strict):
    """Sections every Ray Train stage has; a stage config adds its own on top (schema reuse only)."""

    run_name: str | None = None  # same name resumes; default: a fresh timestamped name
    # A local path, file://..., or object storage (s3://, gs://, ...; see lipo.storage): checkpoints, the exported
    # model and, unless data.cache_dir says otherwise, the token cache go here.
    output_dir: str = "runs"
    seed: int = 0
    model: ModelConfig = ModelConfig()
    data: DataConfig
    optim: OptimConfig = OptimConfig()
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()
    scaling: ScalingConfig = ScalingConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _check(self) -> "StageConfig":
        if self.run_name is not None and not self.run_name.replace("-", "").replace("_", "").isalnum():
            raise ValueError("run_name may hold only letters, digits, '-' and '_'")
        return self

    _local_output_dir = field_validator("output_dir")(storage.normalize)  # file:///x is the local path /x

    def model_dir(self, run_name: str | None = None) -> Path | str:
        """Where the run's exported Hugging Face model goes: `<output_dir>/<run_name>/model` (the one definition);
        a Path when `output_dir` is local, its URI when it is object storage."""
        spec = storage.join(self.output_dir, run_name or self.run_name, "model")
        return storage.local(spec) or spec


class TrainConfig(StageConfig):
    objective: ObjectiveConfig = ObjectiveConfig()


class SFTConfig(StageConfig):
    """`data.train` holds demonstrations: `prompt` plus `response` (or `reference`, as in prompt files)."""


class RewardSpec(Strict):
    kind: Literal["pointwise", "pairwise"] = "pointwise"
    pair_template: str = DEFAULT_PAIR_TEMPLATE  # pairwise only: fields {prompt}, {a}, {b}
    max_tokens: int = Field(1024, ge=8)  # the input keeps its END when longer
    eval_fraction: float = Field(0.1, ge=0, lt=1)  # held-out lists for the pairwise accuracy


class RewardTrainConfig(StageConfig):
    """`data.train` holds lists (the list record); pairs come from labels, ties make no pair."""

    reward: RewardSpec = RewardSpec()
