"""Run pipeline stages once: a finished stage leaves `<output_dir>/.done/<stage>.json` holding its config hash and
result, and a rerun with the same stage config skips it (and says so). A changed stage config reruns that stage.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

from lipo.config import config_hash


def _marker(root: Path, stage: str) -> Path:
    return root / ".done" / f"{stage}.json"


def _digest(cfg: BaseModel | dict) -> str:
    if isinstance(cfg, BaseModel):
        return config_hash(cfg)
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_once(root: Path, stage: str, cfg: BaseModel | dict, fn: Callable[[], dict[str, Any]],
             skipped: list[str]) -> dict[str, Any]:
    """`fn()` unless `stage` already finished with this exact config (a model, or a dict of what decides the
    result); returns the (stored) result dict."""
    marker, digest = _marker(root, stage), _digest(cfg)
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("config_hash") == digest:
            print(f"[lipo] skip {stage}: finished earlier with the same config ({marker})", flush=True)
            skipped.append(stage)
            return done["result"]
    print(f"[lipo] ===== stage: {stage} =====", flush=True)
    result = fn()
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({"config_hash": digest, "result": result}, indent=1, default=str))
    tmp.replace(marker)
    return result
