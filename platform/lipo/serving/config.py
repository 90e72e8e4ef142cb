"""`ServeConfig`: the one config of `lipo serve`, and `ServeArgs`, the typed arguments of `build_app`.

    cfg = load_config(ServeConfig, "configs/serve_example.yaml", ["policy.model=runs:/abc123/model"])

Three model slots, each its own Serve deployment: `policy` (required), `baseline` (optional: a second policy, e.g.
the SFT model the evaluation compares against, and the reference of the KL estimate) and `reward` (optional).
Clients pick a policy with the OpenAI `model` field, which must equal that slot's `name`. Every deployment's
replicas, autoscaling, CPUs, GPUs and queue bounds come from its `deployment` section; the defaults use a quarter of
a CPU per replica so the whole app fits on a 2-core laptop.

Capacity (issue 16): a request waits only inside a replica, where the completion of the work ahead wakes it, never
in a Serve router. When every replica of a deployment reports `max_ongoing_requests` in flight, Serve's request
router retries with exponential backoff (25 ms doubling to 0.5 s, `RAY_SERVE_ROUTER_RETRY_*`) and probes queue
lengths with growing deadlines, so a replica that finishes its batch sits idle until a sleeping router wakes: with a
policy limit of 8 behind an ingress limit of 32, throughput fell from 16 req/s at c=16 to 7 req/s at c=32
(benchmarks/serve_load.py). Hence:
- the ingress's `max_ongoing_requests` is the admission bound (a replica holds that many requests, each an
  awaiting coroutine), and its `max_queued_requests` is burst slack at the proxy; past both: 503 with Retry-After.
  The proxy's router backs off too while every ingress replica is full, but then the ingress holds seconds of work,
  so the models never idle meanwhile;
- a model deployment's `max_ongoing_requests` defaults to what the ingress can send it (ingress replicas x the
  ingress's limit: `ServeConfig.model_max_ongoing`), so its replicas never refuse an admitted call and the excess
  waits in the `@serve.batch` queue, which refills the next batch the moment the last one ends. An explicit value
  below that (times the slot's minimum replicas) or below the batch size is refused with the numbers.
A Serve config's per-deployment overrides bypass these checks (Serve applies them after lipo's config).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lipo.config import DType, Strict

MLFLOW_SCHEMES = ("models:/", "runs:/")


class AutoscalingConfig(Strict):
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(2.0, gt=0)
    upscale_delay_s: float = Field(10.0, ge=0)
    downscale_delay_s: float = Field(300.0, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> "AutoscalingConfig":
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self


class DeploymentConfig(Strict):
    """A model deployment (policy, baseline, reward); `IngressConfig` is the ingress's."""

    num_replicas: int = Field(1, ge=1)  # ignored when `autoscaling` is set
    autoscaling: AutoscalingConfig | None = None
    num_cpus: float = Field(0.25, ge=0)  # fractional: several replicas share a core on small machines
    num_gpus: float = Field(0.0, ge=0)
    # Requests one replica holds; unset: ServeConfig sets what the ingress can send (module docstring, "Capacity").
    max_ongoing_requests: int | None = Field(None, ge=1)
    # Requests a caller's router holds for a full deployment; past them: 503 at once. -1: unbounded.
    max_queued_requests: int = Field(32, ge=-1)
    health_check_period_s: float = Field(10.0, gt=0)
    health_check_timeout_s: float = Field(30.0, gt=0)

    @field_validator("max_queued_requests")
    @classmethod
    def _queue(cls, v: int) -> int:
        if v == 0:  # Serve refuses 0 when the app deploys; say so when the config loads
            raise ValueError("must be -1 (unbounded) or at least 1")
        return v

    def min_replicas(self) -> int:
        """Replicas always up (at least 1: an autoscaler at 0 starts one before it routes)."""
        return max(1, self.autoscaling.min_replicas) if self.autoscaling else self.num_replicas

    def max_replicas(self) -> int:
        return self.autoscaling.max_replicas if self.autoscaling else self.num_replicas

    def options(self, name: str) -> dict[str, Any]:
        """Keyword arguments of `Deployment.options` (of a ServeConfig's section: it fills `max_ongoing_requests`)."""
        if self.max_ongoing_requests is None:
            raise ValueError(f"{name}: max_ongoing_requests is unset (ServeConfig derives it from the ingress)")
        opts: dict[str, Any] = {
            "name": name,
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            # Retry-After tells well-behaved clients (the evaluation among them) when to come back.
            "backpressure_config": {"status_code": 503, "retry_after_s": 1},
            "health_check_period_s": self.health_check_period_s,
            "health_check_timeout_s": self.health_check_timeout_s,
        }
        if self.autoscaling is not None:
            opts["autoscaling_config"] = self.autoscaling.model_dump()
        else:
            opts["num_replicas"] = self.num_replicas
        return opts


