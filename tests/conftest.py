"""Shared fixtures: one local Ray per test session, and small list datasets written to temp dirs."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def ray_local():
    """A local 2-CPU Ray for the whole session (tests start Ray themselves; nothing external)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3():
    """A bucket on a local moto S3 server; pyarrow finds it through AWS_ENDPOINT_URL."""
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import pyarrow.fs as pafs

    pafs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], allow_bucket_creation=True).create_dir("lipo")
    yield "s3://lipo"
    server.stop()
    for k, v in old.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def write_toy_lists(path: Path, n_lists: int = 8, k: int = 4, seed: int = 0) -> Path:
    """n_lists lists of k distinct random responses with distinct labels (so every list has k(k-1)/2 pairs)."""
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnop"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n_lists):
            responses = ["".join(rng.choice(alphabet) for _ in range(rng.randint(3, 6))) for _ in range(k)]
            labels = [round(1 - j / (k - 1), 4) for j in range(k)]
            f.write(json.dumps({"id": f"toy-{i}", "prompt": f"Question {i}: say something",
                                "responses": responses, "labels": labels}) + "\n")
    return path


@pytest.fixture
def toy_lists(tmp_path):
    return write_toy_lists(tmp_path / "lists.jsonl")
