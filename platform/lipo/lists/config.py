"""`BuildListsConfig`: the one config of `lipo build-lists`, validated before Ray starts.

    cfg = load_config(BuildListsConfig, "configs/build_lists_example.yaml", ["generate.num_candidates=8"])

Sections: `input` (prompt files, prompt token limit), `generate` (the SFT policy samples K candidates; `null` when
the input rows already carry `responses`), `score` (one of four scorers), `label` (scores -> psi in [0, 1], see
`lipo.labels`), `reference` (reference log-probs; `null` to leave them to training), `output` (dataset directory,
shard size), `resources` (batch size, pool size, CPUs and GPUs per stage), `tracking`, plus `seed` and `on_invalid`.
Every section forbids unknown keys, so a typo fails with a message that names it.

Two settings must match the `lipo train` config that will read the output, because the stored reference log-probs
were computed with them: `input.max_prompt_tokens` = `data.max_prompt_tokens` and `reference.max_response_tokens`
= `data.max_response_tokens` (the manifest records both).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, model_validator

from lipo.config import DType, Strict, config_hash
from lipo.labels import LabelName

ScorerName = Literal["pointwise", "pairwise", "function", "existing"]
_FUNCTION_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_RESERVED_FIELDS = {"id", "prompt", "prompt_messages", "reference", "responses"}


class InputConfig(Strict):
    prompts: list[str] = Field(min_length=1)  # JSONL / Parquet files, directories or globs
    max_prompt_tokens: int = Field(512, ge=1)
    # truncate: keep the prompt's last max_prompt_tokens tokens (training's rule), counted; invalid: the row is
    # invalid like any bad row (an error, or skipped and counted under `on_invalid: skip`).
    long_prompts: Literal["truncate", "invalid"] = "truncate"
    limit: int | None = Field(None, ge=1)  # only the first N valid prompts (smoke runs)


class GenerateConfig(Strict):
    engine: Literal["hf", "vllm"] = "hf"  # vllm: ray.data.llm, GPU only, needs `pip install vllm`
    model: str = "builtin:tiny-llama"  # the SFT policy
    dtype: DType = "auto"  # auto: bf16 on a GPU, fp32 on CPU
    num_candidates: int = Field(4, ge=2)  # K
    temperature: float = Field(1.0, ge=0)  # 0 = greedy
    top_k: int = Field(0, ge=0)  # 0 = off
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(64, ge=1)
    stop: list[str] = []
    dedup: bool = True  # drop exact-duplicate candidates (the first copy stays)
    include_reference: bool = False  # add the prompt's `reference` (SFT target) to its list when present


class ScoreConfig(Strict):
    name: ScorerName
    model: str | None = None  # pointwise / pairwise: reward model spec (HF dir, hub id, builtin:tiny-reward)
    dtype: DType = "auto"  # auto: bf16 on a GPU, fp32 on CPU
    max_tokens: int = Field(1024, ge=1)  # reward model input limit; the END of a too-long text is kept
    # pointwise / pairwise: sequences per reward-model forward (texts for pointwise, ordered pairs for pairwise),
    # filled across the lists of a micro-batch (resources.score.batch_size prompts) in token-length order.
    max_batch_size: int = Field(32, ge=1)
    # pairwise: the text the ranking model reads, with {prompt}, {a}, {b}; null: lipo.models.templates'
    # DEFAULT_PAIR_TEMPLATE (null, not the text itself, so that existing outputs keep their config hash).
    pair_template: str | None = None
    function: str | None = None  # function: "module:func", called as func(prompt, response, **function_kwargs)
    function_kwargs: dict[str, Any] = {}
    pass_reference: bool = False  # function: also pass reference=<the row's reference> (verifiable rewards)
    field: str = "labels"  # existing: the input column with one number per response

    @model_validator(mode="after")
    def _check(self) -> ScoreConfig:
        if self.name in ("pointwise", "pairwise") and not self.model:
            raise ValueError(f"score.model is required for the {self.name} scorer")
        if self.name == "function" and not (self.function and _FUNCTION_PATH.match(self.function)):
            raise ValueError("score.function must be an import path 'module:func' for the function scorer")
        if self.name == "pairwise" and self.pair_template is not None:
            for key in ("{prompt}", "{a}", "{b}"):
                if key not in self.pair_template:
                    raise ValueError(f"score.pair_template must contain {key}")
        if self.field in _RESERVED_FIELDS:
            raise ValueError(f"score.field cannot be '{self.field}'")
        return self


class LabelConfig(Strict):
    method: LabelName = "minmax"  # see lipo.labels
    temperature: float = Field(1.0, gt=0)  # sigmoid: psi = sigmoid(score / temperature)


class ReferenceConfig(Strict):
    model: str | None = None  # default: generate.model (the SFT policy is the reference)
    dtype: DType = "auto"  # auto: bf16 on a GPU, fp32 on CPU
    # auto: flex_attention on a GPU (packed lists without a dense mask), sdpa on CPU (lipo.models.attention)
    attn_implementation: Literal["auto", "sdpa", "eager", "flex_attention"] = "auto"
    max_response_tokens: int = Field(256, ge=1)  # = the train config's data.max_response_tokens
    packing: bool = True  # shared-prefix packing when the model supports it (lipo.models.packed_logps)


class OutputConfig(Strict):
    dir: str
    shard_size: int = Field(64, ge=1)  # prompts per part file: the unit of resume
    sample_rows: int = Field(8, ge=0)  # rows of the sample table logged to MLflow


class StageResources(Strict):
    batch_size: int = Field(8, ge=1)  # prompts per model call inside an actor
    concurrency: int | tuple[int, int] = 1  # actors in the pool: fixed n, or (min, max) to autoscale
    num_cpus: float = Field(0.5, ge=0)  # fractional, so three stages fit a 2-core laptop
    num_gpus: float = Field(0.0, ge=0)


class ResourcesConfig(Strict):
    generate: StageResources = StageResources()
    reference: StageResources = StageResources()
    score: StageResources = StageResources()


class TrackingConfig(Strict):
    enabled: bool = True
    uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else sqlite:///<parent of output.dir>/mlflow.db
    experiment: str = "lipo"
    run_name: str | None = None  # default: build-lists-<config hash>, so a resumed build keeps its run


class BuildListsConfig(Strict):
    seed: int = 0
    on_invalid: Literal["error", "skip"] = "error"
    input: InputConfig
    generate: GenerateConfig | None = GenerateConfig()  # null: the input rows carry `responses`
    score: ScoreConfig
    label: LabelConfig = LabelConfig()
    reference: ReferenceConfig | None = ReferenceConfig()  # null: no ref_logps (training computes them)
    output: OutputConfig
    resources: ResourcesConfig = ResourcesConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _check(self) -> BuildListsConfig:
        if self.score.name == "existing" and self.generate is not None:
            raise ValueError("score.name 'existing' reads scores from the input rows: set generate to null")
        if self.label.method == "winrate" and self.score.name != "pairwise":
            raise ValueError("label.method 'winrate' needs score.name 'pairwise'")
        if self.generate is None and self.reference is not None and self.reference.model is None:
            raise ValueError("reference.model is required when generate is null")
        return self

    @property
    def reference_model(self) -> str | None:
        if self.reference is None:
            return None
        return self.reference.model or (self.generate.model if self.generate else None)

    @property
    def tokenizer_model(self) -> str | None:
        """The model whose tokenizer measures prompts: the reference's (training tokenises with it), else the
        policy's."""
        return self.reference_model or (self.generate.model if self.generate else None)


def identity_hash(cfg: BuildListsConfig) -> str:
    """Hash of what decides the output: everything but where it goes, how it is run and where it is tracked.

    Pool sizes, CPUs, GPUs, batch sizes (`score.max_batch_size` too), the output directory and tracking may change
    between a run and its resume.
    """
    neutral = cfg.model_copy(update={"resources": ResourcesConfig(), "tracking": TrackingConfig(),
                                     "score": cfg.score.model_copy(update={"max_batch_size": 1}),
                                     "output": cfg.output.model_copy(update={"dir": "", "sample_rows": 0})})
    return config_hash(neutral)
