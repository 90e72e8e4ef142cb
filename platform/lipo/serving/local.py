"""Running the Serve application on this machine: what `lipo serve` and the evaluation's own server do.

    lipo serve configs/serve_example.yaml        # serve(cfg): start, print the URL, block until Ctrl-C

    url = start_local(cfg, api_key, log_level="WARNING")   # a server for this process's own requests
    ...
    stop_local(cfg.app_name, shutdown=not had_serve)       # had_serve = serve_running() before starting

`start_local` checks the bind (no open, unauthenticated server) and the model sources before Ray starts, so a bad
config fails in a second with one line. If Serve is already running it joins it and keeps its HTTP options.

The key: `serve` reads it (a key shorter than 16 characters is refused unless `insecure`), `start_local` checks the
same for keys given by other callers, and replicas get only its salted slow hash (`lipo.serving.security`). Ray,
when `ensure_ray` starts it here, gets an environment without $LIPO_API_KEY*, so no worker holds the key.
"""

from __future__ import annotations

import os
import socket
import time

import ray.serve  # `import ray.serve`, not `from ray import serve`: `serve` is this module's entry point

from lipo import console
from lipo.runtime import ensure_ray
from lipo.serving.app import build, serve_http
from lipo.serving.config import ServeConfig
from lipo.serving.model_source import check_source
from lipo.serving.security import KEY_ENV, KEY_FILE_ENV, check_bind, check_key_strength, key_digest, load_api_key


def serve(cfg: ServeConfig, insecure: bool = False, block: bool = True) -> str:
    """Serve `cfg` with the key from $LIPO_API_KEY / $LIPO_API_KEY_FILE; return its base URL, or with `block`
    wait until Ctrl-C, then stop Serve."""
    key = load_api_key(insecure=insecure)  # a bad or short key fails here, before Ray starts
    url = start_local(cfg, key, insecure=insecure)
    names = ", ".join([*cfg.policies(), *([cfg.reward.name] if cfg.reward else [])])
    auth = f"bearer key from ${KEY_ENV if KEY_ENV in os.environ else KEY_FILE_ENV}" if key else "none"
    print(f"[lipo] serving {names} at {url}/v1 (auth: {auth}); health: {url}/healthz", flush=True)
    if not block:
        return url
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        ray.serve.shutdown()
    return url


def start_local(cfg: ServeConfig, api_key: str | None, insecure: bool = False, log_level: str = "INFO") -> str:
    """Start (or join) Serve on this machine, deploy the app and return its base URL once every replica is up.

    `log_level="WARNING"` silences the per-request access logs (the evaluation's own server uses it).
    """
    check_bind(cfg.http.host, api_key is not None, insecure)
    if api_key is not None and not insecure:  # (under --insecure, `load_api_key` has warned already)
        check_key_strength(api_key, "the API key", insecure=False)
    for key, slot in (("policy", cfg.policy), ("baseline", cfg.baseline), ("reward", cfg.reward)):
        if slot is not None:
            check_source(slot.model, f"{key}.model", reward=key == "reward")
    ensure_ray()
    port = cfg.http.port or _free_port(cfg.http.host)
    # The proxy's own timeout is a backstop a little past the ingress's (which answers 408 with a JSON body).
    # If Serve is already running, it keeps its HTTP options (Serve warns), so ask it where it listens.
    ray.serve.start(http_options={"host": cfg.http.host, "port": port,
                                  "request_timeout_s": cfg.limits.request_timeout_s + 5},
                    logging_config={"log_level": log_level})
    running_host, running_port = serve_http()
    host, port = (running_host, running_port) if running_host is not None else (cfg.http.host, port)
    ray.serve.run(build(cfg, key_digest(api_key)), name=cfg.app_name, route_prefix=cfg.http.route_prefix,
                  logging_config={"log_level": log_level})
    console.quiet_loggers()  # Serve's driver-side loggers exist now: a quiet CLI sends them to the log file
    client_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{client_host}:{port}{cfg.http.route_prefix.rstrip('/')}"


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host if host not in ("0.0.0.0", "::") else "127.0.0.1", 0))
        return s.getsockname()[1]


def serve_running() -> bool:
    """Whether Serve already runs in this Ray cluster (then `start_local` joins it)."""
    return serve_http()[0] is not None


def stop_local(app_name: str, shutdown: bool) -> None:
    """Remove the app; also stop Serve itself when this process started it (`shutdown`)."""
    ray.serve.delete(app_name)
    if shutdown:
        ray.serve.shutdown()
