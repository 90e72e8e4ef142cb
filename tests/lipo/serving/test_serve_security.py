"""Auth and limits without a server: key loading, the bind guard, and the ASGI `Guard` driven by hand."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from lipo.config import load_config
from lipo.errors import LipoError
from lipo.serving import app as serving_app
from lipo.serving.config import LimitsConfig, ServeArgs, ServeConfig
from lipo.serving.schemas import ChatCompletionRequest, CompletionRequest
from lipo.serving import security
from lipo.serving import local
from lipo.serving.local import start_local
from lipo.serving.security import (ApiError, Guard, KeyCheck, KeyCheckBusy, check_bind, check_limits,
                                   is_loopback, key_digest, load_api_key, parse_key_hash)

KEY = "k-0123456789abcdef"  # 18 characters: long enough (MIN_KEY_CHARS is 16)


def _cheap_digest(key: str, n: int = 2 ** 4) -> str:
    """A `key_digest`-format hash with a tiny scrypt cost, for tests that hash many times."""
    salt = b"0123456789abcdef"
    digest = security._scrypt(key.encode(), salt, n, 8, 1, 32)
    return f"scrypt${n}$8$1${security._b64(salt)}${security._b64(digest)}"


def test_load_api_key_env_file_and_errors(tmp_path):
    assert load_api_key({}) is None
    assert load_api_key({"LIPO_API_KEY": f" {KEY} \n"}) == KEY
    f = tmp_path / "key"
    f.write_text("from-file-0123456789\n")
    assert load_api_key({"LIPO_API_KEY_FILE": str(f)}) == "from-file-0123456789"
    assert load_api_key({"LIPO_API_KEY": KEY, "LIPO_API_KEY_FILE": str(f)}) == KEY  # env wins
    with pytest.raises(LipoError, match="LIPO_API_KEY is set but empty"):
        load_api_key({"LIPO_API_KEY": "  "})
    with pytest.raises(LipoError, match="cannot read"):
        load_api_key({"LIPO_API_KEY_FILE": str(tmp_path / "missing")})


def test_short_keys_are_refused_naming_their_source_unless_insecure(tmp_path, capsys, monkeypatch):
    """Issue 16: no minimum key strength was enforced."""
    with pytest.raises(LipoError, match=r"^\$LIPO_API_KEY: the API key has 15 characters, at least 16 are required"):
        load_api_key({"LIPO_API_KEY": "x" * 15})
    f = tmp_path / "key"
    f.write_text("change-me\n")
    with pytest.raises(LipoError, match=rf"^\$LIPO_API_KEY_FILE \({f}\): the API key has 9 characters.*--insecure"):
        load_api_key({"LIPO_API_KEY_FILE": str(f)})
    assert load_api_key({"LIPO_API_KEY": "x" * 16}) == "x" * 16  # exactly the minimum
    assert load_api_key({"LIPO_API_KEY_FILE": str(f)}, insecure=True) == "change-me"
    assert "accepted because of --insecure" in capsys.readouterr().err
    # `lipo serve` (local.serve) refuses before Ray starts; start_local checks a key it is given (the evaluation's
    # own server, benchmarks) the same way
    monkeypatch.setenv("LIPO_API_KEY", "short")
    with pytest.raises(LipoError, match=r"^\$LIPO_API_KEY: the API key has 5 characters"):
        local.serve(ServeConfig(), block=False)
    with pytest.raises(LipoError, match="^the API key: the API key has 5 characters"):
        start_local(ServeConfig(), "short")


def test_key_hash_is_salted_slow_and_self_describing():
    """Issue 16: replicas got the key's unsalted SHA-256; now a salted scrypt hash, never the key or its SHA-256."""
    d1, d2 = key_digest(KEY), key_digest(KEY)
    assert d1 != d2  # a fresh salt each time
    for d in (d1, d2):
        n, r, p, salt, digest = parse_key_hash(d)
        assert d.startswith("scrypt$16384$8$1$") and (n, r, p) == (2 ** 14, 8, 1)
        assert len(salt) == 16 and len(digest) == 32
        assert hashlib.scrypt(KEY.encode(), salt=salt, n=n, r=r, p=p, dklen=32, maxmem=2 ** 26) == digest
        assert KEY not in d and hashlib.sha256(KEY.encode()).hexdigest() not in d
    assert key_digest(None) is None
    for bad in ("0" * 64, "scrypt$16384$8$1$c2FsdA", "bcrypt$1$1$1$c2FsdA$c2FsdA"):
        with pytest.raises(LipoError, match=r"not of the form scrypt\$N\$r\$p"):
            parse_key_hash(bad)
    with pytest.raises(LipoError, match="N must be a power of two"):  # a hash that would make replicas burn memory
        parse_key_hash(_cheap_digest(KEY).replace("scrypt$16$", "scrypt$1048576$"))


