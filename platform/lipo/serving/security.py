"""Authentication and request limits (Ray Serve has no auth of its own).

- The API key comes from $LIPO_API_KEY, or from the file named by $LIPO_API_KEY_FILE (a mounted Kubernetes
  Secret). Requests need `Authorization: Bearer <key>`. Replicas get only the key's SHA-256 (`key_digest`), so
  the key never appears in deployment arguments or the Serve dashboard; a presented key is hashed and compared with
  `hmac.compare_digest` (constant time).
- `Guard` is a raw ASGI middleware: it answers 401 from the headers alone, before any byte of the body is read;
  then 413 when Content-Length exceeds `max_request_bytes`, and it also counts the streamed body (chunked uploads
  carry no Content-Length) and stops with 413 the moment the count passes the limit.
- `check_bind` refuses a non-loopback bind with no key unless `--insecure` is given, and then warns loudly.
- `check_limits` turns the config's upper bounds (n, max_tokens, responses per request) into 422s naming the field.

`GET /healthz` is the one open path, so probes need no secret; it reveals only whether the models are loaded.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import sys
from pathlib import Path

from starlette.exceptions import HTTPException

from lipo.errors import LipoError
from lipo.serving.schemas import error_body

KEY_ENV = "LIPO_API_KEY"
KEY_FILE_ENV = "LIPO_API_KEY_FILE"
OPEN_PATHS = frozenset({"/healthz"})


class ApiError(Exception):
    """An HTTP error with OpenAI's body; raised in handlers, rendered by the app's exception handler."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def load_api_key(environ: dict[str, str] | None = None) -> str | None:
    """The configured key, or None; $LIPO_API_KEY wins over $LIPO_API_KEY_FILE. Empty keys are errors."""
    env = os.environ if environ is None else environ
    if env.get(KEY_ENV) is not None:
        key = env[KEY_ENV].strip()
        if not key:
            raise LipoError(f"${KEY_ENV} is set but empty")
        return key
    if env.get(KEY_FILE_ENV):
        path = Path(env[KEY_FILE_ENV])
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise LipoError(f"${KEY_FILE_ENV}: cannot read {path} ({exc.strerror})") from None
        if not key:
            raise LipoError(f"${KEY_FILE_ENV}: {path} is empty")
        return key
    return None


def key_digest(key: str | None) -> str | None:
    return None if key is None else hashlib.sha256(key.encode()).hexdigest()


def is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str | None, has_key: bool, insecure: bool) -> None:
    """Refuse an open, unauthenticated server; with --insecure, allow it but say so loudly on stderr."""
    if has_key or is_loopback(host):
        return
    if not insecure:
        raise LipoError(f"refusing to serve on {host or 'an unknown host'} with no API key: set ${KEY_ENV} or "
                        f"${KEY_FILE_ENV}, bind to 127.0.0.1, or pass --insecure (serve args: insecure: true)")
    bar = "!" * 100
    print(f"{bar}\n!! WARNING: lipo is serving on {host} WITHOUT AUTHENTICATION (--insecure). Anyone who can reach "
          f"this port can use the models.\n{bar}", file=sys.stderr, flush=True)


def bearer_ok(header: bytes | None, digest: str) -> bool:
    """Constant-time check of an `Authorization: Bearer <key>` header against the key's digest."""
    scheme, _, token = (header or b"").decode("latin-1").partition(" ")
    presented = hashlib.sha256(token.strip().encode("latin-1")).hexdigest()
    # Compare even when the scheme is wrong, so timing does not reveal which part failed.
    return hmac.compare_digest(presented, digest) & (scheme.lower() == "bearer")


def _header(scope, name: bytes) -> bytes | None:
    for k, v in scope.get("headers", []):
        if k.lower() == name:
            return v
    return None


async def _reply(send, status: int, message: str, extra_headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(error_body(message, status)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               *extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: auth (401), then the body size limit (413), before the app reads anything."""

    def __init__(self, app, key_digest: str | None, max_request_bytes: int):
        self.app, self.digest, self.max_bytes = app, key_digest, max_request_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        root, path = scope.get("root_path", ""), scope["path"]
        route = path[len(root):] if root and path.startswith(root) else path
        if self.digest is not None and route not in OPEN_PATHS:
            if not bearer_ok(_header(scope, b"authorization"), self.digest):
                return await _reply(send, 401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                                    [(b"www-authenticate", b"Bearer")])
        length = _header(scope, b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await _reply(send, 400, "invalid Content-Length header")
            if declared > self.max_bytes:
                return await _reply(send, 413, f"request body of {declared} bytes exceeds the limit of "
                                               f"{self.max_bytes} bytes")
        return await self.app(scope, self._counting(receive), send)

    def _counting(self, receive):
        """A receive that raises 413 as soon as the streamed body passes the limit (no Content-Length needed)."""
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # FastAPI re-raises HTTPException from body parsing unchanged (others become 400s).
                    raise HTTPException(413, f"request body exceeds the limit of {self.max_bytes} bytes")
            return message

        return counted


def check_limits(limits, *, n: int = 1, max_tokens: int | None = None, responses: int | None = None) -> None:
    """422 naming the field when a request asks for more than the server allows (`limits`: LimitsConfig)."""
    if n > limits.max_n:
        raise ApiError(422, f"n: {n} choices requested, the server allows at most {limits.max_n} per request "
                            f"(n times the number of prompts)", "n")
    if max_tokens is not None and max_tokens > limits.max_tokens:
        raise ApiError(422, f"max_tokens: {max_tokens} exceeds the server limit of {limits.max_tokens}",
                       "max_tokens")
    if responses is not None and responses > limits.max_responses:
        raise ApiError(422, f"responses: {responses} responses exceed the server limit of {limits.max_responses}",
                       "responses")
