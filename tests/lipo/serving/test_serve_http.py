"""The Serve application over real HTTP on 127.0.0.1 with the tiny models: the OpenAI client, reward parity,
every designed error code (and that none of those requests reached a model), a bounded load test, and a replica
killed under load. One application for the module; Serve is shut down at the end (Ray belongs to `ray_local`)."""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time

import httpx
import pytest
import ray
import torch
from openai import OpenAI
from ray import serve

from lipo.config import load_config
from lipo.models.generate import SamplingParams, sample
from lipo.models.loading import load_causal_lm, load_tokenizer
from lipo.models.reward import pointwise_rewards
from lipo.models.reward_loading import load_reward_model
from lipo.serving.config import ServeConfig
from lipo.serving.local import start_local

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
APP = "lipo-http"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(ray_local):
    small = "{num_cpus: 0.1, health_check_period_s: 1, health_check_timeout_s: 5, max_ongoing_requests: 4, " \
            "max_queued_requests: 8}"
    cfg = load_config(ServeConfig, None, [
        f"app_name={APP}", "http.port=0", f"policy.deployment={small}", f"reward.deployment={small}",
        "policy.batch.max_batch_size=4", "reward.batch.max_batch_size=4",
        "ingress={num_cpus: 0.1, max_ongoing_requests: 4, max_queued_requests: 4}",
        "limits={max_request_bytes: 4096, max_tokens: 64, max_n: 4, max_responses: 4, request_timeout_s: 30}"])
    t0 = time.perf_counter()
    url = start_local(cfg, api_key=KEY)
    print(f"\n[serve] app up in {time.perf_counter() - t0:.1f}s at {url}")
    yield url
    serve.shutdown()


def _stats():
    """Model calls so far, per deployment: the proof that a rejected request never reached a model."""
    return {d: serve.get_deployment_handle(d, APP).stats.remote().result() for d in ("LipoPolicy", "LipoReward")}


def test_openai_client_completions_and_chat(server):
    client = OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list().data] == ["policy", "reward"]
    out = client.completions.create(model="policy", prompt="Hello", max_tokens=8, n=2, seed=3, temperature=0.8)
    assert len(out.choices) == 2 and out.usage.completion_tokens <= 16 and out.object == "text_completion"
    chat = client.chat.completions.create(model="policy", messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=8, seed=5)
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].finish_reason in ("stop", "length")
    # The server's text is the shared sampler's, for the same seeds: what build-lists would have sampled.
    model, tok = load_causal_lm("builtin:tiny-llama"), load_tokenizer("builtin:tiny-llama")
    want = sample(model, tok, ["Hello"], 2, [3], SamplingParams(temperature=0.8, max_new_tokens=8))[0]
    assert [c.text for c in out.choices] == want
    want_chat = sample(model, tok, [[{"role": "user", "content": "Hi"}]], 1, [5], SamplingParams(max_new_tokens=8))
    assert chat.choices[0].message.content == want_chat[0][0]
    stopped = client.completions.create(model="policy", prompt="Hello", max_tokens=8, seed=3, temperature=0.8,
                                        stop=[want[0][2:4]] if len(want[0]) >= 4 else None)
    assert len(stopped.choices[0].text) <= len(want[0])


def test_score_and_compare_match_the_models(server):
    rm, tok = load_reward_model("builtin:tiny-reward")
    prompt, responses = "What is 2+2?", ["4", "four", "22", "It is 4."]
    got = httpx.post(f"{server}/v1/score", headers=AUTH, json={"prompt": prompt, "responses": responses}).json()
    assert got["rewards"] == pytest.approx(pointwise_rewards(rm, tok, prompt, responses).tolist(), abs=1e-5)
    p = httpx.post(f"{server}/v1/compare", headers=AUTH, json={"prompt": prompt, "first": "4", "second": "22"})
    r = pointwise_rewards(rm, tok, prompt, ["4", "22"])
    assert p.json()["probability"] == pytest.approx(torch.sigmoid(r[0] - r[1]).item(), abs=1e-5)


def test_health_is_open_and_reports_models(server):
    h = httpx.get(f"{server}/healthz")
    assert h.status_code == 200 and h.json() == {"status": "ok", "models": {"policy": True, "reward": True}}


def _error(r: httpx.Response) -> str:
    return r.json()["error"]["message"]


def test_rejections_are_clear_and_never_reach_a_model(server):
    before = _stats()
    c = httpx.Client(base_url=server, timeout=30)
    good = {"model": "policy", "prompt": "Hello", "max_tokens": 4}
    cases = [  # (status, response, a phrase the message must hold)
        (401, c.post("/v1/completions", json=good), "missing or invalid API key"),
        (401, c.post("/v1/completions", json=good, headers={"Authorization": "Bearer wrong"}), "invalid API key"),
        (401, c.get("/v1/models"), "API key"),
        (413, c.post("/v1/completions", headers=AUTH, json={**good, "prompt": "x" * 5000}), "exceeds the limit"),
        (413, c.post("/v1/completions", headers={**AUTH, "content-type": "application/json"},
                     content=iter([b'{"prompt": "', b"x" * 3000, b"x" * 3000, b'"}'])), "exceeds the limit"),
        (422, c.post("/v1/completions", headers=AUTH, json={**good, "temperature": "hot"}), "temperature:"),
        (422, c.post("/v1/completions", headers=AUTH, json={**good, "n": 5}), "n: 5 choices requested"),
        (422, c.post("/v1/completions", headers=AUTH, json={**good, "prompt": ["a", "b", "c"], "n": 2}), "n: 6"),
        (422, c.post("/v1/completions", headers=AUTH, json={**good, "max_tokens": 65}), "max_tokens: 65 exceeds"),
        (422, c.post("/v1/completions", headers=AUTH, json={**good, "bogus": 1}), "bogus: unknown field"),
        (422, c.post("/v1/completions", headers=AUTH, json={**good, "seed": 2**60}), "seed:"),
        (422, c.post("/v1/chat/completions", headers=AUTH, json={"model": "policy", "messages": [{"role": "x"}]}),
         "messages.0.role"),
        (422, c.post("/v1/completions", headers={**AUTH, "content-type": "application/json"}, content=b"{oops"),
         "not valid JSON"),
        (422, c.post("/v1/score", headers=AUTH, json={"prompt": "p", "responses": list("abcde")}), "responses: 5"),
        (404, c.post("/v1/completions", headers=AUTH, json={**good, "model": "gpt-4"}), "unknown model 'gpt-4'"),
    ]
    for status, r, phrase in cases:
        assert r.status_code == status, (status, r.text)
        assert phrase in _error(r), (phrase, r.text)
    assert _stats() == before  # none of them cost a model call