def test_bearer_check():
    d = _cheap_digest(KEY)

    def bearer_ok(header, digest):  # a fresh replica's check each time: no cached answer
        return asyncio.run(KeyCheck(digest).check(header))

    assert bearer_ok(f"Bearer {KEY}".encode(), d) and bearer_ok(f"bearer {KEY}".encode(), d)
    assert not bearer_ok(b"Bearer wrong-0123456789abcdef", d)
    assert not bearer_ok(f"Basic {KEY}".encode(), d)
    assert not bearer_ok(None, d) and not bearer_ok(b"", d) and not bearer_ok(b"Bearer ", d)


def test_key_check_pays_the_slow_hash_once_and_bounds_wrong_keys(monkeypatch):
    """The right key is hashed once per replica; concurrent checks of one key share a hash; wrong keys run one at
    a time off the event loop, are remembered, and past `max_pending` distinct ones answer busy at once."""
    slow, running, peak = [], [0], [0]
    real = security._verify

    def counted(token, params):
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        slow.append(token)
        try:
            return real(token, params)
        finally:
            running[0] -= 1

    monkeypatch.setattr(security, "_verify", counted)
    good, wrong = f"Bearer {KEY}".encode(), [f"Bearer wrong-key-{i:04d}-xxxxxx".encode() for i in range(6)]

    async def scenario():
        check = KeyCheck(_cheap_digest(KEY, n=2 ** 10), max_pending=4)
        first = await asyncio.gather(*[check.check(good) for _ in range(20)])  # a burst at start: one hash
        assert first == [True] * 20 and len(slow) == 1
        assert await check.check(good) and len(slow) == 1  # cached
        results = await asyncio.gather(*[check.check(w) for w in wrong], return_exceptions=True)
        busy = [r for r in results if isinstance(r, KeyCheckBusy)]
        assert results[:4] == [False] * 4 and len(busy) == 2  # 4 may wait; the 5th and 6th are refused at once
        assert len(slow) == 5 and peak[0] == 1  # never two slow hashes at once
        assert await check.check(wrong[0]) is False and len(slow) == 5  # a remembered wrong key costs no hash
        assert await check.check(good) and len(slow) == 5  # the right key was never slowed down
        assert await check.check(f"Basic {KEY}".encode()) is False and await check.check(None) is False

    asyncio.run(scenario())


def test_bind_guard(capsys):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback(None) and not is_loopback("example.com")
    check_bind("127.0.0.1", has_key=False, insecure=False)  # loopback: fine without a key
    check_bind("0.0.0.0", has_key=True, insecure=False)  # a key: fine anywhere
    with pytest.raises(LipoError, match="refusing to serve on 0.0.0.0 with no API key"):
        check_bind("0.0.0.0", has_key=False, insecure=False)
    check_bind("0.0.0.0", has_key=False, insecure=True)
    assert "WITHOUT AUTHENTICATION" in capsys.readouterr().err


def test_check_limits_names_the_field():
    limits = LimitsConfig(max_n=4, max_tokens=64, max_responses=4)
    check_limits(limits, n=4, max_tokens=64, responses=4)
    for kwargs, field in (({"n": 5}, "n"), ({"max_tokens": 65}, "max_tokens"), ({"responses": 5}, "responses")):
        with pytest.raises(ApiError) as exc:
            check_limits(limits, **kwargs)
        assert exc.value.status == 422 and exc.value.param == field and exc.value.message.startswith(f"{field}:")


class _App:
    """An inner ASGI app that reads the whole body and records that it ran."""

    def __init__(self):
        self.calls = 0

    async def __call__(self, scope, receive, send):
        self.calls += 1
        body, more = b"", True
        while more:
            msg = await receive()
            body, more = body + msg.get("body", b""), msg.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(len(body)).encode()})


def _drive(guard, path="/v1/completions", headers=(), chunks=(b"{}",), root_path=""):
    """Run one request through `guard`; returns (status, body, number of receive() calls)."""
    sent, reads = [], [0]
    queue = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive():
        reads[0] += 1
        return queue.pop(0)

    async def send(msg):
        sent.append(msg)

    scope = {"type": "http", "path": root_path + path, "root_path": root_path, "headers": list(headers)}
    try:
        asyncio.run(guard(scope, receive, send))
    except Exception as exc:  # the HTTPException FastAPI would turn into a 413
        return getattr(exc, "status_code", None), b"", reads[0]
    return sent[0]["status"], sent[1]["body"], reads[0]


