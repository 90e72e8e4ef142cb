"""The multi-node storage guard (`lipo.runtime.check_shared_storage`), against a pretended Ray cluster."""

from __future__ import annotations

import pytest

from lipo import runtime
from lipo.errors import LipoError


@pytest.fixture
def cluster(monkeypatch):
    """Pretend this process is connected to a Ray cluster of `nodes(n)` alive nodes (plus one dead one)."""
    import ray

    monkeypatch.delenv("LIPO_SHARED_FS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)

    def nodes(n: int) -> None:
        monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}] * n + [{"Alive": False}])

    return nodes


def test_local_output_dir_on_several_nodes_is_refused(cluster):
    cluster(3)
    with pytest.raises(LipoError, match=r"output_dir /data/runs is node-local but the cluster has 3 nodes; use "
                                        r"s3://\.\.\. or a shared filesystem \(set LIPO_SHARED_FS=1"):
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