class IngressConfig(DeploymentConfig):
    """The ingress: `max_ongoing_requests` per replica is the admission bound (requests wait inside it for the
    models), `max_queued_requests` the proxy's burst slack; past both a request gets 503 with Retry-After.
    Two replicas: when one dies, the proxy routes new requests to the other at once instead of holding them until
    Serve has replaced it (the dead one's requests in flight get Serve's plain-text 500: see lipo.serving.app)."""

    num_replicas: int = Field(2, ge=1)
    num_cpus: float = Field(0.1, ge=0)  # routes and validates only: no model
    max_ongoing_requests: int = Field(64, ge=1)
    # Per proxy (one per node), for all replicas together. It counts requests still being routed, not only those
    # waiting for a full ingress: a burst of connections waits here while the proxy routes them a few at a time, so
    # it needs room for the largest burst to absorb (on a loaded 2-core machine, 16 gave 503s at c=64 and 64 gave
    # some to a 100-client /healthz flood, both with the ingress half empty).
    max_queued_requests: int = Field(128, ge=-1)


class BatchConfig(Strict):
    """@serve.batch: concurrent requests within `batch_wait_timeout_s` share one forward pass."""

    max_batch_size: int = Field(8, ge=1)
    batch_wait_timeout_s: float = Field(0.01, ge=0)


def _batch_fits(batch: BatchConfig, deployment: DeploymentConfig) -> None:
    if deployment.max_ongoing_requests is not None and batch.max_batch_size > deployment.max_ongoing_requests:
        raise ValueError(f"batch.max_batch_size ({batch.max_batch_size}) exceeds deployment.max_ongoing_requests "
                         f"({deployment.max_ongoing_requests}): a replica never holds enough requests to fill a batch")


class PolicyConfig(Strict):
    # A Hugging Face directory or hub id, `builtin:tiny-llama`, or an MLflow URI: `models:/NAME@ALIAS`,
    # `models:/NAME/VERSION` or `runs:/RUN_ID/model` (the training stage logs its HF dir under `model/`).
    model: str = "builtin:tiny-llama"
    name: str = ""  # the OpenAI `model` id; default "policy" (or "baseline" for the baseline slot)
    dtype: DType = "auto"  # auto: bf16 on a GPU, fp32 on CPU
    max_prompt_tokens: int = Field(512, ge=1)  # longer prompts keep their end, as in training
    batch: BatchConfig = BatchConfig()
    deployment: DeploymentConfig = DeploymentConfig()

    @model_validator(mode="after")
    def _check(self) -> "PolicyConfig":
        _batch_fits(self.batch, self.deployment)
        return self


class RewardConfig(Strict):
    model: str = "builtin:tiny-reward"
    name: str = "reward"
    kind: Literal["pointwise", "pairwise"] = "pointwise"
    dtype: DType = "auto"  # auto: bf16 on a GPU, fp32 on CPU
    # Pairwise only: the text the ranking model reads ({prompt}, {a}, {b}); none: lipo.models.reward's default.
    pair_template: str | None = None
    max_tokens: int = Field(1024, ge=1)  # longer inputs keep their end (the responses)
    batch: BatchConfig = BatchConfig()
    deployment: DeploymentConfig = DeploymentConfig()

    @model_validator(mode="after")
    def _check(self) -> "RewardConfig":
        _batch_fits(self.batch, self.deployment)
        return self


class LimitsConfig(Strict):
    max_request_bytes: int = Field(1 << 20, ge=64)  # larger bodies get 413
    max_tokens: int = Field(256, ge=1)  # upper bound of a request's max_tokens (422 above)
    max_n: int = Field(8, ge=1)  # upper bound of choices per request: n times the number of prompts
    max_responses: int = Field(16, ge=2)  # upper bound of responses per /v1/score or /v1/logprobs request
    # /v1/logprobs: upper bound of the tokens one request scores, prompt (its kept end) + response summed over the
    # responses (422 above; checked by the policy replica, which tokenises). Its forwards cost ~ this squared.
    max_logprob_tokens: int = Field(8192, ge=1)
    request_timeout_s: float = Field(60.0, gt=0)  # a model call running longer gets 408
    # The whole request body must arrive within this (from when the ingress starts the request), or 408: a client
    # that trickles its body holds an ingress slot this long at most.
    body_timeout_s: float = Field(5.0, gt=0)


