"""Starting or joining Ray, the same way for every stage.

Inside a Ray job (or with `RAY_ADDRESS` set) this joins the existing cluster; otherwise it starts a local one sized
to the machine. Either way the code that follows is identical, which is what lets one config run on a laptop and a
cluster.
"""

from __future__ import annotations

import logging
import os

import ray


def ensure_ray() -> None:
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    ray.init(
        address=os.environ.get("RAY_ADDRESS"),
        include_dashboard=False,
        logging_level=logging.WARNING,
        configure_logging=True,
    )
