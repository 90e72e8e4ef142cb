"""The multi-node storage guard (`lipo.runtime.check_shared_storage`), against a pretended Ray cluster, and what a
local Ray started by `lipo.runtime.ensure_ray` exposes (sockets, environment), against a real one."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys

import pytest

from lipo import runtime
from lipo.errors import LipoError


@pytest.fixture
def cluster(monkeypatch):
    """Pretend this process is connected to a Ray cluster of `nodes(n)` alive nodes (plus one dead one)."""
    import ray

    monkeypatch.delenv("LIPO_SHARED_FS", raising=False)
    monkeypatch.delenv("LIPO_SHARED_PATHS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)

    def nodes(n: int) -> None:
        monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}] * n + [{"Alive": False}])

    return nodes


def test_local_output_dir_on_several_nodes_is_refused(cluster):
    cluster(3)
    with pytest.raises(LipoError, match=r"^output_dir /data/runs \(/data/runs\) is node-local but the cluster has 3 "
                                        r"nodes; use s3://\.\.\. or a shared filesystem mounted on every node, "
                                        r"declared with LIPO_SHARED_PATHS=/its/mount \(or LIPO_SHARED_FS=1\)$"):
        runtime.check_shared_storage("/data/runs")
    with pytest.raises(LipoError):
        runtime.check_shared_storage("file:///data/runs")


@pytest.mark.parametrize("output_dir", ["s3://bucket/runs", "gs://bucket/runs", "abfs://c@acct/runs"])
def test_remote_output_dir_is_fine_on_several_nodes(cluster, output_dir):
    cluster(3)
    runtime.check_shared_storage(output_dir)


def test_declared_shared_filesystem_is_fine(cluster, monkeypatch):
    cluster(2)
    runtime.check_shared_storage("/mnt/nfs/runs", shared=True)
    monkeypatch.setenv("LIPO_SHARED_FS", "1")
    runtime.check_shared_storage("/mnt/nfs/runs")
    with pytest.raises(LipoError):  # an explicit `shared=False` (a config flag) wins over the environment
        runtime.check_shared_storage("/mnt/nfs/runs", shared=False)


def test_one_node_or_no_ray_is_fine(cluster, monkeypatch):
    import ray

    cluster(1)
    runtime.check_shared_storage("runs")
    cluster(4)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    runtime.check_shared_storage("runs")


def test_output_dir_under_a_declared_mount_is_fine(cluster, monkeypatch, tmp_path):
    cluster(2)
    monkeypatch.setenv("LIPO_SHARED_PATHS", f"/nowhere{os.pathsep}{tmp_path / 'shared'}")
    runtime.check_shared_storage(tmp_path / "shared")  # the mount point itself
    runtime.check_shared_storage(f"{tmp_path}/shared/runs/q")
    runtime.check_shared_storage(f"file://{tmp_path}/shared/runs/q")
    (tmp_path / "shared").mkdir()
    monkeypatch.chdir(tmp_path / "shared")
    runtime.check_shared_storage("runs/quickstart")  # relative: resolved against the working directory
    for outside in (tmp_path / "shared-other", tmp_path / "shared" / ".." / "scratch", tmp_path, "/data/runs"):
        with pytest.raises(LipoError, match="is node-local but the cluster has 2 nodes"):
            runtime.check_shared_storage(outside)
    monkeypatch.chdir(tmp_path)  # the same relative path on a pod's scratch disk is refused, naming where it lands
    with pytest.raises(LipoError, match=rf"^output_dir runs/quickstart \({tmp_path}/runs/quickstart\) is node-local"):
        runtime.check_shared_storage("runs/quickstart")
    with pytest.raises(LipoError):  # shared=False (a caller's explicit answer) wins over the declaration
        runtime.check_shared_storage(tmp_path / "shared", shared=False)


def test_a_relative_shared_mount_is_refused(cluster, monkeypatch):
    cluster(2)
    monkeypatch.setenv("LIPO_SHARED_PATHS", "mnt/lipo")
    with pytest.raises(LipoError, match=r"^LIPO_SHARED_PATHS entry 'mnt/lipo' must be an absolute path"):
        runtime.check_shared_storage("/mnt/lipo/runs")


# A local Ray started by `ensure_ray`, inspected from inside: run in a subprocess so that it is this test's own Ray.
_PROBE = r"""
import json, os, time, psutil, ray
from lipo.runtime import ensure_ray

ensure_ray()

@ray.remote
def worker_env():
    return {k: v for k, v in os.environ.items() if k.startswith("LIPO_API_KEY")}

seen_by_worker = ray.get(worker_env.remote())
metrics_port = ray.nodes()[0]["MetricsExportPort"]
for _ in range(30):  # the agent may open its Prometheus port a moment after ray.init returns
    procs = psutil.Process().children(recursive=True)
    listening, leaked = [], []
    for p in procs + [psutil.Process()]:
        try:
            conns, env = p.net_connections(kind="inet"), p.environ() if p.pid != os.getpid() else {}
        except psutil.Error:  # a worker that exited meanwhile
            continue
        listening += [(p.name(), c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
        leaked += [p.name() for k in env if k.startswith("LIPO_API_KEY")]
    if any(port == metrics_port for _, _, port in listening):
        break
    time.sleep(0.5)
print(json.dumps({"worker": seen_by_worker, "leaked": leaked, "listening": listening, "procs": len(procs),
                  "driver": os.environ.get("LIPO_API_KEY"), "metrics_port": metrics_port}))
"""


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    return addr.is_loopback or bool(getattr(addr, "ipv4_mapped", None) and addr.ipv4_mapped.is_loopback)


def test_local_ray_listens_on_loopback_only_and_workers_never_see_the_api_key(tmp_path):
    """Issue 16: metrics/dashboard ports answered anyone, and every worker inherited $LIPO_API_KEY."""
    env = {**os.environ, "RAY_ADDRESS": "local", "LIPO_API_KEY": "k" * 24, "LIPO_API_KEY_FILE": str(tmp_path / "key"),
           "LIPO_RAY_DASHBOARD": "0"}
    proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["worker"] == {} and got["leaked"] == [], got  # neither the raylet, the agents nor a worker
    assert got["driver"] == "k" * 24  # the driver keeps its own environment
    assert got["procs"] >= 4 and len(got["listening"]) >= 4, got  # gcs, raylet, agents, workers: we saw them
    exposed = [sock for sock in got["listening"] if not _loopback(sock[1])]
    assert exposed == [], exposed
    metrics = [sock for sock in got["listening"] if sock[2] == got["metrics_port"]]
    assert metrics and all(_loopback(ip) for _, ip, _ in metrics), got  # the Prometheus port itself, on loopback


def test_driver_only_env_matches_the_key_variables():
    from lipo.serving import security

    assert set(runtime.DRIVER_ONLY_ENV) == {security.KEY_ENV, security.KEY_FILE_ENV}