class HttpConfig(Strict):
    # Only `lipo serve` reads this; under `serve deploy` or a RayService, the Serve config's http_options rule.
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)  # 0: any free port
    route_prefix: str = "/"


class ServeConfig(Strict):
    app_name: str = "lipo"
    tracking_uri: str | None = None  # for MLflow model URIs; default $MLFLOW_TRACKING_URI
    http: HttpConfig = HttpConfig()
    policy: PolicyConfig = PolicyConfig()
    baseline: PolicyConfig | None = None
    reward: RewardConfig | None = RewardConfig()
    ingress: IngressConfig = IngressConfig()
    limits: LimitsConfig = LimitsConfig()

    @model_validator(mode="before")
    @classmethod
    def _default_names(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            for slot in ("policy", "baseline"):
                section = data.get(slot)
                if isinstance(section, dict) and not section.get("name"):
                    data[slot] = {**section, "name": slot}
            if "policy" not in data:
                data["policy"] = {"name": "policy"}
        return data

    @model_validator(mode="after")
    def _distinct_names(self) -> "ServeConfig":
        names = [s.name for s in (self.policy, self.baseline, self.reward) if s is not None]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be distinct, got {names} (set policy.name / baseline.name)")
        if not self.http.route_prefix.startswith("/"):
            raise ValueError("http.route_prefix must start with '/'")
        for slot in ("policy", "baseline"):
            batch = getattr(self, slot) and getattr(self, slot).batch.max_batch_size
            if batch and self.limits.max_n > batch:  # all choices of one request are sampled in one batch
                raise ValueError(f"limits.max_n ({self.limits.max_n}) exceeds {slot}.batch.max_batch_size ({batch})")
        self._capacity_fits()
        return self

    @model_validator(mode="after")
    def _derive_capacity(self) -> "ServeConfig":
        for slot in (self.policy, self.baseline, self.reward):  # after _distinct_names: explicit values checked
            if slot is not None and slot.deployment.max_ongoing_requests is None:
                slot.deployment.max_ongoing_requests = self.model_max_ongoing(slot)
        return self

    def ingress_capacity(self) -> int:
        """Calls the ingress can have in flight to one model deployment at most: one per admitted request."""
        return self.ingress.max_replicas() * self.ingress.max_ongoing_requests

    def model_max_ongoing(self, slot: PolicyConfig | RewardConfig) -> int:
        """A model deployment's `max_ongoing_requests` per replica: its own, or else all the ingress can send
        (and at least one batch)."""
        return slot.deployment.max_ongoing_requests or max(self.ingress_capacity(), slot.batch.max_batch_size)

    def _capacity_fits(self) -> None:
        """Refuse model limits below what the ingress admits: the excess would wait in Serve's router backoff."""
        need = self.ingress_capacity()
        for key in ("policy", "baseline", "reward"):
            slot = getattr(self, key)
            if slot is None or slot.deployment.max_ongoing_requests is None:
                continue
            have, replicas = slot.deployment.max_ongoing_requests, slot.deployment.min_replicas()
            if have * replicas < need:
                raise ValueError(
                    f"{key}.deployment.max_ongoing_requests ({have}) x {replicas} replica(s) is below what the "
                    f"ingress admits ({self.ingress.max_replicas()} x ingress.max_ongoing_requests "
                    f"{self.ingress.max_ongoing_requests} = {need}): the excess would wait in Serve's router, which "
                    f"backs off while the replica idles; raise it, or leave it unset (then it is {need})")

    def policies(self) -> dict[str, PolicyConfig]:
        """OpenAI model id -> policy slot."""
        return {s.name: s for s in (self.policy, self.baseline) if s is not None}


class ServeArgs(Strict):
    """Arguments of `lipo.serving.app:build_app`, as a `serve deploy` config or a RayService passes them.

    `config` is a ServeConfig YAML file (none: the defaults, builtin tiny models), or with `section` the key that
    holds one inside a larger file (e.g. `serve` in a pipeline config); `overrides` are `key.sub=value` strings
    applied on top, as on the command line. The API key comes from $LIPO_API_KEY or $LIPO_API_KEY_FILE on
    the cluster; with neither, `insecure: true` must be set explicitly unless Serve listens on loopback only.
    """

    config: str | None = None
    section: str | None = None
    overrides: list[str] = []
    insecure: bool = False
