"""The Serve application: a FastAPI ingress in front of the policy, baseline and reward deployments.

Start it (each reads the API key from $LIPO_API_KEY or $LIPO_API_KEY_FILE):

    lipo serve configs/serve_example.yaml                 # local Ray, 127.0.0.1:8000
    serve run deploy/serve/lipo.yaml                       # Serve's own CLI, same application
    serve deploy deploy/serve/lipo.yaml                    # onto a running cluster (or a RayService)

`build_app(args: ServeArgs)` is Serve's typed application builder (import path `lipo.serving.app:build_app`):
Serve validates `args` from the YAML into `ServeArgs`. Deployment names (for per-deployment overrides in a
Serve config or the Helm chart): `LipoIngress`, `LipoPolicy`, `LipoBaseline`, `LipoReward`. The routes and error
bodies are in `lipo.serving.routes`; `lipo.serving.local` runs the application on this machine (`lipo serve`).

Request path: proxy -> `Guard` (401 / 413, and 408 when the body is not in within `limits.body_timeout_s`; see
`lipo.serving.security`) -> FastAPI body validation (422 naming the field) -> config limits (422) -> DeploymentHandle
call under `asyncio.wait_for` (408 past `limits.request_timeout_s`, for a stream's whole answer too; a client cannot
switch this one off, unlike Serve's proxy timeout, which honours an `x-request-timeout-seconds` header). A full
ingress (its replicas' `max_ongoing_requests` plus the proxy's `max_queued_requests`) is Serve's 503 with
`Retry-After`, at the proxy; the model deployments admit whatever the ingress admitted (`lipo.serving.config`,
"Capacity"), so admitted requests wait in their batch queues, never in a Serve router. A stream (`stream: true`)
meets all of these before its response starts: `sample_stream` awaits its first event first.

Failures: a dead model replica is a JSON 503 with `Retry-After` (`_bounded`); Serve replaces it. The ingress runs
two replicas by default: when one dies, the proxy's router, whose call to it fails before the request is accepted,
retries on the other, so new requests never wait for the replacement. What Serve 2.60 does not let an application
change: a request already accepted by an ingress replica that then dies gets the proxy's plain-text
`500 Internal Server Error` without `Retry-After` (`ray/serve/_private/proxy.py`: HTTPProxy sends no response for
a RayActorError, and `http_util.send_http_response_on_exception` writes bodies only for 408, 429 and 503, so uvicorn
writes its default 500). Measured (4 clients, one replica killed): those in flight got it, nothing else did; with
one ingress replica the next requests waited ~5-10 s for the replacement. Clients should retry that 500 like a 503;
the proxy has no retry setting of its own.
"""

# No `from __future__ import annotations` here: Serve's typed builder reads `build_app`'s annotation as a class.
import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from lipo.config import load_config
from lipo.serving.config import ServeArgs, ServeConfig
from lipo.serving.isolation import Budget, plain_error
from lipo.serving.routes import DEPLOYMENTS, install_error_handlers, router
from lipo.serving.security import ApiError, Guard, check_bind, check_limits, key_digest, load_api_key


async def _bounded(awaitable, cancel, timeout: float, limit: float) -> Any:
    """A model's answer (or a stream's next event) within `timeout` seconds: past it, `cancel()` and a 408 naming the
    request's `limit` (the replica stops the work itself at the same deadline, which the call's `Budget` carries);
    Serve's overload errors and a dead replica (Serve replaces it) become OpenAI-style 503s; a replica's error for
    this request alone (`isolation.RequestError`: 422 naming a field, 408, 500) keeps its status."""
    try:
        return await asyncio.wait_for(awaitable, max(timeout, 0.0))
    except asyncio.TimeoutError:
        cancel()
        raise ApiError(408, f"the model did not answer within {limit}s") from None
    except (BackPressureError, DeploymentUnavailableError) as exc:
        raise ApiError(503, f"the server is at capacity, retry later ({type(exc).__name__})") from None
    except RayActorError:  # the replica died mid-request
        raise ApiError(503, "a model replica failed; retry the request") from None
    except Exception as exc:
        if (err := plain_error(exc)) is None:  # not a designed error: a bug, a bare 500
            raise
        raise err from None


def _budget(limits) -> Budget:
    """What a model call starting now may spend: its deadline (wall clock, the request timeout from now; the replica
    stops its work there) and the /v1/logprobs token bound."""
    return Budget(time.time() + limits.request_timeout_s, limits.max_logprob_tokens)


