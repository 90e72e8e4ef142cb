"""Request isolation and bounded work (issue 16, points 1 and 2), without starting Serve: the schemas through the
FastAPI routes, the replicas' methods called directly, and Ray Serve's real `@serve.batch` queue (its replica
context stubbed: `_serve_batch`), so a bad request shares a batch with good ones exactly as in a replica.

    pytest tests/lipo/serving/test_serve_isolation.py
"""

from __future__ import annotations

import asyncio
import json
import pickle
import threading
import time
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from ray import serve
from ray.exceptions import RayTaskError

from lipo.config import load_config
from lipo.serving import deployments
from lipo.serving.app import Ingress, _bounded
from lipo.serving.config import ServeConfig
from lipo.serving.deployments import PolicyModel, RewardModel, _chunks
from lipo.serving.isolation import Budget, RequestError, plain_error
from lipo.serving.routes import install_error_handlers, router
from lipo.serving.security import ApiError

BASE = {"n": 2, "max_tokens": 6, "temperature": 1.0, "top_p": 0.9, "stop": [], "logprobs": None}
GOOD = {**BASE, "prompts": ["Hello", "Hi there"], "seed": 7}
OTHER = {**BASE, "prompts": ["Other"], "seed": 3, "temperature": 0.0, "stop": ["e"]}  # own sampling params


@pytest.fixture(scope="module")
def policy():
    return PolicyModel.func_or_class({"model": "builtin:tiny-llama", "name": "policy"})


@contextmanager
def _serve_batch(*methods):
    """Serve's `@serve.batch` outside a replica: it reads only `max_ongoing_requests` from the replica context (a
    warning check), and keeps one queue per decorated method, bound to the first event loop that uses it; each
    test's loop gets fresh queues."""
    lazies = [m.set_max_batch_size.__self__ for m in methods]  # Serve's _LazyBatchQueueWrapper of each method
    saved = serve.get_replica_context
    serve.get_replica_context = lambda: SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=8))
    for lazy in lazies:
        lazy._queue = None
    try:
        yield
    finally:
        serve.get_replica_context = saved
        for lazy in lazies:
            lazy._queue = None


