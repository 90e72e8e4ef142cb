"""The Serve application: a FastAPI ingress in front of the policy, baseline and reward deployments.

Start it (each reads the API key from $LIPO_API_KEY or $LIPO_API_KEY_FILE):

    lipo serve configs/serve_example.yaml                 # local Ray, 127.0.0.1:8000
    serve run deploy/serve/lipo.yaml                       # Serve's own CLI, same application
    serve deploy deploy/serve/lipo.yaml                    # onto a running cluster (or a RayService)

`build_app(args: ServeArgs)` is Serve's typed application builder (import path `lipo.serving.app:build_app`):
Serve validates `args` from the YAML into `ServeArgs`. Deployment names (for per-deployment overrides in a
Serve config or the Helm chart): `LipoIngress`, `LipoPolicy`, `LipoBaseline`, `LipoReward`.

Request path: proxy -> `Guard` (401 / 413, see `lipo.serving.security`) -> FastAPI body validation (422 naming the
field) -> config limits (422) -> DeploymentHandle call under `asyncio.wait_for` (408 past
`limits.request_timeout_s`; a client cannot switch this one off, unlike Serve's proxy timeout, which honours an
`x-request-timeout-seconds` header). A full deployment queue is Serve's 503 (`max_queued_requests`), at the proxy
for the ingress and at the handle for a model deployment.
"""

# No `from __future__ import annotations` here: Serve's typed builder and FastAPI read the annotations of
# `build_app` and the routes as real classes.
import asyncio
import logging
import secrets
import time
import uuid
from pathlib import Path
from typing import Any

from ray import serve

from lipo.serving import schemas as S
from lipo.serving.config import ServeArgs, ServeConfig
from lipo.serving.security import ApiError, Guard, check_bind, check_limits, key_digest, load_api_key

log = logging.getLogger("ray.serve")


def _prompt(p: Any) -> Any:
    """A request prompt as the model code takes it: text, or a list of {role, content} dicts."""
    return p if isinstance(p, str) else [{"role": m.role, "content": m.content} for m in p]


