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

Exposure of a Ray that `ensure_ray` starts itself (decisions for issue 16):
- Loopback only. Ray binds its Prometheus endpoints (metrics agent, autoscaler 44217, dashboard 44227), the
  dashboard agent, the runtime-env agent and the gRPC servers either to the node's address or to every interface,
  and to loopback only when the node's address is loopback. Ray 2.60 offers no public switch on Linux (it turns
  `_node_ip_address="127.0.0.1"` back into the routable address; `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, its macOS
  rule, is read when `ray` is imported, before lipo runs), so while `ray.init` starts the node, `_loopback_node`
  sets the same private constant that rule sets. A one-machine Ray needs no other address; a cluster joined via
  RAY_ADDRESS or `ray start` is untouched. tests/lipo/test_runtime.py lists the sockets of a Ray started here and
  fails if any listens beyond loopback (so a Ray upgrade that moves the constant is caught).
- No dashboard by default: on 2 cores it cost ~950 MiB RSS, 11 more processes and several seconds more at start
  (measured 720 vs 1,680 MiB). What it would add locally is Ray Train's placement-group cleaner (which polls the
  State API and otherwise logs a warning, see lipo.console); a local Ray dies with its driver, so there is nothing
  left to clean. `LIPO_RAY_DASHBOARD=1` starts it, bound to 127.0.0.1 like the rest.
- Driver-only secrets: $LIPO_API_KEY and $LIPO_API_KEY_FILE (`DRIVER_ONLY_ENV`) are removed from the environment
  while `ray.init` runs, so the raylet it spawns, and every worker the raylet forks, never holds them; the driver's
  own environment is restored right after.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Mapping

import ray

from lipo import console
from lipo import storage
from lipo.errors import LipoError
from lipo.storage import is_remote_uri

# Mount points shared by every node (':'-separated); the Helm chart sets it to its shared volume's mountPath.
SHARED_PATHS_ENV = "LIPO_SHARED_PATHS"
# Only the driver reads these (lipo.serving.security.KEY_ENV / KEY_FILE_ENV): Ray processes started here never see them.
DRIVER_ONLY_ENV = ("LIPO_API_KEY", "LIPO_API_KEY_FILE")
DASHBOARD_ENV = "LIPO_RAY_DASHBOARD"  # 1: a local Ray started here runs its dashboard (on 127.0.0.1)


def ensure_ray() -> None:
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    console.quiet_loggers()  # handlers Ray set up when imported: ray.init's own warnings go to the file too
    address = os.environ.get("RAY_ADDRESS") or None  # an empty RAY_ADDRESS means unset, as for Ray
    local = _starts_local(address)
    with _without_env(DRIVER_ONLY_ENV), _loopback_node(local):
        ray.init(
            address=address,
            include_dashboard=local and _truthy(os.environ.get(DASHBOARD_ENV)),
            dashboard_host="127.0.0.1",
            logging_level=logging.WARNING,
            configure_logging=True,
            **console.ray_init_options(),
        )
    console.attach_ray()  # quiet CLI runs: Ray's chatter to the log file (lipo.console)


def _starts_local(address: str | None) -> bool:
    """Whether `ray.init(address)` will start a new Ray on this machine rather than join one (Ray's own rule)."""
    if address is not None and address.startswith("ray://"):
        return False
    from ray._private import services  # private: Ray has no public way to ask

    return services.canonicalize_bootstrap_address(address) is None


@contextmanager
def _loopback_node(enabled: bool):
    """While a local Ray starts: its node address is 127.0.0.1, so Ray binds its ports to loopback (see above)."""
    if not enabled:
        yield
        return
    from ray._private import ray_constants  # read by services.get_node_ip_address when ray.init picks the address

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


@contextmanager
def _without_env(names: tuple[str, ...]):
    """`names` removed from os.environ for the block (child processes started in it never get them), then restored."""
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


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
