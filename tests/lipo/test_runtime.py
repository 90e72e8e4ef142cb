"""The multi-node storage guard (`lipo.runtime.check_shared_storage`), against a pretended Ray cluster."""

from __future__ import annotations

import os

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
