"""Authentication and request limits (Ray Serve has no auth of its own).

- The API key comes from $LIPO_API_KEY, or from the file named by $LIPO_API_KEY_FILE (a mounted Kubernetes
  Secret). Requests need `Authorization: Bearer <key>`. A key shorter than `MIN_KEY_CHARS` (16) is refused with one
  line naming its source, except under `--insecure` (serve args: `insecure: true`), which only warns.
- The key never travels in clear: replicas get `key_digest(key)`, a salted, slow scrypt hash in one self-describing
  string `scrypt$N$r$p$<salt>$<hash>` (base64url; N=2**14, r=8, p=1: 16 MiB and ~50-100 ms per hash), so neither
  the deployment arguments, the Serve dashboard nor the controller's checkpoint in the GCS hold the key or a hash
  that can be guessed quickly. Local runs also keep $LIPO_API_KEY* out of Ray workers' environment
  (`lipo.runtime.ensure_ray`).
- `KeyCheck` verifies a presented key per ingress replica without letting the slow hash become a denial of service:
  a key once verified is remembered as an HMAC tag under a random per-process secret, so the correct key costs the
  slow hash once per replica and then ~1 us; wrong keys are hashed off the event loop (`asyncio.to_thread`), one at
  a time per replica, concurrent checks of one key share one hash, the last 1024 wrong keys are remembered, and
  when more than `max_pending` distinct keys wait, the request gets a fast 503 with `Retry-After` instead of
  queueing (a flood of random keys costs at most one core; requests with the verified key are not slowed).
- `Guard` is a raw ASGI middleware: it answers 401 from the headers alone, before any byte of the body is read;
  then 413 when Content-Length exceeds `max_request_bytes`, and it also counts the streamed body (chunked uploads
  carry no Content-Length) and stops with 413 the moment the count passes the limit.
- `check_bind` refuses a non-loopback bind with no key unless `--insecure` is given, and then warns loudly.
- `check_limits` turns the config's upper bounds (n, max_tokens, responses per request) into 422s naming the field.

`GET /healthz` is the one open path, so probes need no secret; it reveals only whether the models are loaded.
docs/deploy.md ("Security model") describes the whole model, including the chart's NetworkPolicy.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import sys
import time
from collections import OrderedDict
from pathlib import Path

from starlette.exceptions import HTTPException

from lipo.errors import LipoError
from lipo.serving.schemas import error_body

KEY_ENV = "LIPO_API_KEY"
KEY_FILE_ENV = "LIPO_API_KEY_FILE"
OPEN_PATHS = frozenset({"/healthz"})
MIN_KEY_CHARS = 16
# scrypt cost: 2**14 x 8 x 128 B = 16 MiB per hash (OWASP's floor for scrypt); bounds refuse a hash that would make
# a replica allocate more than 256 MiB or loop absurdly long (the hash string is a deployment argument).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1
_MAX_N, _MAX_R, _MAX_P = 2 ** 18, 16, 4


class ApiError(Exception):
    """An HTTP error with OpenAI's body; raised in handlers, rendered by the app's exception handler."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def load_api_key(environ: dict[str, str] | None = None, insecure: bool = False) -> str | None:
    """The configured key, or None; $LIPO_API_KEY wins over $LIPO_API_KEY_FILE. Empty keys are errors, and so are
    keys shorter than MIN_KEY_CHARS unless `insecure` (then a warning)."""
    env = os.environ if environ is None else environ
    if env.get(KEY_ENV) is not None:
        key = env[KEY_ENV].strip()
        if not key:
            raise LipoError(f"${KEY_ENV} is set but empty")
        return check_key_strength(key, f"${KEY_ENV}", insecure)
    if env.get(KEY_FILE_ENV):
        path = Path(env[KEY_FILE_ENV])
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise LipoError(f"${KEY_FILE_ENV}: cannot read {path} ({exc.strerror})") from None
        if not key:
            raise LipoError(f"${KEY_FILE_ENV}: {path} is empty")
        return check_key_strength(key, f"${KEY_FILE_ENV} ({path})", insecure)
    return None


