"""`lipo serve CONFIG.yaml [key=value ...] [--insecure]`: the policy and reward model over HTTP (Ray Serve).

Also a Ray job entrypoint: `python -m workflows.serve CONFIG.yaml`. Reads the API key from $LIPO_API_KEY or
$LIPO_API_KEY_FILE; with neither it serves on loopback only, unless --insecure. Blocks until Ctrl-C, then stops
Serve. The application itself is `lipo.serving.app` (also deployable with `serve deploy deploy/serve/lipo.yaml`).
"""

from __future__ import annotations

import os
import sys
import time

from lipo.serving.config import ServeConfig


def run(cfg: ServeConfig, insecure: bool = False, block: bool = True) -> str:
    from ray import serve

    from lipo.serving.app import start_local
    from lipo.serving.security import KEY_ENV, KEY_FILE_ENV, load_api_key

    key = load_api_key()  # a bad key file fails here, before Ray starts
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
        serve.shutdown()
    return url


def main(argv: list[str] | None = None) -> None:
    from lipo.config import load_config

    args = sys.argv[1:] if argv is None else argv
    run(load_config(ServeConfig, args[0], args[1:]))


if __name__ == "__main__":
    main()