def test_saturated_queue_gets_503_at_once(server):
    """The ingress holds 4 requests and queues 4; a burst of 24 slow ones gets 503s immediately, with Retry-After,
    and exactly the admitted requests reached the model."""
    before = _stats()["LipoPolicy"].get("generate_requests", 0)

    async def burst():
        async with httpx.AsyncClient(base_url=server, headers=AUTH, timeout=60,
                                     limits=httpx.Limits(max_connections=64)) as c:
            async def one():
                t = time.perf_counter()
                r = await c.post("/v1/completions", json={"model": "policy", "prompt": "Hello", "max_tokens": 64,
                                                          "n": 4})
                return r, time.perf_counter() - t
            return await asyncio.gather(*(one() for _ in range(24)))

    results = asyncio.run(burst())
    codes = [r.status_code for r, _ in results]
    rejected = [(r, dt) for r, dt in results if r.status_code == 503]
    print(f"\n[serve] burst of 24: {codes.count(200)} x 200, {len(rejected)} x 503")
    assert set(codes) <= {200, 503} and rejected
    assert all(r.headers.get("retry-after") == "1" and "backpressure" in r.text for r, _ in rejected)
    slowest_ok = max(dt for r, dt in results if r.status_code == 200)
    assert max(dt for _, dt in rejected) < slowest_ok  # rejected at once, not after waiting
    assert _stats()["LipoPolicy"]["generate_requests"] - before == codes.count(200)


def test_bounded_load(server):
    """64 requests at concurrency 4 (within capacity): no errors but designed 503s; p50 / p99 latency printed."""
    async def load():
        gate = asyncio.Semaphore(4)
        async with httpx.AsyncClient(base_url=server, headers=AUTH, timeout=60) as c:
            async def one(i):
                async with gate:
                    t = time.perf_counter()
                    r = await c.post("/v1/completions", json={"model": "policy", "prompt": f"Q{i}",
                                                              "max_tokens": 8, "seed": i})
                    return r.status_code, time.perf_counter() - t
            return await asyncio.gather(*(one(i) for i in range(64)))

    t0 = time.perf_counter()
    results = asyncio.run(load())
    wall = time.perf_counter() - t0
    lat = sorted(dt for code, dt in results if code == 200)
    codes = [code for code, _ in results]
    p50, p99 = statistics.quantiles(lat, n=100)[49], statistics.quantiles(lat, n=100)[98]
    print(f"\n[serve] load: 64 requests, concurrency 4, {wall:.1f}s ({64 / wall:.1f} req/s): "
          f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms; {codes.count(200)} x 200, {codes.count(503)} x 503")
    assert set(codes) <= {200, 503} and codes.count(200) >= 60


def test_proxy_timeout_is_a_408(server):
    """Serve's own request timeout answers 408 (here forced by its per-request header); the app adds its own
    timeout, which a client cannot lift (unit-tested in test_serve_units)."""
    r = httpx.post(f"{server}/v1/completions", headers={**AUTH, "x-request-timeout-seconds": "0.001"},
                   json={"model": "policy", "prompt": "Hello", "max_tokens": 64, "n": 4})
    assert r.status_code == 408 and "timed out" in r.text


def test_killed_replica_is_replaced_under_load(server):
    def replicas():
        return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith(f"SERVE_REPLICA::{APP}#LipoPolicy#")}

    old = replicas()
    assert len(old) == 1
    stop, during = threading.Event(), []

    def load():
        with httpx.Client(base_url=server, headers=AUTH, timeout=60) as c:
            while not stop.is_set():
                r = c.post("/v1/completions", json={"model": "policy", "prompt": "x", "max_tokens": 16})
                during.append(r.status_code)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    ray.kill(ray.get_actor(next(iter(old)), namespace="serve"), no_restart=True)
    t0 = time.perf_counter()
    while not (replicas() - old) and time.perf_counter() - t0 < 90:
        time.sleep(0.5)
    new = replicas() - old
    replaced_in = time.perf_counter() - t0
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert new, "the killed replica was not replaced"
    after = [httpx.post(f"{server}/v1/completions", headers=AUTH, timeout=60,
                        json={"model": "policy", "prompt": f"after {i}", "max_tokens": 4}).status_code
             for i in range(8)]
    print(f"\n[serve] replica replaced in {replaced_in:.1f}s; during the kill: "
          f"{json.dumps({c: during.count(c) for c in sorted(set(during))})}; after: {after}")
    assert after == [200] * 8
    assert set(during) <= {200, 503}  # in-flight calls on the dead replica are a retryable 503, nothing else
