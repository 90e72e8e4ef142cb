"""Auth and limits without a server: key loading, the bind guard, and the ASGI `Guard` driven by hand."""

from __future__ import annotations

import asyncio
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
from lipo.serving.security import (ApiError, Guard, bearer_ok, check_bind, check_limits, is_loopback, key_digest,
                                   load_api_key)


def test_load_api_key_env_file_and_errors(tmp_path):
    assert load_api_key({}) is None
    assert load_api_key({"LIPO_API_KEY": " k1 \n"}) == "k1"
    f = tmp_path / "key"
    f.write_text("from-file\n")
    assert load_api_key({"LIPO_API_KEY_FILE": str(f)}) == "from-file"
    assert load_api_key({"LIPO_API_KEY": "env", "LIPO_API_KEY_FILE": str(f)}) == "env"  # env wins
    with pytest.raises(LipoError, match="LIPO_API_KEY is set but empty"):
        load_api_key({"LIPO_API_KEY": "  "})
    with pytest.raises(LipoError, match="cannot read"):
        load_api_key({"LIPO_API_KEY_FILE": str(tmp_path / "missing")})


def test_bearer_check():
    d = key_digest("s3cret")
    assert bearer_ok(b"Bearer s3cret", d) and bearer_ok(b"bearer s3cret", d)
    assert not bearer_ok(b"Bearer wrong", d)
    assert not bearer_ok(b"Basic s3cret", d)
    assert not bearer_ok(None, d) and not bearer_ok(b"", d)


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
    g = Guard(app, key_digest("k"), max_request_bytes=100)
    for headers in ((), [(b"authorization", b"Bearer nope")], [(b"authorization", b"Basic k")]):
        status, body, reads = _drive(g, headers=headers)
        assert (status, reads, app.calls) == (401, 0, 0)
        assert "Authorization: Bearer" in json.loads(body)["error"]["message"]
    assert _drive(g, headers=[(b"authorization", b"Bearer k")])[0] == 200 and app.calls == 1
    assert _drive(g, path="/healthz")[0] == 200  # the one open path
    assert _drive(g, path="/healthz", root_path="/lipo")[0] == 200
    assert _drive(g, path="/v1/healthz")[0] == 401


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
    monkeypatch.setenv("LIPO_API_KEY", "k")
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
