"""Capacity under hostile but fair load (issue 16, points 3-6): throughput past the best concurrency, a /healthz
flood, slow request bodies, a killed ingress replica. Unit tests first (config, health cache, body timeout), then
one Serve application with the ServeConfig defaults (2 ingress replicas, the tiny policy, no reward model) on
127.0.0.1, shut down at the end of the module (Ray belongs to `ray_local`).

Run: RAY_ADDRESS=local pytest tests/lipo/serving/test_serve_load.py
The loops are small and bounded; the one timing bound is a ratio measured within the test (see
`test_throughput_holds_past_the_best_concurrency`). benchmarks/serve_load.py measures the same thing properly.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest
import ray
from fastapi import FastAPI, Request
from ray import serve

from lipo.config import load_config
from lipo.errors import ConfigError
from lipo.serving.config import ServeConfig
from lipo.serving.local import start_local
from lipo.serving.routes import HealthCache, install_error_handlers
from lipo.serving.security import Guard

KEY = "load-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
APP = "lipo-load"


# --- without Serve ------------------------------------------------------------------------------------------------
def test_model_limits_cover_what_the_ingress_admits():
    """Point 3's cause: a model deployment that admits fewer calls than the ingress sends leaves the excess in
    Serve's router, which backs off (up to 0.5 s) while the replica idles. The defaults derive the models' limit
    from the ingress; an explicit one below it is refused with the numbers; 0 (which Serve refuses) too."""
    cfg = load_config(ServeConfig, None, ["baseline.model=builtin:tiny-llama"])
    admitted = cfg.ingress.num_replicas * cfg.ingress.max_ongoing_requests
    assert cfg.ingress.num_replicas >= 2  # point 6: the proxy routes around a dead ingress replica
    for slot in (cfg.policy, cfg.baseline, cfg.reward):
        assert slot.deployment.max_ongoing_requests >= max(admitted, slot.batch.max_batch_size)
        assert slot.deployment.options("x")["max_ongoing_requests"] == slot.deployment.max_ongoing_requests
    bigger = load_config(ServeConfig, None, ["ingress.num_replicas=3", "ingress.max_ongoing_requests=10"])
    assert bigger.policy.deployment.max_ongoing_requests == 30  # derived: 3 x 10
    with pytest.raises(ConfigError, match=r"policy.deployment.max_ongoing_requests \(8\) x 1 replica\(s\) is below "
                                          r"what the ingress admits \(2 x ingress.max_ongoing_requests 64 = 128\)"):
        load_config(ServeConfig, None, ["policy.deployment.max_ongoing_requests=8"])
    ok = load_config(ServeConfig, None, ["reward.deployment={num_replicas: 2, max_ongoing_requests: 64}"])
    assert ok.reward.deployment.max_ongoing_requests == 64  # 2 replicas x 64 cover 128
    with pytest.raises(ConfigError, match="max_queued_requests: .*at least 1"):
        load_config(ServeConfig, None, ["ingress.max_queued_requests=0"])


def test_health_cache_shares_one_fetch_per_period():
    """Point 4: /healthz answers from a cache; concurrent probes share one fetch of the replica states, and a
    failed fetch is a cached 503, not an error per probe."""
    calls = []

    async def fetch(deployments):
        calls.append(list(deployments))
        await asyncio.sleep(0.05)
        return {"LipoPolicy": 1, "LipoReward": 0}

    async def run():
        cache = HealthCache({"policy": "LipoPolicy", "reward": "LipoReward"}, fetch, ttl=0.3)
        first = await asyncio.gather(*(cache.get() for _ in range(50)))
        again = await cache.get()
        await asyncio.sleep(0.35)
        later = await cache.get()
        return first, again, later, cache.fetches

    first, again, later, fetches = asyncio.run(run())
    assert first == [(503, {"status": "loading", "models": {"policy": True, "reward": False}})] * 50
    assert again == first[0] and later == first[0] and fetches == 2 and calls[0] == ["LipoPolicy", "LipoReward"]

    async def broken(_):
        raise TimeoutError

    cache = HealthCache({"policy": "LipoPolicy"}, broken)
    assert asyncio.run(cache.get()) == (503, {"status": "unavailable", "error": "TimeoutError"})


def _slow_body_app(timeout: float) -> Guard:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/echo")
    async def echo(request: Request) -> dict:
        return {"n": len(await request.body())}

    return Guard(app, key_digest=None, max_request_bytes=1000, body_timeout_s=timeout)


def _drive(guard: Guard, chunks: list[bytes], then_wait: float | None) -> tuple[int, dict, float]:
    """One POST /echo whose body is `chunks` (the last one ends it unless `then_wait`: then the client stalls
    for that long before it disconnects). Returns (status, JSON body, seconds)."""
    sent = []

    async def run():
        queue = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
        if then_wait is None:
            queue[-1]["more_body"] = False

        async def receive():
            if queue:
                return queue.pop(0)
            await asyncio.sleep(then_wait or 3600)
            return {"type": "http.disconnect"}

        async def send(msg):
            sent.append(msg)

        scope = {"type": "http", "method": "POST", "path": "/echo", "root_path": "", "query_string": b"",
                 "headers": [(b"content-type", b"application/json")]}
        await guard(scope, receive, send)

    t = time.perf_counter()
    asyncio.run(run())
    return sent[0]["status"], json.loads(sent[1]["body"]), time.perf_counter() - t


def test_slow_body_gets_408_and_a_fast_one_does_not():
    """Point 5: a body still incomplete `body_timeout_s` after the request started is a 408 naming the limit."""
    status, body, took = _drive(_slow_body_app(0.3), [b'{"a": ', b"1"], then_wait=30)
    assert status == 408 and "limits.body_timeout_s" in body["error"]["message"] and took < 10
    assert _drive(_slow_body_app(0.3), [b'{"a": ', b"1}"], then_wait=None)[:2] == (200, {"n": 8})


# --- one Serve application ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(ray_local):
    cfg = load_config(ServeConfig, None, [f"app_name={APP}", "http.port=0", "reward=null", "limits.body_timeout_s=1",
                                          "policy.deployment.num_cpus=0.1"])
    t0 = time.perf_counter()
    url = start_local(cfg, api_key=KEY, log_level="WARNING")
    print(f"\n[serve] load app up in {time.perf_counter() - t0:.1f}s at {url}")
    yield url, cfg
    serve.shutdown()


async def _closed_loop(url: str, concurrency: int, total: int, tag: str) -> tuple[float, list[int]]:
    todo, codes = iter(range(total)), []

    async def client(c):
        for i in todo:
            r = await c.post("/v1/completions", json={"model": "policy", "prompt": f"{tag} {i}", "max_tokens": 8,
                                                      "seed": i})
            codes.append(r.status_code)

    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=120,
                                 limits=httpx.Limits(max_connections=concurrency + 2)) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(concurrency)))
        return total / (time.perf_counter() - t0), codes


@pytest.mark.slow  # with the app's start (~20 s, its first test pays it)
def test_throughput_holds_past_the_best_concurrency(server):
    """Point 3: at c=32 (4x the batch size, well inside the queue limit) the replica works through its batch
    queue instead of idling while Serve's router backs off: req/s stays near c=8's (measured here: ~0.95x; before
    the fix ~0.45x), and nothing is refused. The bound (0.6x) is loose: the machine is shared."""
    url, _ = server
    asyncio.run(_closed_loop(url, 8, 8, "warm"))
    rate8, codes8 = asyncio.run(_closed_loop(url, 8, 32, "c8"))
    rate32, codes32 = asyncio.run(_closed_loop(url, 32, 64, "c32"))
    print(f"\n[serve] c=8: {rate8:.1f} req/s, c=32: {rate32:.1f} req/s ({rate32 / rate8:.2f}x)")
    assert set(codes8) == set(codes32) == {200}
    assert rate32 >= 0.6 * rate8


@pytest.mark.slow
def test_healthz_flood_leaves_legitimate_requests_alone(server):
    """Point 4: 100 unauthenticated clients polling /healthz (300 to 1,000 probes) while 8 completions run:
    every completion succeeds and every probe answers 200 from the cache."""
    url, _ = server

    async def run():
        done, probes = asyncio.Event(), []

        async def prober(c):
            while (not done.is_set() or len(probes) < 300) and len(probes) < 1000:  # 300 to 1,000 probes
                probes.append((await c.get("/healthz")).status_code)

        async def legit(c, i):
            r = await c.post("/v1/completions", headers=AUTH,
                             json={"model": "policy", "prompt": f"legit {i}", "max_tokens": 4, "seed": i})
            return r.status_code

        async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=128)) as c:
            flood = [asyncio.ensure_future(prober(c)) for _ in range(100)]
            await asyncio.sleep(0.5)
            gate = asyncio.Semaphore(8)

            async def gated(i):
                async with gate:
                    return await legit(c, i)
            codes = await asyncio.gather(*(gated(i) for i in range(8)))
            done.set()
            await asyncio.gather(*flood)
        return codes, probes

    codes, probes = asyncio.run(run())
    print(f"\n[serve] /healthz flood: {len(probes)} probes {dict((s, probes.count(s)) for s in set(probes))}; "
          f"completions {codes}")
    assert codes == [200] * 8
    assert set(probes) == {200} and len(probes) >= 300
    h = httpx.get(f"{url}/healthz")
    assert h.json() == {"status": "ok", "models": {"policy": True}}


def _dechunk(body: bytes) -> bytes:
    """A `Transfer-Encoding: chunked` body, joined (Serve's proxy sends its own 503s that way)."""
    out = b""
    while body:
        size, _, rest = body.partition(b"\r\n")
        n = int(size.split(b";")[0] or b"0", 16)
        if n == 0:
            break
        out, body = out + rest[:n], rest[n + 2:]
    return out


async def _slow_client(url: str) -> tuple[int, dict, float]:
    """A client with a valid key that announces 100 bytes of body, sends 10, then stalls; the answer is read to the
    end of the connection (`Connection: close`), whatever framing the app or Serve's proxy uses."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    t = time.perf_counter()
    writer.write((f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
                  "Connection: close\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                  "{\"model\":").encode())
    await writer.drain()
    try:  # the proxy's own timeout is 65 s: past 30, the app did not answer
        raw = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    head = head.decode().lower()
    if "transfer-encoding: chunked" in head:
        body = _dechunk(body)
    return int(head.split()[1]), json.loads(body) if body.startswith(b"{") else {"raw": body.decode()}, \
        time.perf_counter() - t


@pytest.mark.slow
def test_slow_bodies_cannot_hold_the_ingress(server):
    """Point 5: as many slowloris clients (valid key, body never finished) as the app admits get a 408 after
    `limits.body_timeout_s` (1 s here) or, past the queue limit, an immediate 503; then the API answers again."""
    url, cfg = server
    slots = cfg.ingress.num_replicas * cfg.ingress.max_ongoing_requests + cfg.ingress.max_queued_requests

    async def run():
        return await asyncio.gather(*(_slow_client(url) for _ in range(slots)))

    results = asyncio.run(run())
    statuses = [s for s, _, _ in results]
    print(f"\n[serve] {slots} slow bodies: {dict((s, statuses.count(s)) for s in set(statuses))}, slowest answer "
          f"{max(dt for _, _, dt in results):.1f}s")
    assert set(statuses) <= {408, 503} and statuses.count(408) >= slots // 2
    assert all("limits.body_timeout_s" in b["error"]["message"] for s, b, _ in results if s == 408)
    r = httpx.post(f"{url}/v1/completions", headers=AUTH, timeout=60,
                   json={"model": "policy", "prompt": "after", "max_tokens": 4})
    assert r.status_code == 200


def _ingress_replicas() -> tuple[set[str], int]:
    """(names of the ingress's replica actors, how many Serve reports RUNNING)."""
    names = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith(f"SERVE_REPLICA::{APP}#LipoIngress#")}
    return names, serve.status().applications[APP].deployments["LipoIngress"].replica_states.get("RUNNING", 0)


@pytest.mark.slow
def test_killed_ingress_replica_is_routed_around(server):
    """Point 6: with two ingress replicas, killing one leaves the other answering at once, with JSON, while Serve
    starts the replacement (with one replica, requests waited for it). What Serve 2.60 cannot do: a request in
    flight on the killed replica gets its proxy's plain-text 500 (see lipo.serving.app)."""
    url, _ = server
    old, _ = _ingress_replicas()
    assert len(old) == 2
    replaced, stop = [], threading.Event()

    def watch():  # when the replacement is RUNNING: a new replica name, and two RUNNING again
        while not stop.is_set() and not replaced:
            names, running = _ingress_replicas()
            if names - old and running == 2:
                replaced.append(time.perf_counter())
            time.sleep(0.05)

    ray.kill(ray.get_actor(sorted(old)[0], namespace="serve"), no_restart=True)
    t0 = time.perf_counter()
    watcher = threading.Thread(target=watch)
    watcher.start()
    answers, first = [], None
    for i in range(4):
        answers.append(httpx.post(f"{url}/v1/completions", headers=AUTH, timeout=60,
                                  json={"model": "policy", "prompt": f"k{i}", "max_tokens": 4}))
        first = first or time.perf_counter()
    stop.set()  # no need to wait for the replacement: answers before it are the point
    watcher.join()
    up = f"after {replaced[0] - t0:.1f}s" if replaced else "not yet"
    print(f"\n[serve] after the kill: {[r.status_code for r in answers]}, the first in {first - t0:.2f}s, all in "
          f"{time.perf_counter() - t0:.2f}s; replacement running: {up}")
    assert [r.status_code for r in answers] == [200] * 4
    assert all(r.headers["content-type"] == "application/json" for r in answers)
    assert not replaced or first < replaced[0]  # answered by the survivor, not after waiting for the replacement