def _stops(stop: str | list[str] | None) -> list[str]:
    return [] if stop is None else [stop] if isinstance(stop, str) else list(stop)


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

    async def _call(self, method, *args) -> Any:
        """One model call, bounded by the request timeout; Serve's overload errors become OpenAI-style 503s."""
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        response = method.remote(*args)
        try:
            return await asyncio.wait_for(asyncio.ensure_future(response), self.cfg.limits.request_timeout_s)
        except asyncio.TimeoutError:
            response.cancel()
            raise ApiError(408, f"the model did not answer within {self.cfg.limits.request_timeout_s}s") from None
        except (BackPressureError, DeploymentUnavailableError) as exc:
            raise ApiError(503, f"the server is at capacity, retry later ({type(exc).__name__})") from None
        except RayActorError:  # the replica died mid-request; Serve replaces it
            raise ApiError(503, "a model replica failed; retry the request") from None

    def _policy(self, name: str):
        if name not in self.policies:
            raise ApiError(404, f"model: unknown model '{name}' (served: {', '.join(self.policies)})", "model")
        return self.policies[name]

    def _reward(self, name: str | None):
        if self.reward is None:
            raise ApiError(404, "no reward model is served (set `reward` in the serve config)", "model")
        if name is not None and name != self.cfg.reward.name:
            raise ApiError(404, f"model: unknown reward model '{name}' (served: {self.cfg.reward.name})", "model")
        return self.reward

    async def _sample(self, model: str, prompts: list, n: int, max_tokens: int, req) -> tuple[list[dict], int]:
        check_limits(self.cfg.limits, n=n * len(prompts), max_tokens=max_tokens)
        handle = self._policy(model)
        seed = req.seed if req.seed is not None else secrets.randbits(31)
        job = {"prompts": prompts, "n": n, "seed": seed, "max_tokens": max_tokens, "temperature": req.temperature,
               "top_p": req.top_p, "stop": _stops(req.stop)}
        out = await self._call(handle.generate, job)
        return out["choices"], out["prompt_tokens"]

    def __serve_build_asgi_app__(self):
        from fastapi import FastAPI
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse
        from starlette.exceptions import HTTPException

        app = FastAPI(title="lipo", docs_url=None, redoc_url=None, openapi_url=None)
        app.add_middleware(Guard, key_digest=self.digest, max_request_bytes=self.cfg.limits.max_request_bytes)

        def error(status: int, message: str, param: str | None = None) -> JSONResponse:
            headers = {"Retry-After": "1"} if status == 503 else None
            return JSONResponse(S.error_body(message, status, param), status_code=status, headers=headers)

        @app.exception_handler(ApiError)
        async def _api_error(_, exc: ApiError):
            return error(exc.status, exc.message, exc.param)

        @app.exception_handler(HTTPException)
        async def _http_error(_, exc: HTTPException):
            return error(exc.status_code, str(exc.detail))

        @app.exception_handler(Exception)
        async def _bug(_, exc: Exception):  # a model error: log it, tell the client no internals
            log.exception("lipo request failed")
            return error(500, f"internal error ({type(exc).__name__}); see the server log")

        @app.exception_handler(RequestValidationError)
        async def _invalid(_, exc: RequestValidationError):
            problems, first = [], None
            for e in exc.errors():
                loc = [str(p) for p in e["loc"] if p != "body"]
                if e["type"] == "json_invalid":
                    problems.append(f"request body is not valid JSON ({e.get('ctx', {}).get('error', e['msg'])})")
                    continue
                field = ".".join(loc) or "body"
                first = first or field
                msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
                problems.append(f"{field}: {msg}")
            return error(422, "; ".join(problems), first)

        @app.get("/healthz")
        async def healthz():
            handles = {**self.policies, **({self.cfg.reward.name: self.reward} if self.reward else {})}
            try:
                infos = await asyncio.wait_for(asyncio.gather(*(h.info.remote() for h in handles.values())), 10)
            except Exception as exc:  # any failure to reach a model is "not ready"
                return JSONResponse({"status": "unavailable", "error": type(exc).__name__}, status_code=503)
            loaded = {name: bool(i["loaded"]) for name, i in zip(handles, infos)}
            ok = all(loaded.values())
            return JSONResponse({"status": "ok" if ok else "loading", "models": loaded}, status_code=200 if ok else 503)

        @app.get("/v1/models", response_model=S.ModelList)
        async def models():
            cards = [S.ModelCard(id=name, created=self.created, role="policy") for name in self.policies]
            if self.reward is not None:
                cards.append(S.ModelCard(id=self.cfg.reward.name, created=self.created, role="reward",
                                         kind=self.cfg.reward.kind))
            return S.ModelList(data=cards)

        @app.post("/v1/completions", response_model=S.Completion)
        async def completions(req: S.CompletionRequest):
            prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
            choices, prompt_tokens = await self._sample(req.model, prompts, req.n, req.max_tokens, req)
            used = sum(c["tokens"] for c in choices)
            return S.Completion(
                id=f"cmpl-{uuid.uuid4().hex}", created=int(time.time()), model=req.model,
                choices=[S.CompletionChoice(index=i, text=c["text"], finish_reason=c["finish_reason"])
                         for i, c in enumerate(choices)],
                usage=S.Usage(prompt_tokens=prompt_tokens, completion_tokens=used, total_tokens=prompt_tokens + used))

        @app.post("/v1/chat/completions", response_model=S.ChatCompletion)
        async def chat_completions(req: S.ChatCompletionRequest):
            max_tokens = req.max_completion_tokens or req.max_tokens or min(256, self.cfg.limits.max_tokens)
            choices, prompt_tokens = await self._sample(req.model, [_prompt(req.messages)], req.n, max_tokens, req)
            used = sum(c["tokens"] for c in choices)
            return S.ChatCompletion(
                id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=req.model,
                choices=[S.ChatChoice(index=i, message=S.AssistantMessage(content=c["text"]),
                                      finish_reason=c["finish_reason"]) for i, c in enumerate(choices)],
                usage=S.Usage(prompt_tokens=prompt_tokens, completion_tokens=used, total_tokens=prompt_tokens + used))

        @app.post("/v1/score", response_model=S.ScoreResponse)
        async def score(req: S.ScoreRequest):
            check_limits(self.cfg.limits, responses=len(req.responses))
            handle = self._reward(req.model)
            rewards = await self._call(handle.score, _prompt(req.prompt), req.responses)
            return S.ScoreResponse(model=self.cfg.reward.name, kind=self.cfg.reward.kind, rewards=rewards)

        @app.post("/v1/compare", response_model=S.CompareResponse)
        async def compare(req: S.CompareRequest):
            handle = self._reward(req.model)
            p = await self._call(handle.compare, _prompt(req.prompt), req.first, req.second)
            return S.CompareResponse(model=self.cfg.reward.name, kind=self.cfg.reward.kind, probability=p)

        @app.post("/v1/logprobs", response_model=S.LogprobsResponse)
        async def logprobs(req: S.LogprobsRequest):
            check_limits(self.cfg.limits, responses=len(req.responses))
            handle = self._policy(req.model)
            out = await self._call(handle.logprobs, {"prompt": _prompt(req.prompt), "responses": req.responses})
            return S.LogprobsResponse(model=req.model, logprobs=out["logprobs"], tokens=out["tokens"])

        return app


