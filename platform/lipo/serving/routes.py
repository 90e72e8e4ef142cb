"""The ingress's HTTP surface: the seven routes and the handlers that turn every error into OpenAI's error body.

    app.include_router(router(ingress))      # ingress: a `lipo.serving.app.Ingress` (its config and handles)
    install_error_handlers(app)

Used by `Ingress.__serve_build_asgi_app__` (one FastAPI app per ingress replica; start it with `lipo serve` or
`serve run deploy/serve/lipo.yaml`). Routes check the config's limits (422) before any model call, and reach the
models only through `Ingress.call` (408 past the request timeout, 503 when a deployment is at capacity). Bodies and
SSE streams (`stream: true`) are rendered by `lipo.serving.streaming`; a stream's response starts only after the
policy's first event, so it meets every check and error above exactly as a whole answer does.

`GET /healthz` (open, no key) answers from `HealthCache`: the model deployments' replica states as Serve's
controller reports them (`serve.status()`: a model is ready when it has a RUNNING replica, which the controller
health-checks itself), fetched at most once per `HEALTH_TTL_S` per ingress replica by one task that concurrent
probes share. A probe never calls a model, so a flood of them costs the models nothing and takes no model slot.
"""

# No `from __future__ import annotations` here: FastAPI reads the routes' annotations as real classes.
import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from lipo.serving import schemas as S
from lipo.serving.security import ApiError, check_limits
from lipo.serving.streaming import (chat_body, chat_chunks, completion_body, completion_chunks, incremental_chunks,
                                    sse_response)

log = logging.getLogger("ray.serve")
HEALTH_TTL_S = 1.0  # /healthz answers are at most this old; one controller query per ingress replica per period
HEALTH_TIMEOUT_S = 5.0  # a controller that does not answer within this is "unavailable" (and cached as such)
DEPLOYMENTS = {"policy": "LipoPolicy", "baseline": "LipoBaseline", "reward": "LipoReward"}  # slot -> Serve name


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse(S.error_body(message, status, param), status_code=status, headers=headers)


async def _api_error(_, exc: ApiError) -> JSONResponse:
    return _error(exc.status, exc.message, exc.param)


async def _http_error(_, exc: HTTPException) -> JSONResponse:
    return _error(exc.status_code, str(exc.detail))


async def _bug(_, exc: Exception) -> JSONResponse:  # a model error: log it, tell the client no internals
    log.exception("lipo request failed")
    return _error(500, f"internal error ({type(exc).__name__}); see the server log")


async def _invalid(_, exc: RequestValidationError) -> JSONResponse:
    """One 422 listing every problem, each naming its field (`messages.0.role: ...`); `param` is the first."""
    problems, first = [], None
    for e in exc.errors():
        loc = [str(p) for p in e["loc"] if p != "body"]
        if e["type"] == "json_invalid":
            problems.append(f"request body is not valid JSON ({e.get('ctx', {}).get('error', e['msg'])})")
            continue
        if e["type"] == "refused_field":  # an OpenAI field lipo refuses: the message names it (schemas.refusal)
            first = first or e["ctx"]["field"]
            problems.append(e["msg"])
            continue
        field = ".".join(loc) or "body"
        first = first or field
        msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
        problems.append(f"{field}: {msg}")
    return _error(422, "; ".join(problems), first)


def install_error_handlers(app: FastAPI) -> None:
    """Every error as OpenAI's JSON body with its status (503s add `Retry-After`); unexpected ones as a bare 500."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(Exception, _bug)


def _prompt(p: Any) -> Any:
    """A request prompt as the model code takes it: text, or a list of {role, content} dicts (OpenAI's newer
    `developer` role is the model's `system`)."""
    return p if isinstance(p, str) else [{"role": "system" if m.role == "developer" else m.role,
                                          "content": m.content} for m in p]


async def serve_replica_states(deployments: list[str]) -> dict[str, int]:
    """RUNNING replicas of each named deployment of this replica's application, from Serve's controller."""
    from ray import serve

    app = serve.get_replica_context().app_name
    status = await asyncio.to_thread(serve.status)  # a blocking call to the controller: off the event loop
    found = status.applications[app].deployments
    return {d: found[d].replica_states.get("RUNNING", 0) if d in found else 0 for d in deployments}


class HealthCache:
    """The /healthz answer, refreshed at most every `ttl` seconds by one shared task.

    `fetch(deployments)` -> RUNNING replicas per deployment (`serve_replica_states`; tests pass their own).
    """

    def __init__(self, models: dict[str, str], fetch: Callable[[list[str]], Awaitable[dict[str, int]]],
                 ttl: float = HEALTH_TTL_S):
        self.models, self.fetch, self.ttl = models, fetch, ttl  # models: OpenAI model name -> deployment name
        self.fetches = 0
        self._answer: tuple[float, int, dict] | None = None  # (monotonic time, status code, body)
        self._refresh: asyncio.Task | None = None

    async def get(self) -> tuple[int, dict]:
        if self._answer is not None and time.monotonic() - self._answer[0] < self.ttl:
            return self._answer[1:]
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self._fetch())
        return await asyncio.shield(self._refresh)  # one probe going away does not cancel the others' answer

    async def _fetch(self) -> tuple[int, dict]:
        self.fetches += 1
        try:
            running = await asyncio.wait_for(self.fetch(list(self.models.values())), HEALTH_TIMEOUT_S)
        except Exception as exc:  # the controller unreachable: not ready, cached like any answer
            code, body = 503, {"status": "unavailable", "error": type(exc).__name__}
        else:
            ready = {name: running.get(d, 0) > 0 for name, d in self.models.items()}
            ok = all(ready.values())
            code, body = (200 if ok else 503), {"status": "ok" if ok else "loading", "models": ready}
        self._answer = (time.monotonic(), code, body)
        return code, body