def _app(**ingress) -> TestClient:
    """The routes and error handlers on a stand-in ingress whose model calls fail the test if reached."""
    def never(*args, **kwargs):
        raise AssertionError("a rejected request reached a model")

    fake = SimpleNamespace(cfg=load_config(ServeConfig, None, []), call=never, sample=never, sample_stream=never,
                           policy_handle=lambda name: SimpleNamespace(logprobs=None),
                           reward_handle=lambda name: SimpleNamespace(score=None, compare=None), **ingress)
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router(fake))
    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize("path, body, param", [
    ("/v1/completions", '{"model": "policy", "prompt": "a\\ud800b"}', "prompt"),
    ("/v1/completions", '{"model": "policy", "prompt": ["ok", "\\udfff"]}', "prompt.1"),
    ("/v1/completions", '{"model": "policy", "prompt": "a", "stop": ["x", "\\ud800"]}', "stop.1"),
    ("/v1/completions", '{"model": "policy\\ud800", "prompt": "a"}', "model"),
    ("/v1/completions", '{"model": "policy", "prompt": "a", "user": "\\ud800"}', "user"),  # ignored, still checked
    ("/v1/chat/completions", '{"model": "policy", "messages": [{"role": "user", "content": "\\ud800"}]}',
     "messages.0.content"),
    ("/v1/chat/completions", '{"model": "policy", "messages": [{"role": "user", "content": '
                             '[{"type": "text", "text": "\\ud800"}]}]}', "messages.0.content.0.text"),
    ("/v1/score", '{"prompt": "q", "responses": ["a", "\\ud800"]}', "responses.1"),
    ("/v1/compare", '{"prompt": "q", "first": "a", "second": "\\ud800"}', "second"),
    ("/v1/logprobs", '{"model": "policy", "prompt": [{"role": "user", "content": "\\ud800"}], "responses": ["a"]}',
     "prompt.0.content"),
    ("/v1/completions", '{"model": "policy", "prompt": "a", "seed": 9007199254740993}', "seed"),
])
def test_unencodable_text_and_seed_range_are_a_422_naming_the_field(path, body, param):
    """JSON's \\ud800 escape carries a lone surrogate, which no tokenizer takes: every body string (keys and ignored
    fields too) is checked before any model call; the 422 names the field and its answer is valid UTF-8 JSON."""
    r = _app().post(path, content=body.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    err = json.loads(r.content.decode("utf-8"))["error"]
    assert err["param"] == param and err["message"].startswith(param)


def test_a_bad_request_in_a_serve_batch_fails_alone(policy):
    """Four requests in one real `@serve.batch` call: a seed past the sampler's int64 row seeds and a prompt no
    tokenizer takes (both as direct calls, skipping the schemas) get 422s naming `seed` and `prompt`; the two
    good ones get exactly the answers they get alone."""
    alone = [policy._sample_jobs([job])[0] for job in (GOOD, OTHER)]
    bad_seed, bad_text = {**GOOD, "seed": 2**62}, {**GOOD, "prompts": ["\ud800"]}

    async def batch():
        return await asyncio.gather(*(policy.generate(j) for j in (GOOD, bad_seed, bad_text, OTHER)),
                                    return_exceptions=True)

    with _serve_batch(PolicyModel.func_or_class._generate):
        good, seed, text, other = asyncio.run(batch())
    assert [good, other] == alone
    assert isinstance(seed, RequestError) and (seed.status, seed.param) == (422, "seed")
    assert isinstance(text, RequestError) and (text.status, text.param) == (422, "prompt")


def test_a_failure_inside_the_pass_is_retried_alone(policy, monkeypatch):
    """A request that passes every check but fails inside the batch's pass (here: its log-prob forward, made to
    fail for its prompt) fails alone with a 500 naming the failure class; the batch is re-run one request at a
    time, so its batch-mates get the answers they would get alone."""
    boom = {**GOOD, "prompts": ["boom"], "logprobs": 2}
    real, bad_ids = policy._token_logprobs, policy._prepare(boom)["ids"][0]

    def flaky(prompt_ids, ids, top):
        if prompt_ids == bad_ids:
            raise FloatingPointError("injected")
        return real(prompt_ids, ids, top)

    alone = [policy._sample_jobs([job])[0] for job in (GOOD, OTHER)]
    monkeypatch.setattr(policy, "_token_logprobs", flaky)
    good, bad, other = policy._sample_jobs([GOOD, boom, OTHER])
    assert [good, other] == alone
    assert isinstance(bad, RequestError) and bad.status == 500 and "FloatingPointError" in bad.message


def test_a_stream_pass_that_fails_midway_resumes_each_stream_alone(policy):
    """Two streams share a pass (3 rows) that fails at its 4th decode step (a fault of the 3-row batch only): each
    stream is re-run alone and sends only text beyond what it already sent, so deltas + rest still join to the
    whole answer; a stream with a bad seed in the same batch gets its own 422 as its result."""
    first = {**GOOD, "prompts": ["Hello"], "max_tokens": 12}
    jobs = [first, {**first, "prompts": ["Yo"], "n": 1, "seed": 9}, {**GOOD, "seed": -2**62}]
    want = [[c["text"] for c in out["choices"]] for out in policy._sample_jobs(jobs[:2])]
    forwards = []

    def fault(module, args, kwargs):
        forwards.append(kwargs["input_ids"].shape[0])
        if forwards.count(3) == 4 and forwards[-1] == 3:
            raise MemoryError("injected")

    async def run():
        return [e async for e in type(policy)._generate_stream.__wrapped__(policy, [dict(j) for j in jobs])]

    hook = policy.model.register_forward_pre_hook(fault, with_kwargs=True)
    try:
        events = asyncio.run(run())
    finally:
        hook.remove()
    *steps, final = events
    assert forwards.count(3) == 4 and isinstance(final[2], RequestError) and final[2].param == "seed"
    assert sum(1 for e in steps if e[0]["deltas"]) > 0 and len(steps) > 12  # text went out before the fault
    for ji in range(2):
        out = final[ji]
        joined = ["".join(t for e in steps for i, t in e[ji]["deltas"] if i == c) + out["rest"][c]
                  for c in range(len(out["choices"]))]
        assert joined == [c["text"] for c in out["choices"]] == want[ji]


def test_reward_requests_fail_alone(monkeypatch):
    """Reward batches: unencodable text is refused before the batch (422 naming the field); a request that breaks
    the batch's forward (a prompt of the wrong type, a direct call) fails alone, the others keep their scores."""
    rm = RewardModel.func_or_class({"model": "builtin:tiny-reward", "kind": "pointwise"})
    want = rm._run([("score", "q", ["a", "bb"])])[0]

    async def batch():
        return await asyncio.gather(rm.score("q", ["a", "bb"]), rm.score("q", ["\ud800"]), rm.score(17, ["x"]),
                                    rm.compare("q", "a", "bb"), return_exceptions=True)

    with _serve_batch(RewardModel.func_or_class._judge):
        score, text, typed, p = asyncio.run(batch())
    assert score == pytest.approx(want, abs=1e-6) and 0.0 < p < 1.0
    assert isinstance(text, RequestError) and (text.status, text.param) == (422, "responses.0")
    assert isinstance(typed, RequestError) and typed.status == 500


def test_replica_checks_the_bounds_its_tokenizer_and_model_impose(policy):
    """Prompt (its kept end) + max_tokens past the model's context length (2048 for the tiny model), `n` past the
    sampler's 1000 choices per prompt seed, and /v1/logprobs past the context or `max_logprob_tokens`: 422s
    naming the field, before any forward."""
    def refused(call) -> RequestError:
        with pytest.raises(RequestError) as exc:
            call()
        assert exc.value.status == 422
        return exc.value

    long = {**GOOD, "prompts": ["x" * 600], "max_tokens": 1600, "field": "messages"}  # 512 kept + 1600 > 2048
    assert refused(lambda: policy._prepare(long)).param == "max_tokens"
    assert "512 tokens" in refused(lambda: policy._prepare(long)).message
    assert refused(lambda: policy._prepare({**GOOD, "n": 1001})).param == "n"
    assert refused(lambda: policy._prepare({**GOOD, "prompts": ["ok", "\udc00"]})).param == "prompt.1"
    job = {"prompt": "Hello", "responses": ["ab", "c" * 2100]}  # 6 prompt tokens + 2101 > 2048
    assert refused(lambda: policy._logprobs(job)).param == "responses.1"
    job = {"prompt": "Hello", "responses": ["ab", "c"]}  # (6 + 3) + (6 + 2) = 17 tokens
    assert policy._logprobs(job, Budget(max_logprob_tokens=17))["tokens"] == [3, 2]
    assert "17, past limits.max_logprob_tokens (16)" in refused(
        lambda: policy._logprobs(job, Budget(max_logprob_tokens=16))).message


def test_logprobs_chunks_check_the_deadline_and_keep_the_values(policy, monkeypatch):
    """Long /v1/logprobs requests run as several forwards (padded tokens per forward bounded), with the deadline
    checked before each: a passed deadline is a 408 before any forward; chunked values equal one forward's."""
    assert _chunks([3, 3, 3], 6) == [(0, 2), (2, 3)] and _chunks([9, 2], 6) == [(0, 1), (1, 2)]
    assert _chunks([2, 2], 4096) == [(0, 2)] and _chunks([], 8) == []
    job = {"prompt": "Hello", "responses": ["ab", "c", "defg"]}
    whole = policy._logprobs(job)
    monkeypatch.setattr(deployments, "LOGPROB_CHUNK_TOKENS", 1)  # one response per forward
    forwards = []
    hook = policy.model.register_forward_pre_hook(lambda *a: forwards.append(1))
    try:
        assert policy._logprobs(job)["logprobs"] == pytest.approx(whole["logprobs"], abs=1e-5)
        assert len(forwards) == 3
        with pytest.raises(RequestError) as exc:
            policy._logprobs(job, Budget(deadline=time.time() - 1))
    finally:
        hook.remove()
    assert exc.value.status == 408 and len(forwards) == 3


class _Handle:
    """A model method as `Ingress.call` sees it: `remote(*args, budget=)` gives an awaitable with `cancel()`."""

    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args, budget):
        return asyncio.ensure_future(self.fn(*args, budget=budget))


