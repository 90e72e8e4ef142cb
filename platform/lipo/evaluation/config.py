"""`EvalConfig`: the one config of `lipo eval`, validated before Ray (or any server) starts.

    cfg = load_config(EvalConfig, "configs/eval_example.yaml", ["server.url=http://127.0.0.1:8000"])

The evaluation talks to a lipo server over HTTP, exactly as a user would: `server.url` names a running one (its
key read from `server.api_key_env` / `server.api_key_file`); with no URL, `lipo eval` starts the `serve` section
locally on loopback with a one-off random key, and stops it at the end. `policy_model` and `baseline_model` are
OpenAI model ids on that server (default: the `serve` section's policy and baseline names).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lipo.config import Strict
from lipo.serving.config import ServeConfig


class EvalDataConfig(Strict):
    # JSONL/Parquet rows with `prompt` (text or chat messages), optional `id` and optional `reference` (a response
    # to compare against, as in the paper); list records (with `responses`) work too.
    prompts: list[str] = Field(min_length=1)
    max_prompts: int | None = Field(None, ge=1)


class SamplingConfig(Strict):
    max_tokens: int = Field(64, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: list[str] = []
    # Prompt i is sampled with seed (seed + 2i) by the policy and (seed + 2i + 1) by the baseline: fixed, and
    # distinct, so a policy compared with itself is a fair coin, not a column of ties.
    seed: int = Field(0, ge=0)


class JudgeConfig(Strict):
    reward_model: bool = True  # judge with the server's reward model (pointwise: r_a > r_b; pairwise: P > 0.5)
    # A second judge for verifiable tasks: "module:function", called as f(prompt, response) -> float.
    function: str | None = None
    tie_eps: float = Field(1e-6, ge=0)  # |r_a - r_b| <= tie_eps (or |P - 0.5| <= tie_eps) is a tie: half a win

    @model_validator(mode="after")
    def _some_judge(self) -> "JudgeConfig":
        if not self.reward_model and self.function is None:
            raise ValueError("set reward_model: true or a function judge")
        if self.function is not None and self.function.count(":") != 1:
            raise ValueError("function must look like 'package.module:function'")
        return self


class BootstrapConfig(Strict):
    resamples: int = Field(1000, ge=100)
    confidence: float = Field(0.95, gt=0.0, lt=1.0)
    seed: int = 0


class ServerConfig(Strict):
    url: str | None = None  # a running lipo server; none: start `serve` locally
    api_key_env: str = "LIPO_API_KEY"
    api_key_file: str | None = None
    concurrency: int = Field(4, ge=1)  # requests in flight at once
    timeout_s: float = Field(300.0, gt=0)
    retries: int = Field(20, ge=0)  # on 503 (a full queue) and dropped connections, honouring Retry-After


class EvalTrackingConfig(Strict):
    uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else sqlite:///<output_dir>/mlflow.db
    experiment: str = "lipo"
    train_run_id: str | None = None  # tagged as eval.train_run_id; taken from a runs:/ policy URI when unset
    parent_run_id: str | None = None  # nest the evaluation run under this one


class EvalConfig(Strict):
    run_name: str | None = None  # default: eval-<timestamp>
    output_dir: str = "runs"
    data: EvalDataConfig
    # "reference": the rows' `reference` responses; "model": samples of `baseline_model`; "auto": references when
    # every row has one, else the model.
    baseline: Literal["auto", "model", "reference"] = "auto"
    policy_model: str | None = None
    baseline_model: str | None = None
    sampling: SamplingConfig = SamplingConfig()
    judge: JudgeConfig = JudgeConfig()
    bootstrap: BootstrapConfig = BootstrapConfig()
    kl: bool = True  # KL estimate against the baseline model, when one is served
    server: ServerConfig = ServerConfig()
    # lipo's own server for this evaluation: its only client is this process, so one ingress replica (Serve's
    # default of two is for shared servers, where a dead ingress must not stall everyone's requests).
    serve: ServeConfig = Field(default_factory=lambda: ServeConfig(ingress={"num_replicas": 1}))
    tracking: EvalTrackingConfig = EvalTrackingConfig()

    def policy_id(self) -> str:
        return self.policy_model or self.serve.policy.name

    def baseline_id(self) -> str | None:
        """The baseline's model id, or None when no baseline model is named or served."""
        return self.baseline_model or (self.serve.baseline.name if self.serve.baseline is not None else None)

    @model_validator(mode="after")
    def _check(self) -> "EvalConfig":
        if self.run_name is not None and not self.run_name.replace("-", "").replace("_", "").isalnum():
            raise ValueError("run_name may hold only letters, digits, '-' and '_'")
        return self
