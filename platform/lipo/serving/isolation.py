"""Request isolation and bounded work in the model replicas: one bad request never fails another, and a request past
its deadline stops costing model time.

    budget = Budget(deadline=time.time() + limits.request_timeout_s, max_logprob_tokens=limits.max_logprob_tokens)
    out = await handle.generate.remote(job, budget=budget)       # the ingress (`Ingress.call`) passes one per call
    results = isolated(run_batch, jobs, [j["deadline"] for j in jobs])   # in a replica's `@serve.batch` method
    return raised(results[i])                                      # per caller: its answer, or its own error

Used by `lipo.serving.deployments` (the replicas) and `lipo.serving.app` (the ingress); imports neither torch nor the
deployments, so the ingress loads it freely. Decisions (issue 16):

- **Validate first, per request.** Each replica checks a request completely where its tokenizer and model are,
  before the request joins a batch (`PolicyModel._prepare`), and raises `RequestError` (a 422 naming the field).
- **An error inside a batch stays with its request** (`isolated`). A batch method returns one result per request;
  Ray Serve's `@serve.batch` hands each caller its own list entry, and an exception *instance* in that list is a
  value like any other, so only its caller raises it (`raised`); an exception *raised* by the batch method would
  reach every caller. When the whole batch raises, each request is run again alone (the sampler's draws are
  batch-free, so a good request's rerun gives the answer it would have had in the batch, exactly on CPU in fp32), and
  only the ones that fail alone get an error: their `RequestError`, or a 500 naming the request's failure class.
- **Deadlines.** `Budget.deadline` is wall-clock (`time.time()`), because the ingress and the replica are separate
  processes, possibly on separate nodes (NTP-synced clocks assumed; skew shifts the stop by as much). A request whose
  deadline passed before its batch started is not computed at all (a 408 result), the sampler ends its rows at the
  first step past it (`sample_ids(deadlines=...)`), and `/v1/logprobs` checks it between chunked forwards.
- **Errors cross Ray intact.** `RequestError` pickles with its status and field; Ray re-raises it in the ingress as a
  class that is both `RayTaskError` and `RequestError`, which `plain_error` turns back into a plain `ApiError`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from lipo.serving.schemas import not_utf8
from lipo.serving.security import ApiError

log = logging.getLogger("ray.serve")


class Budget(NamedTuple):
    """What one model call may spend, sent by the ingress with each call: the wall-clock `deadline` (`time.time()`
    seconds) past which the replica stops working on it, and the token bound of `/v1/logprobs` (None: unbounded)."""

    deadline: float = math.inf
    max_logprob_tokens: int | None = None


UNBOUNDED = Budget()


class RequestError(ApiError):
    """One request's own failure inside a replica, with the HTTP status and the field it names. Pickles with all
    three (an `ApiError` would not: its constructor takes more than the message)."""

    def __reduce__(self):
        return (type(self), (self.status, self.message, self.param))


def plain_error(exc: BaseException) -> ApiError | None:
    """The `ApiError` a replica raised, as the ingress sees it (Ray's dual `RayTaskError` subclass, or a bare
    `RayTaskError` whose cause is one), rebuilt as a plain `ApiError`; None for any other exception."""
    cause = exc if isinstance(exc, ApiError) else getattr(exc, "cause", None)
    if isinstance(cause, ApiError):
        return ApiError(cause.status, cause.message, cause.param)
    return None


def late_error() -> RequestError:
    return RequestError(408, "the request passed its deadline (limits.request_timeout_s) before the model finished")


def expired(deadline: float | None) -> bool:
    return deadline is not None and time.time() >= deadline


def check_text(value: Any, field: str) -> None:
    """A 422 naming the path when any string in `value` is not UTF-8 (what no tokenizer encodes); the ingress's
    schemas check this already, the replica again for callers that skip them."""
    bad = not_utf8(value)
    if bad is not None:
        path = field if bad[0] == "body" else f"{field}.{bad[0]}"
        raise RequestError(422, f"{path}: text is not valid UTF-8 ({bad[1]})", path)


def as_request_error(exc: Exception) -> ApiError:
    """A request's failure as its own error: its `ApiError` as is, anything else a 500 that names the failure class
    (the detail goes to the replica's log, not to the client)."""
    if isinstance(exc, ApiError):
        return exc
    log.error("lipo: a request failed in the model replica", exc_info=exc)
    return RequestError(500, f"the model failed on this request ({type(exc).__name__}); see the server log")


def isolated(run: Callable[[list], list], jobs: list, deadlines: list[float | None],
             prepare: Callable[[Any], Any] | None = None) -> list:
    """One result per job: `run(jobs)` (the batch's forward) for the jobs whose deadline has not passed (those get
    `late_error()` unrun), each first passed through `prepare` (optional: its checks, one job at a time, so a job
    they refuse gets its own error). If the batch raises, each job runs alone and keeps its own result or error; a
    job's error is returned, never raised, so its batch-mates still get their answers (see the module docstring)."""
    out: list = [late_error() if expired(d) else None for d in deadlines]
    live = []
    for i, job in enumerate(jobs):
        if out[i] is None and prepare is not None:
            try:
                job = prepare(job)
            except Exception as exc:  # noqa: BLE001 - this job's own failure, returned as its result
                out[i] = as_request_error(exc)
        if out[i] is None:
            live.append(job)
    if not live:
        return out
    try:
        results = run(live)
    except Exception as exc:  # noqa: BLE001 - re-run alone to find whose it is
        if len(live) == 1:
            results = [as_request_error(exc)]
        else:
            log.warning("lipo: a batch of %d requests failed (%s); running each alone", len(live), type(exc).__name__)
            results = [_alone(run, job) for job in live]
    it = iter(results)
    return [o if o is not None else next(it) for o in out]


def _alone(run: Callable[[list], list], job: Any) -> Any:
    try:
        return run([job])[0]
    except Exception as exc:  # noqa: BLE001 - this job's own failure, returned as its result
        return as_request_error(exc)


def raised(result: Any) -> Any:
    """A batch result for its caller: an exception instance (this request's own error) is raised here."""
    if isinstance(result, BaseException):
        raise result
    return result
