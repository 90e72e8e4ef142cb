"""Starting or joining Ray, the same way for every stage.

Inside a Ray job (or with `RAY_ADDRESS` set) this joins the existing cluster; otherwise it starts a local one sized
to the machine. Either way the code that follows is identical, which is what lets one config run on a laptop and a
cluster. `check_shared_storage(output_dir)` is the guard a stage calls after joining: on a multi-node cluster a
node-local `output_dir` would scatter checkpoints over the nodes' disks, so it must be remote (`s3://...`) or a
shared filesystem declared with `LIPO_SHARED_FS=1`.

    ensure_ray(); check_shared_storage(cfg.output_dir)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
import ray

from lipo.errors import LipoError
from lipo.storage import is_remote_uri


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


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def check_shared_storage(output_dir: str | Path, shared: bool | None = None) -> None:
    """Refuse a node-local `output_dir` when this process is connected to a Ray cluster of more than one node.

    Ray Train workers on other nodes write checkpoints under `output_dir` on their own disk, where the driver and a
    restarted worker cannot find them. `shared=True` (or env `LIPO_SHARED_FS=1`) declares a local path to be a
    shared mount (NFS, CephFS ...) present at the same path on every node. Outside Ray, or on one node, any path
    works. Call it after joining Ray (ray.init) and before the trainer starts.
    """
    if is_remote_uri(str(output_dir)):
        return
    if shared if shared is not None else _truthy(os.environ.get("LIPO_SHARED_FS")):
        return
    if not ray.is_initialized():
        return
    alive = [n for n in ray.nodes() if n.get("Alive")]
    if len(alive) > 1:
        raise LipoError(f"output_dir {output_dir} is node-local but the cluster has {len(alive)} nodes; use "
                        f"s3://... or a shared filesystem (set LIPO_SHARED_FS=1 if it is NFS)")