def test_guard_401_before_reading_the_body():
    app = _App()
    g = Guard(app, _cheap_digest(KEY), max_request_bytes=100)
    for headers in ((), [(b"authorization", b"Bearer nope")], [(b"authorization", b"Basic k")]):
        status, body, reads = _drive(g, headers=headers)
        assert (status, reads, app.calls) == (401, 0, 0)
        assert "Authorization: Bearer" in json.loads(body)["error"]["message"]
    assert _drive(g, headers=[(b"authorization", f"Bearer {KEY}".encode())])[0] == 200 and app.calls == 1
    assert _drive(g, path="/healthz")[0] == 200  # the one open path
    assert _drive(g, path="/healthz", root_path="/lipo")[0] == 200
    assert _drive(g, path="/v1/healthz")[0] == 401
    g.keys.max_pending = 0  # as if 64 other unverified keys were waiting for the slow hash: 503, not a queue
    status, body, reads = _drive(g, headers=[(b"authorization", b"Bearer another-key-0123456789")])
    assert (status, reads) == (503, 0) and b"retry later" in body
    assert _drive(g, headers=[(b"authorization", f"Bearer {KEY}".encode())])[0] == 200  # verified: never waits


def test_guard_413_by_header_and_while_streaming():
    app = _App()
    g = Guard(app, None, max_request_bytes=10)
    status, body, reads = _drive(g, headers=[(b"content-length", b"11")], chunks=[b"x" * 11])
    assert (status, reads, app.calls) == (413, 0, 0) and b"exceeds the limit of 10 bytes" in body
    # No Content-Length (chunked upload): stopped once the running count passes 10, at the second chunk.
    status, _, reads = _drive(g, chunks=[b"x" * 6, b"x" * 6, b"x" * 6])
    assert (status, reads) == (413, 2)
    assert _drive(g, chunks=[b"x" * 5, b"x" * 5])[:2] == (200, b"10")


def test_request_schemas_forbid_unknown_fields():
    with pytest.raises(ValidationError, match="bogus"):
        CompletionRequest.model_validate({"model": "m", "prompt": "p", "bogus": 1})
    # streaming is an OpenAI field lipo serves (Server-Sent Events), no longer a refusal
    assert ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "x"}],
                                                 "stream": True}).stream
    with pytest.raises(ValidationError, match="at most 4 stop"):
        CompletionRequest.model_validate({"model": "m", "prompt": "p", "stop": list("abcde")})


def test_limits_config_from_yaml_overrides():
    cfg = load_config(ServeConfig, None, ["limits.max_n=2"])
    assert cfg.limits.max_n == 2


def test_build_app_refuses_an_open_unauthenticated_server(monkeypatch, capsys):
    """Under `serve deploy` / a RayService the bind host is Serve's; no key and no loopback -> no app."""
    monkeypatch.delenv("LIPO_API_KEY", raising=False)
    monkeypatch.delenv("LIPO_API_KEY_FILE", raising=False)
    monkeypatch.setattr(serving_app, "serve_http", lambda: ("0.0.0.0", 8000))
    with pytest.raises(LipoError, match="refusing to serve on 0.0.0.0"):
        serving_app.build_app(ServeArgs())
    assert serving_app.build_app(ServeArgs(insecure=True)) is not None
    assert "WITHOUT AUTHENTICATION" in capsys.readouterr().err
    monkeypatch.setenv("LIPO_API_KEY", "short")
    with pytest.raises(LipoError, match=r"^\$LIPO_API_KEY: the API key has 5 characters"):
        serving_app.build_app(ServeArgs(overrides=["reward=null"]))
    monkeypatch.setenv("LIPO_API_KEY", KEY)
    assert serving_app.build_app(ServeArgs(overrides=["reward=null"])) is not None
    monkeypatch.setattr(serving_app, "serve_http", lambda: (None, None))  # unknown host: treated as open
    monkeypatch.delenv("LIPO_API_KEY")
    with pytest.raises(LipoError, match="an unknown host"):
        serving_app.build_app(ServeArgs())


def test_cli_serve_refuses_before_starting_anything(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("LIPO_API_KEY", "LIPO_API_KEY_FILE")}
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("http: {host: 0.0.0.0, port: 0}\n")
    proc = subprocess.run([sys.executable, "-m", "lipo.cli", "serve", str(cfg)], capture_output=True, text=True,
                          env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith("lipo: error: refusing to serve on 0.0.0.0 with no API key")
    assert "Traceback" not in proc.stderr and "ray" not in proc.stdout.lower()
    cfg.write_text("policy: {modle: x}\n")
    proc = subprocess.run([sys.executable, "-m", "lipo.cli", "serve", str(cfg)], capture_output=True, text=True,
                          env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and "policy.modle: unknown key" in proc.stderr