class _Routes:
    """The route functions, bound to one ingress replica's state (config, model handles, start time)."""

    def __init__(self, ingress, health_fetch=serve_replica_states):
        self.ing = ingress
        self.limits = ingress.cfg.limits
        self.reward_cfg = ingress.cfg.reward
        slots = [(k, getattr(ingress.cfg, k)) for k in DEPLOYMENTS]
        self.health = HealthCache({s.name: DEPLOYMENTS[k] for k, s in slots if s is not None}, health_fetch)

    async def healthz(self) -> JSONResponse:
        code, body = await self.health.get()
        return JSONResponse(body, status_code=code, headers={"Retry-After": "1"} if code == 503 else None)

    async def models(self) -> S.ModelList:
        cards = [S.ModelCard(id=name, created=self.ing.created, role="policy") for name in self.ing.policies]
        if self.ing.reward is not None:
            cards.append(S.ModelCard(id=self.reward_cfg.name, created=self.ing.created, role="reward",
                                     kind=self.reward_cfg.kind))
        return S.ModelList(data=cards)

    # A stream starts its response only once the policy's first event is in (see Ingress.sample_stream): limits,
    # auth and the model's 404 / 408 / 503 are ordinary HTTP errors for it too. With `logprobs` it is the whole
    # answer sent token by token (log-probs need a forward over the finished answer; see lipo.serving.streaming).
    async def completions(self, req: S.CompletionRequest) -> S.Completion:
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if req.stream and req.top_k_logprobs() is None:
            events = await self.ing.sample_stream(req.model, prompts, req.n, req.max_tokens, req)
            return sse_response(incremental_chunks(req, events, len(prompts) * req.n))
        choices, prompt_tokens = await self.ing.sample(req.model, prompts, req.n, req.max_tokens, req)
        if req.stream:
            return sse_response(completion_chunks(req, choices, prompt_tokens))
        return completion_body(req, choices, prompt_tokens)

    async def chat_completions(self, req: S.ChatCompletionRequest) -> S.ChatCompletion:
        max_tokens = req.max_completion_tokens or req.max_tokens or min(256, self.limits.max_tokens)
        prompts = [_prompt(req.messages)]
        if req.stream and req.top_k_logprobs() is None:
            events = await self.ing.sample_stream(req.model, prompts, req.n, max_tokens, req)
            return sse_response(incremental_chunks(req, events, req.n))
        choices, prompt_tokens = await self.ing.sample(req.model, prompts, req.n, max_tokens, req)
        if req.stream:
            return sse_response(chat_chunks(req, choices, prompt_tokens))
        return chat_body(req, choices, prompt_tokens)

    async def score(self, req: S.ScoreRequest) -> S.ScoreResponse:
        check_limits(self.limits, responses=len(req.responses))
        handle = self.ing.reward_handle(req.model)
        rewards = await self.ing.call(handle.score, _prompt(req.prompt), req.responses)
        return S.ScoreResponse(model=self.reward_cfg.name, kind=self.reward_cfg.kind, rewards=rewards)

    async def compare(self, req: S.CompareRequest) -> S.CompareResponse:
        handle = self.ing.reward_handle(req.model)
        p = await self.ing.call(handle.compare, _prompt(req.prompt), req.first, req.second)
        return S.CompareResponse(model=self.reward_cfg.name, kind=self.reward_cfg.kind, probability=p)

    async def logprobs(self, req: S.LogprobsRequest) -> S.LogprobsResponse:
        check_limits(self.limits, responses=len(req.responses))
        handle = self.ing.policy_handle(req.model)
        out = await self.ing.call(handle.logprobs, {"prompt": _prompt(req.prompt), "responses": req.responses})
        return S.LogprobsResponse(model=req.model, logprobs=out["logprobs"], tokens=out["tokens"])


def router(ingress, health_fetch=serve_replica_states) -> APIRouter:
    """The seven routes of one ingress replica (`health_fetch`: see `HealthCache`)."""
    r, api = _Routes(ingress, health_fetch), APIRouter()
    api.add_api_route("/healthz", r.healthz, methods=["GET"])
    api.add_api_route("/v1/models", r.models, methods=["GET"], response_model=S.ModelList)
    api.add_api_route("/v1/completions", r.completions, methods=["POST"], response_model=S.Completion)
    api.add_api_route("/v1/chat/completions", r.chat_completions, methods=["POST"],
                      response_model=S.ChatCompletion)
    api.add_api_route("/v1/score", r.score, methods=["POST"], response_model=S.ScoreResponse)
    api.add_api_route("/v1/compare", r.compare, methods=["POST"], response_model=S.CompareResponse)
    api.add_api_route("/v1/logprobs", r.logprobs, methods=["POST"], response_model=S.LogprobsResponse)
    return api
