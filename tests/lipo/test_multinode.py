"""Two Ray nodes on one machine: `lipo train` with its driver on the head node (no CPUs for Ray there, as a chart
head with num-cpus "0") and its training worker on the worker node, once with `output_dir` on a path declared shared
(`LIPO_SHARED_PATHS`, as the Helm chart sets for its volume) and once on an undeclared path, which is refused in
one line before training starts. The driver reads back what the worker on the other node checkpointed and exported.

    pytest tests/lipo/test_multinode.py
    python tests/lipo/test_multinode.py OUT_DIR LISTS.jsonl      # the cluster half alone; prints a JSON report

The cluster (`ray.cluster_utils.Cluster`) and the `lipo train` drivers live in a child process with their own temp
dir, so the session's local Ray (`ray_local` in tests/conftest.py) is neither joined nor stopped. On one machine
both nodes see one disk, so this checks the guard and that a job across nodes checkpoints under the shared path;
that a node-local path really scatters files needs two machines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

SHARED_ENV = ("RAY_ADDRESS", "LIPO_SHARED_FS", "LIPO_SHARED_PATHS", "MLFLOW_TRACKING_URI")


def _train_config(out: Path, data: Path, output_dir: Path, name: str) -> Path:
    config = out / f"{name}.yaml"
    config.write_text(json.dumps({  # JSON is YAML
        "run_name": name, "output_dir": str(output_dir), "model": {"path": "builtin:tiny-llama"},
        "tracking": {"uri": f"sqlite:///{out / 'mlflow.db'}"},  # one store for both runs: created once
        "data": {"train": [str(data)], "max_prompt_tokens": 64, "max_response_tokens": 16},
        "optim": {"max_steps": 2, "micro_batch_size": 2, "schedule": "constant"},
        "checkpoint": {"every": 1},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1}}))  # the head has no CPU: the worker node it is
    return config


def _start_lipo_train(config: Path, env: dict[str, str]) -> tuple[float, subprocess.Popen]:
    return time.monotonic(), subprocess.Popen([sys.executable, "-m", "lipo.cli", "train", str(config)], env=env,
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_lipo_train(started: tuple[float, subprocess.Popen]) -> dict:
    start, proc = started
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()  # as subprocess.run(timeout=) did: no driver outlives the test
        raise
    return {"rc": proc.returncode, "stdout": stdout[-3000:], "stderr": stderr[-3000:],
            "seconds": round(time.monotonic() - start, 1)}


def _train_worker_nodes(address: str) -> dict:
    """Node of each Ray Train worker actor that ran (the GCS keeps dead actors), and the cluster's nodes."""
    import ray
    from ray._private import state

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
        head = ray.get_runtime_context().get_node_id()  # this driver runs on the head node
        workers = sorted(a["Address"]["NodeID"] for a in state.actors().values()
                         if "TrainWorker" in a["ActorClassName"])
    finally:
        ray.shutdown()
    return {"nodes": nodes, "head": head, "train_workers": workers}


def cluster_main(out: Path, data: Path) -> dict:
    from ray.cluster_utils import Cluster

    start = time.monotonic()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "temp_dir": tempfile.mkdtemp(prefix="lipo-mn-", dir="/tmp")})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        report = {"seconds": {"cluster up": round(time.monotonic() - start, 1)}}
        env = {k: v for k, v in os.environ.items() if k not in SHARED_ENV} | {"RAY_ADDRESS": cluster.address}
        shared = out / "shared"
        # Both drivers at once (CI time, issue 17): the refused one stops at the storage guard, which lipo's launch()
        # runs before any MLflow or Ray Train work, so it cannot disturb the shared run; its start-up (imports,
        # ray.init) overlaps the shared run's instead of following it.
        shared_run = _start_lipo_train(_train_config(out, data, shared / "runs", "shared"),
                                       env | {"LIPO_SHARED_PATHS": str(shared)})
        refused_run = _start_lipo_train(_train_config(out, data, out / "scratch" / "runs", "refused"), env)
        report["refused"], report["shared"] = _wait_lipo_train(refused_run), _wait_lipo_train(shared_run)
        report |= _train_worker_nodes(cluster.address)
    finally:
        down = time.monotonic()
        cluster.shutdown()
    report["seconds"] |= {"cluster down": round(time.monotonic() - down, 1), "all": round(time.monotonic() - start, 1)}
    return report


@pytest.mark.slow
def test_two_node_training_needs_a_declared_shared_output_dir(tmp_path, toy_lists):
    proc = subprocess.run([sys.executable, __file__, str(tmp_path), str(toy_lists)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(report["seconds"] | {k: report[k]["seconds"] for k in ("refused", "shared")})  # where the time goes
    assert len(report["nodes"]) == 2 and report["head"] in report["nodes"]

    refused = report["refused"]
    scratch = tmp_path / "scratch" / "runs"
    assert refused["rc"] == 2, refused  # a LipoError: one line, no traceback
    assert (f"lipo: error: output_dir {scratch} ({scratch}) is node-local but the cluster has 2 nodes; use "
            f"s3://... or a shared filesystem mounted on every node, declared with LIPO_SHARED_PATHS=/its/mount "
            f"(or LIPO_SHARED_FS=1)") in refused["stderr"].splitlines()
    assert "Traceback" not in refused["stderr"]
    assert not list(scratch.glob("refused/checkpoint_*"))  # refused before the trainer started

    shared = report["shared"]
    assert shared["rc"] == 0, shared["stderr"]
    # The one training worker ran on the worker node (the refused run never started any).
    [worker_node] = report["train_workers"]
    assert worker_node != report["head"] and worker_node in report["nodes"]
    run = tmp_path / "shared" / "runs" / "shared"
    checkpoints = sorted(p for p in run.glob("checkpoint_*") if p.is_dir())
    assert len(checkpoints) == 2, checkpoints  # checkpoint.every=1, max_steps=2
    assert all(list(c.rglob("*optim_states.pt")) for c in checkpoints)  # DeepSpeed's state, under the shared path
    # The worker exported the model there, and the driver on the head read it back to log it to MLflow.
    assert (run / "model" / "config.json").is_file()
    assert list((tmp_path / "mlartifacts").rglob("config.json")), "the driver logged no model"


if __name__ == "__main__":
    print(json.dumps(cluster_main(Path(sys.argv[1]), Path(sys.argv[2]))), flush=True)