@serve.deployment(name="LipoIngress")
@serve.ingress()
class Ingress:
    """Routes HTTP requests to the model deployments; builds its FastAPI app per replica, from the config."""

    def __init__(self, cfg: dict, key_digest: str | None, policy, baseline=None, reward=None):
        self.cfg = ServeConfig.model_validate(cfg)
        self.digest = key_digest
        self.policies = {self.cfg.policy.name: policy}
        if baseline is not None:
            self.policies[self.cfg.baseline.name] = baseline
        self.reward = reward
        self.created = int(time.time())

    def check_health(self) -> None:
        """The ingress holds no model; the model deployments run their own check_health."""

    async def call(self, method, *args) -> Any:
        """One model call, bounded by the request timeout; Serve's overload errors become OpenAI-style 503s. The
        model method gets the call's `Budget` as `budget=`."""
        response = method.remote(*args, budget=_budget(self.cfg.limits))
        limit = self.cfg.limits.request_timeout_s
        return await _bounded(asyncio.ensure_future(response), response.cancel, limit, limit)

    def policy_handle(self, name: str):
        if name not in self.policies:
            raise ApiError(404, f"model: unknown model '{name}' (served: {', '.join(self.policies)})", "model")
        return self.policies[name]

    def reward_handle(self, name: str | None):
        if self.reward is None:
            raise ApiError(404, "no reward model is served (set `reward` in the serve config)", "model")
        if name is not None and name != self.cfg.reward.name:
            raise ApiError(404, f"model: unknown reward model '{name}' (served: {self.cfg.reward.name})", "model")
        return self.reward

    def _job(self, model: str, prompts: list, n: int, max_tokens: int, req) -> tuple[Any, dict]:
        """(policy handle, `PolicyModel.generate` job) after the limits: nothing reaches a model before them."""
        check_limits(self.cfg.limits, n=n * len(prompts), max_tokens=max_tokens)
        handle = self.policy_handle(model)
        seed = req.seed if req.seed is not None else secrets.randbits(31)
        return handle, {"prompts": prompts, "n": n, "seed": seed, "max_tokens": max_tokens,
                        "temperature": req.temperature, "top_p": req.top_p, "stop": req.stops(),
                        "logprobs": req.top_k_logprobs(),
                        "field": "messages" if req.endpoint == "chat" else "prompt"}  # named in the replica's errors

    async def sample(self, model: str, prompts: list, n: int, max_tokens: int, req) -> tuple[list[dict], int]:
        """(choices, prompt tokens) of `n` samples per prompt from policy `model`, with `req`'s sampling options
        (a `schemas._Sampling` request); a choice is as `PolicyModel.generate` returns it."""
        handle, job = self._job(model, prompts, n, max_tokens, req)
        out = await self.call(handle.generate, job)
        return out["choices"], out["prompt_tokens"]

    async def sample_stream(self, model: str, prompts: list, n: int, max_tokens: int, req) -> AsyncIterator[dict]:
        """`PolicyModel.generate_stream`'s events, the first one awaited here: limits, 404, 408 and 503 are raised
        before the caller starts its response. Later events share the same deadline (`limits.request_timeout_s`
        for the whole answer); an error among them reaches the caller mid-stream."""
        handle, job = self._job(model, prompts, n, max_tokens, req)
        gen = handle.options(stream=True).generate_stream.remote(job, budget=_budget(self.cfg.limits))
        deadline = time.monotonic() + self.cfg.limits.request_timeout_s  # for the whole answer
        limit = self.cfg.limits.request_timeout_s
        first = await _bounded(gen.__anext__(), gen.cancel, limit, limit)

        async def events() -> AsyncIterator[dict]:
            ended = False
            try:
                yield first
                while True:
                    try:
                        yield await _bounded(gen.__anext__(), gen.cancel, deadline - time.monotonic(), limit)
                    except StopAsyncIteration:
                        ended = True
                        return
            finally:
                if not ended:  # the client went away (or an error): stop the replica's side of the stream
                    gen.cancel()
        return events()

    def __serve_build_asgi_app__(self) -> FastAPI:
        app = FastAPI(title="lipo", docs_url=None, redoc_url=None, openapi_url=None)
        limits = self.cfg.limits
        app.add_middleware(Guard, key_digest=self.digest, max_request_bytes=limits.max_request_bytes,
                           body_timeout_s=limits.body_timeout_s)
        install_error_handlers(app)
        app.include_router(router(self))
        return app


def build(cfg: ServeConfig, digest: str | None):
    """The bound application: ingress + one deployment per configured model slot."""
    from lipo.serving.deployments import PolicyModel, RewardModel  # here, so the ingress replica never loads torch

    def model(cls, slot, name):
        return cls.options(**slot.deployment.options(name)).bind(slot.model_dump(mode="json"), cfg.tracking_uri)

    policy = model(PolicyModel, cfg.policy, DEPLOYMENTS["policy"])  # the names /healthz asks Serve about
    baseline = model(PolicyModel, cfg.baseline, DEPLOYMENTS["baseline"]) if cfg.baseline else None
    reward = model(RewardModel, cfg.reward, DEPLOYMENTS["reward"]) if cfg.reward else None
    return Ingress.options(**cfg.ingress.options("LipoIngress")).bind(
        cfg.model_dump(mode="json"), digest, policy, baseline=baseline, reward=reward)


def serve_http() -> tuple[str | None, int | None]:
    """(host, port) the running Serve proxies listen on; (None, None) if unknown (treated as non-loopback)."""
    try:
        # Serve has no public API for its HTTP options; the private client is imported here so that a Ray
        # release that moves it makes the address unknown rather than breaking the import of this module.
        from ray.serve.context import _get_global_client

        http = _get_global_client().http_config
        return http.host, http.port
    except Exception:
        return None, None


def build_app(args: ServeArgs):
    """Serve's typed application builder: `import_path: lipo.serving.app:build_app`, `args: {config: ...}`."""
    cfg = load_config(ServeConfig, args.config, args.overrides, section=args.section)
    key = load_api_key(insecure=args.insecure)  # a short key is refused unless `insecure: true`
    check_bind(serve_http()[0], key is not None, args.insecure)
    return build(cfg, key_digest(key))