def test_a_408_stops_the_sampler_and_frees_the_replica(policy):
    """A generation of 200 slow steps (10 ms each) under a 0.3 s request timeout: the ingress answers 408 and cancels
    its call, and the replica's sampler, which got the deadline with the call, stops at the next step by itself
    (no forward runs after it), so the following request is answered at once through the same batch queue."""
    ingress = SimpleNamespace(cfg=load_config(ServeConfig, None, ["limits.request_timeout_s=0.3"]))
    forwards, lock = [], threading.Lock()

    def slow(module, args, kwargs):
        with lock:
            forwards.append(time.time())
        time.sleep(0.01)

    async def run():
        generate = _Handle(policy.generate)
        with pytest.raises(ApiError) as exc:
            await Ingress.func_or_class.call(ingress, generate, {**GOOD, "max_tokens": 200})
        timed_out = time.time()
        await asyncio.sleep(0.3)
        ran = len(forwards)
        await asyncio.sleep(0.2)
        assert len(forwards) == ran  # the pass has ended: nothing ran in the last 0.2 s
        started = time.time()
        out = await Ingress.func_or_class.call(ingress, generate, {**GOOD, "max_tokens": 2})
        return exc.value, timed_out, ran, time.time() - started, out

    hook = policy.model.register_forward_pre_hook(slow, with_kwargs=True)
    try:
        with _serve_batch(PolicyModel.func_or_class._generate):
            exc, timed_out, ran, took, out = asyncio.run(run())
    finally:
        hook.remove()
    assert exc.status == 408 and ran < 100  # 200 steps asked: cut short near the 0.3 s deadline
    assert len(out["choices"]) == 4 and all(c["tokens"] <= 2 for c in out["choices"])
    assert len(forwards) == ran + 2 and took < 5  # the next request: its own prefill + 1 step, not queued


def test_replica_errors_cross_ray_as_their_status():
    """A replica's `RequestError` pickles with its status and field; Ray re-raises it in the ingress as a class
    that is both `RayTaskError` and the error, and `_bounded` answers it as a plain ApiError with its status."""
    err = pickle.loads(pickle.dumps(RequestError(422, "seed: too large", "seed")))
    assert (err.status, err.message, err.param) == (422, "seed: too large", "seed")
    try:
        raise err
    except RequestError as exc:
        dual = RayTaskError("generate", "traceback", exc).as_instanceof_cause()
    assert isinstance(dual, RayTaskError) and plain_error(dual).param == "seed"
    assert plain_error(RayTaskError("generate", "tb", ValueError("x"))) is None

    async def failing():
        raise dual

    with pytest.raises(ApiError) as exc:
        asyncio.run(_bounded(failing(), lambda: None, 5, 5))
    assert type(exc.value) is ApiError and (exc.value.status, exc.value.param) == (422, "seed")
