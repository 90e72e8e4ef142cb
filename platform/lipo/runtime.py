"""Starting or joining Ray, the same way for every stage.

Inside a Ray job (or with `RAY_ADDRESS` set) this joins the existing cluster; otherwise it joins a cluster that
`ray start` began on this machine, as `ray.init()` does, or else starts a local one sized to the machine
(`RAY_ADDRESS=local` always starts a new local one). Either way the code that follows is identical, which is what lets one config run on a laptop and a
cluster. `check_shared_storage(output_dir)` is the guard a stage calls after joining: on a multi-node cluster a
node-local `output_dir` would scatter checkpoints over the nodes' disks, so it must be remote (`s3://...`) or on a
shared filesystem: under a mount point listed in `LIPO_SHARED_PATHS=/mnt/lipo:/data` (the Helm chart sets it for its
shared volume), or anywhere with `LIPO_SHARED_FS=1` (every local path is a shared mount). A path list rather than a
yes/no flag, so that a relative `runs/x` that lands on a pod's scratch disk is still refused.

    ensure_ray(); check_shared_storage(cfg.output_dir)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping

import ray

from lipo import console
from lipo import storage
from lipo.errors import LipoError
from lipo.storage import is_remote_uri

# Mount points shared by every node (':'-separated); the Helm chart sets it to its shared volume's mountPath.
SHARED_PATHS_ENV = "LIPO_SHARED_PATHS"


def ensure_ray() -> None:
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    console.quiet_loggers()  # handlers Ray set up when imported: ray.init's own warnings go to the file too
    ray.init(
        address=os.environ.get("RAY_ADDRESS") or None,  # an empty RAY_ADDRESS means unset, as for Ray
        include_dashboard=False,
        logging_level=logging.WARNING,
        configure_logging=True,
        **console.ray_init_options(),
    )
    console.attach_ray()  # quiet CLI runs: Ray's chatter to the log file (lipo.console)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def shared_roots(environ: Mapping[str, str] = os.environ) -> list[Path]:
    """The mount points `LIPO_SHARED_PATHS` declares shared (absolute paths separated by ':')."""
    roots = []
    for entry in (environ.get(SHARED_PATHS_ENV) or "").split(os.pathsep):
        if not entry.strip():
            continue
        root = Path(storage.normalize(entry.strip())).expanduser()
        if not root.is_absolute():  # relative to what? each pod has its own working directory
            raise LipoError(f"{SHARED_PATHS_ENV} entry '{entry}' must be an absolute path (the mount point)")
        roots.append(Path(os.path.abspath(root)))
    return roots


def declared_shared(output_dir: str | Path, environ: Mapping[str, str] = os.environ) -> bool:
    """True when `output_dir` (a path or file:// URI, relative ones against the working directory) lies under a
    mount point listed in `LIPO_SHARED_PATHS`. Lexical: `..` is folded, symlinks are not followed (a link on one
    node says nothing about the others)."""
    path = Path(os.path.abspath(Path(storage.normalize(str(output_dir))).expanduser()))
    return any(path == root or root in path.parents for root in shared_roots(environ))


def check_shared_storage(output_dir: str | Path, shared: bool | None = None, key: str = "output_dir") -> None:
    """Refuse a node-local `output_dir` (the config key `key` names it in the error) when this process is connected
    to a Ray cluster of more than one node.

    Ray Train workers on other nodes write checkpoints under `output_dir` on their own disk, where the driver and a
    restarted worker cannot find them. A local path is accepted as shared when it lies under a mount point listed in
    `LIPO_SHARED_PATHS` (what the Helm chart sets for its shared volume), when `LIPO_SHARED_FS=1` (every local path
    is a shared mount), or when the caller passes `shared=True`; `shared=False` refuses even then. Outside Ray, or
    on one node, any path works. Call it after joining Ray (ray.init) and before the trainer starts.
    """
    if is_remote_uri(str(output_dir)):
        return
    if shared is None:
        shared = _truthy(os.environ.get("LIPO_SHARED_FS")) or declared_shared(output_dir)
    if shared or not ray.is_initialized():
        return
    alive = [n for n in ray.nodes() if n.get("Alive")]
    if len(alive) > 1:
        where = os.path.abspath(storage.normalize(str(output_dir)))
        raise LipoError(f"{key} {output_dir} ({where}) is node-local but the cluster has {len(alive)} nodes; "
                        f"use s3://... or a shared filesystem mounted on every node, declared with "
                        f"{SHARED_PATHS_ENV}=/its/mount (or LIPO_SHARED_FS=1)")