def build(cfg: ServeConfig, digest: str | None):
    """The bound application: ingress + one deployment per configured model slot."""
    from lipo.serving.deployments import PolicyModel, RewardModel  # here: the ingress replica never needs torch

    def model(cls, slot, name):
        return cls.options(**slot.deployment.options(name)).bind(slot.model_dump(mode="json"), cfg.tracking_uri)

    policy = model(PolicyModel, cfg.policy, "LipoPolicy")
    baseline = model(PolicyModel, cfg.baseline, "LipoBaseline") if cfg.baseline else None
    reward = model(RewardModel, cfg.reward, "LipoReward") if cfg.reward else None
    return Ingress.options(**cfg.ingress.options("LipoIngress")).bind(
        cfg.model_dump(mode="json"), digest, policy, baseline=baseline, reward=reward)


def _serve_http() -> tuple[str | None, int | None]:
    """(host, port) the running Serve proxies listen on; (None, None) if unknown (treated as non-loopback).

    Serve has no public API for its HTTP options, hence the private client.
    """
    try:
        from ray.serve.context import _get_global_client

        http = _get_global_client().http_config
        return http.host, http.port
    except Exception:
        return None, None


def load_serve_config(args: ServeArgs) -> ServeConfig:
    """The ServeConfig that `args` names: a whole file, or its `section`, with the overrides applied."""
    from lipo.config import load_config

    if args.section is None:
        return load_config(ServeConfig, args.config, args.overrides)
    import yaml
    from pydantic import ValidationError

    from lipo.config import apply_override, format_validation_error
    from lipo.errors import ConfigError

    if args.config is None:
        raise ConfigError("serve args: `section` needs a `config` file")
    try:
        tree = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {args.config}: {exc}".replace("\n", " ")) from None
    sub = tree.get(args.section) if isinstance(tree, dict) else None
    if not isinstance(sub, dict):
        raise ConfigError(f"{args.config} has no `{args.section}` section")
    for override in args.overrides:
        apply_override(sub, override)
    try:
        return ServeConfig.model_validate(sub)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, f"{args.config} [{args.section}]")) from None


def build_app(args: ServeArgs):
    """Serve's typed application builder: `import_path: lipo.serving.app:build_app`, `args: {config: ...}`."""
    cfg = load_serve_config(args)
    key = load_api_key()
    check_bind(_serve_http()[0], key is not None, args.insecure)
    return build(cfg, key_digest(key))


def start_local(cfg: ServeConfig, api_key: str | None, insecure: bool = False, log_level: str = "INFO") -> str:
    """Start (or join) Serve on this machine, deploy the app and return its base URL once every replica is up.

    `log_level="WARNING"` silences the per-request access logs (the evaluation's own server uses it).
    """
    from lipo.runtime import ensure_ray
    from lipo.serving.model_source import check_source

    check_bind(cfg.http.host, api_key is not None, insecure)
    for key, slot in (("policy", cfg.policy), ("baseline", cfg.baseline), ("reward", cfg.reward)):
        if slot is not None:
            check_source(slot.model, f"{key}.model", reward=key == "reward")
    ensure_ray()
    port = cfg.http.port or _free_port(cfg.http.host)
    # The proxy's own timeout is a backstop a little past the ingress's (which answers 408 with a JSON body).
    # If Serve is already running, it keeps its HTTP options (Serve warns), so ask it where it listens.
    serve.start(http_options={"host": cfg.http.host, "port": port,
                              "request_timeout_s": cfg.limits.request_timeout_s + 5},
                logging_config={"log_level": log_level})
    running_host, running_port = _serve_http()
    host, port = (running_host, running_port) if running_host is not None else (cfg.http.host, port)
    serve.run(build(cfg, key_digest(api_key)), name=cfg.app_name, route_prefix=cfg.http.route_prefix,
              logging_config={"log_level": log_level})
    client_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{client_host}:{port}{cfg.http.route_prefix.rstrip('/')}"


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host if host not in ("0.0.0.0", "::") else "127.0.0.1", 0))
        return s.getsockname()[1]


def serve_running() -> bool:
    return _serve_http()[0] is not None


def stop_local(app_name: str, shutdown: bool) -> None:
    """Remove the app; also stop Serve itself when this process started it (`shutdown`)."""
    serve.delete(app_name)
    if shutdown:
        serve.shutdown()