def check_key_strength(key: str, source: str, insecure: bool) -> str:
    """`key`, if it has at least MIN_KEY_CHARS characters; shorter: LipoError naming `source`, or with `insecure`
    a warning on stderr."""
    if len(key) >= MIN_KEY_CHARS:
        return key
    message = (f"{source}: the API key has {len(key)} characters, at least {MIN_KEY_CHARS} are required "
               f"(e.g. `openssl rand -hex 24`)")
    if not insecure:
        raise LipoError(f"{message}; --insecure (serve args: insecure: true) accepts a shorter one")
    print(f"[lipo] WARNING: {message}; accepted because of --insecure", file=sys.stderr, flush=True)
    return key


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def key_digest(key: str | None) -> str | None:
    """The salted slow hash replicas get instead of the key: `scrypt$N$r$p$<salt>$<hash>` (random 16-byte salt)."""
    if key is None:
        return None
    salt = secrets.token_bytes(16)
    digest = _scrypt(key.encode("utf-8"), salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, 32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def _scrypt(secret: bytes, salt: bytes, n: int, r: int, p: int, size: int) -> bytes:
    # OpenSSL needs 128*r*(N+p+2) bytes; its default cap (32 MiB) would refuse anything above N=2**14, r=8.
    return hashlib.scrypt(secret, salt=salt, n=n, r=r, p=p, dklen=size, maxmem=128 * r * (n + p + 2) + 2 ** 20)


def parse_key_hash(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    """(N, r, p, salt, hash) of a `key_digest` string; LipoError if it is not one (or asks for absurd work)."""
    parts = str(encoded).split("$")
    try:
        if len(parts) != 6 or parts[0] != "scrypt":
            raise ValueError
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, digest = _unb64(parts[4]), _unb64(parts[5])
    except ValueError:
        raise LipoError("the API key hash is not of the form scrypt$N$r$p$<salt>$<hash> "
                        "(made by lipo.serving.security.key_digest)") from None
    sane = 1 < n <= _MAX_N and n & (n - 1) == 0 and 0 < r <= _MAX_R and 0 < p <= _MAX_P
    if not (sane and salt and len(digest) >= 16):
        raise LipoError(f"the API key hash asks for scrypt N={n}, r={r}, p={p}: N must be a power of two up to "
                        f"{_MAX_N}, r at most {_MAX_R}, p at most {_MAX_P}, with a salt and a hash of 16+ bytes")
    return n, r, p, salt, digest


def _token(header: bytes | None) -> bytes | None:
    """The key of an `Authorization: Bearer <key>` header (raw bytes), or None for another scheme or none."""
    scheme, _, token = (header or b"").partition(b" ")
    token = token.strip()
    return token if scheme.lower() == b"bearer" and token else None


def _verify(token: bytes, params: tuple[int, int, int, bytes, bytes]) -> bool:
    n, r, p, salt, digest = params
    return hmac.compare_digest(_scrypt(token, salt, n, r, p, len(digest)), digest)


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


class KeyCheckBusy(Exception):
    """Too many distinct unverified keys are waiting for the slow hash: answer 503 rather than queue."""


class KeyCheck:
    """Per-replica verification of bearer keys against a `key_digest` string, cached so that the slow hash is paid
    once per replica for the right key and a flood of wrong keys is bounded (see the module docstring)."""

    BAD_MEMORY = 1024

    def __init__(self, digest: str, max_pending: int = 64):
        self.params = parse_key_hash(digest)  # a malformed hash fails when the replica starts, not per request
        self.max_pending = max_pending
        self._pepper = secrets.token_bytes(32)  # per process: the tags below say nothing outside it
        self._good: bytes | None = None  # HMAC tag of the key verified last
        self._bad: OrderedDict[bytes, None] = OrderedDict()  # tags of recent wrong keys, oldest first
        self._inflight: dict[bytes, asyncio.Future] = {}  # tag -> the one slow check of that key under way
        self._slow: asyncio.Semaphore | None = None  # one slow hash at a time per replica; made in the event loop

    async def check(self, header: bytes | None) -> bool:
        """True for the right key; False for a wrong or missing one; KeyCheckBusy when too many keys wait."""
        token = _token(header)
        if token is None:
            return False
        tag = hmac.new(self._pepper, token, hashlib.sha256).digest()
        if self._good is not None and hmac.compare_digest(tag, self._good):
            return True
        if tag in self._bad:
            return False
        pending = self._inflight.get(tag)
        if pending is None:
            if len(self._inflight) >= self.max_pending:
                raise KeyCheckBusy()
            pending = self._inflight[tag] = asyncio.ensure_future(self._slow_check(token, tag))
        return await asyncio.shield(pending)  # one client going away does not cancel the others' check

    async def _slow_check(self, token: bytes, tag: bytes) -> bool:
        try:
            self._slow = self._slow or asyncio.Semaphore(1)
            async with self._slow:
                ok = await asyncio.to_thread(_verify, token, self.params)  # hashlib.scrypt releases the GIL
            if ok:
                self._good = tag
            else:
                self._bad[tag] = None
                while len(self._bad) > self.BAD_MEMORY:
                    self._bad.popitem(last=False)
            return ok
        finally:
            del self._inflight[tag]


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

    def __init__(self, app, key_digest: str | None, max_request_bytes: int, body_timeout_s: float | None = None):
        self.app, self.digest, self.max_bytes = app, key_digest, max_request_bytes
        self.body_timeout_s = body_timeout_s  # the whole body within this many seconds, or 408 (None: no bound)
        self.keys = KeyCheck(key_digest) if key_digest is not None else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        root, path = scope.get("root_path", ""), scope["path"]
        route = path[len(root):] if root and path.startswith(root) else path
        if self.keys is not None and route not in OPEN_PATHS:
            try:
                ok = await self.keys.check(_header(scope, b"authorization"))
            except KeyCheckBusy:
                return await _reply(send, 503, "too many unverified API keys at once: retry later",
                                    [(b"retry-after", b"1")])
            if not ok:
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
        """A receive that raises 413 as soon as the streamed body passes the limit (no Content-Length needed),
        and 408 when the body is not complete `body_timeout_s` after the request reached the app: a client that
        trickles its body (slowloris) holds an ingress slot for that long at most. Once the body is complete,
        receive is passed through untimed (a streaming response listens on it for the client's disconnect)."""
        seen, done = 0, False
        deadline = None if self.body_timeout_s is None else time.monotonic() + self.body_timeout_s

        async def counted():
            nonlocal seen, done
            if done or deadline is None:
                message = await receive()
            else:
                try:
                    message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.0))
                except asyncio.TimeoutError:
                    raise HTTPException(408, f"the request body did not arrive within {self.body_timeout_s}s "
                                             f"(limits.body_timeout_s)") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                done = not message.get("more_body", False)
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
