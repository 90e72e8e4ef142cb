"""Run pipeline stages once: a finished stage leaves `<output_dir>/.done/<stage>.json` holding its config hash and
result, and a rerun with the same stage config skips it (and says so). A changed stage config reruns that stage.

    ledger = Ledger(paths.root)
    result = ledger.run("train", cfg, train_policy, cfg, parent_run_id)   # train_policy(cfg, parent_run_id), once
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from lipo.config import config_hash


def digest(key: BaseModel | dict) -> str:
    """The hash that decides whether a stage must run again: of its config, or of a dict of what decides it."""
    if isinstance(key, BaseModel):
        return config_hash(key)
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Ledger:
    root: Path
    skipped: list[str] = field(default_factory=list)  # stages found finished, in the order they were met

    def marker(self, stage: str) -> Path:
        return self.root / ".done" / f"{stage}.json"

    def run(self, stage: str, key: BaseModel | dict, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
        """`fn(*args)` unless `stage` already finished with this `key`; returns the (stored) result dict."""
        marker, want = self.marker(stage), digest(key)
        if marker.is_file():
            done = json.loads(marker.read_text())
            if done.get("config_hash") == want:
                print(f"[lipo] skip {stage}: finished earlier with the same config ({marker})", flush=True)
                self.skipped.append(stage)
                return done["result"]
        print(f"[lipo] ===== stage: {stage} =====", flush=True)
        start = time.monotonic()
        result = {**fn(*args), "wall_s": round(time.monotonic() - start, 1)}  # what the stage cost, kept on reruns
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps({"config_hash": want, "result": result}, indent=1, default=str))
        tmp.replace(marker)
        return result
