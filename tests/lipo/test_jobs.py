"""`lipo submit` (lipo.jobs): what is submitted, what is refused before submitting, following a job, and the
multi-node storage guard. The slow test starts its own Ray head (dashboard on loopback, its own temp dir, port and
token, so it never meets the session's `ray_local`), submits a real `lipo train` job and reads its MLflow run.

    /work/venv/bin/python -m pytest tests/lipo/test_jobs.py -q            # add -m "not slow" for the unit tests
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from lipo import jobs
from lipo.errors import ConfigError, LipoError

REPO = Path(__file__).resolve().parents[2]


def train_yaml(workdir: Path, lists: Path, **extra) -> Path:
    """configs/train.yaml in `workdir`, reading a copy of `lists` (the toy_lists fixture) by a relative path."""
    if lists.resolve() != (workdir / "lists.jsonl").resolve():
        shutil.copy(lists, workdir / "lists.jsonl")
    cfg = {"output_dir": "runs", "model": {"path": "builtin:tiny-llama"}, "data": {"train": ["lists.jsonl"],
           "max_prompt_tokens": 64, "max_response_tokens": 16}, **extra}
    (workdir / "configs").mkdir(exist_ok=True)
    path = workdir / "configs" / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- What is submitted ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage,command", [("pipeline", "run"), ("build-lists", "build-lists"), ("train", "train"),
                                           ("eval", "eval"), ("sft", "sft"), ("train-rm", "train-rm"),
                                           ("compare", "compare")])
def test_each_stage_runs_the_local_command(stage, command):
    assert jobs.entrypoint(stage, "configs/c.yaml", []) == f"lipo {command} configs/c.yaml"


def test_entrypoint_quotes_every_word():
    overrides = ["optim.lr=1e-4", "run_name=a b", "data.train=[x.jsonl,'y z.jsonl']", "tracking.uri=$(rm -rf ~)"]
    cmd = jobs.entrypoint("train", "my configs/t.yaml", overrides)
    assert cmd.startswith("lipo train 'my configs/t.yaml' optim.lr=1e-4 'run_name=a b' ")
    assert shlex.split(cmd) == ["lipo", "train", "my configs/t.yaml", *overrides]  # the shell sees the same words


def test_runtime_env_and_entrypoint_resources():
    spec = jobs.job_spec("train", "c.yaml", [], "/w", environ={"MLFLOW_TRACKING_URI": "http://mlflow:5000",
                                                                "LIPO_SHARED_PATHS": "/mnt/lipo",
                                                                "LIPO_ENTRYPOINT_NUM_CPUS": "1.5", "HOME": "/h"})
    env = spec["runtime_env"]
    assert env["working_dir"] == "/w" and env["excludes"] == jobs.EXCLUDES
    assert "py_modules" not in env  # not a lipo checkout: the job uses the cluster's installed lipo
    assert env["env_vars"] == {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "LIPO_SHARED_PATHS": "/mnt/lipo",
                               "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0"}  # nothing else leaks from the shell
    assert spec["entrypoint_num_cpus"] == 1.5 and spec["entrypoint_num_gpus"] == 0
    assert jobs.job_spec("train", "c.yaml", [], "/w", environ={}, num_cpus=2)["entrypoint_num_cpus"] == 2
    with pytest.raises(LipoError, match="LIPO_ENTRYPOINT_NUM_GPUS"):
        jobs.job_spec("train", "c.yaml", [], "/w", environ={"LIPO_ENTRYPOINT_NUM_GPUS": "one"})


def test_a_checkout_ships_its_own_lipo_package():
    env = jobs.runtime_env(REPO, environ={})
    assert env["py_modules"] == [str(REPO / "platform" / "lipo")]


def test_excludes_leave_outputs_and_caches_behind(tmp_path):
    """Package the dir with Ray's own uploader: only sources, configs and data go to the cluster."""
    from ray._private.runtime_env.packaging import create_package

    wd = tmp_path / "wd"
    kept = ["configs/train.yaml", "lists.jsonl", "platform/lipo/x.py", "benchmarks/run.py"]
    dropped = [".git/HEAD", "runs/r1/model.bin", "mlruns/0/meta.yaml", "runs/mlflow.db", "local.db",
               ".venv/bin/python", "platform/lipo/__pycache__/x.pyc", "lipo.egg-info/PKG-INFO",
               "benchmarks/results/r.json"]
    for rel in kept + dropped:
        (wd / rel).parent.mkdir(parents=True, exist_ok=True)
        (wd / rel).write_text("x")
    create_package(str(wd), tmp_path / "pkg.zip", include_gitignore=True, excludes=jobs.EXCLUDES)
    files = {n for n in zipfile.ZipFile(tmp_path / "pkg.zip").namelist() if not n.endswith("/")}
    assert files == set(kept)


def test_deploy_job_files_match_what_lipo_submit_builds(monkeypatch):
    from ray.runtime_env import RuntimeEnv

    monkeypatch.chdir(REPO)  # the files are for the repository root, as their comments say
    spec = yaml.safe_load((REPO / "deploy" / "jobs" / "pipeline.yaml").read_text())
    ours = jobs.job_spec("pipeline", "configs/quickstart.yaml", [], ".", environ={})
    assert ours["runtime_env"]["py_modules"] == ["platform/lipo"]
    cluster_env = spec["runtime_env"]["env_vars"]
    assert cluster_env.pop("MLFLOW_TRACKING_URI") == "http://lipo-mlflow:5000"  # the chart's in-cluster MLflow
    assert spec == ours
    runtime_env = yaml.safe_load((REPO / "deploy" / "jobs" / "runtime_env.yaml").read_text())
    assert runtime_env == ours["runtime_env"]
    RuntimeEnv(**runtime_env)  # what `ray job submit --runtime-env` will accept


# --- Refused before anything is submitted -----------------------------------------------------------------------------
def test_config_outside_working_dir_is_refused(tmp_path, toy_lists):
    wd, elsewhere = tmp_path / "wd", tmp_path / "elsewhere"
    wd.mkdir(), elsewhere.mkdir()
    cfg = train_yaml(elsewhere, toy_lists)
    with pytest.raises(LipoError, match="outside the working directory .*copy it under"):
        jobs.submit_job(cfg, [], address="http://127.0.0.1:1", stage="train", working_dir=wd)
    assert jobs.config_in_working_dir(cfg, elsewhere) == "configs/train.yaml"


def test_config_in_an_excluded_dir_or_missing_is_refused(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "c.yaml").write_text("{}")
    with pytest.raises(LipoError, match="not uploaded with the job"):
        jobs.config_in_working_dir(tmp_path / "runs" / "c.yaml", tmp_path)
    with pytest.raises(LipoError, match="config file not found"):
        jobs.config_in_working_dir(tmp_path / "nope.yaml", tmp_path)


def test_bad_config_fails_before_connecting(tmp_path, toy_lists, monkeypatch):
    cfg = train_yaml(tmp_path, toy_lists)
    monkeypatch.setattr(jobs, "connect", lambda address: pytest.fail("connected despite a bad config"))
    with pytest.raises(ConfigError, match="optim.lrr: unknown key"):
        jobs.submit_job(cfg, ["optim.lrr=1"], address="http://127.0.0.1:1", stage="train", working_dir=tmp_path)


def test_unknown_and_non_job_stages_are_refused_in_one_line():
    with pytest.raises(LipoError, match="unknown stage 'trian'"):
        jobs.entrypoint("trian", "configs/c.yaml", [])
    with pytest.raises(LipoError, match="stage 'serve' does not run as a Ray job"):
        jobs.entrypoint("serve", "configs/c.yaml", [])


def test_the_job_validates_with_the_stage_tables_config_class(tmp_path, toy_lists):
    cfg = train_yaml(tmp_path, toy_lists)
    jobs.validate_locally("train", cfg, ["optim.lr=1e-4"])  # a train config is a valid train config
    with pytest.raises(ConfigError, match="model: unknown key"):  # ... but not a valid eval config
        jobs.validate_locally("eval", cfg, [])


def test_unreachable_address_is_one_line(tmp_path, toy_lists):
    cfg = train_yaml(tmp_path, toy_lists)
    port = free_port()  # nothing listens there
    proc = subprocess.run([sys.executable, "-m", "lipo.cli", "submit", str(cfg), "--stage", "train", "--address",
                           f"127.0.0.1:{port}"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"lipo: error: cannot reach the Ray Jobs API at "
                                                   f"http://127.0.0.1:{port}"), proc.stderr


@pytest.mark.parametrize("given,expected", [("head:8265", "http://head:8265"),
                                            ("https://ray.example.com/", "https://ray.example.com")])
def test_address_normalisation(given, expected):
    assert jobs.normalize_address(given) == expected


def test_ray_client_address_is_refused():
    with pytest.raises(LipoError, match="not ray://"):
        jobs.normalize_address("ray://head:10001")


# --- Following a job (a fake client: the real one is exercised by the slow test) -----------------------------------
class FakeClient:
    def __init__(self, chunks, status="SUCCEEDED", message=""):
        self.chunks, self.status, self.message = chunks, status, message
        self.submitted, self.stopped = None, False

    def submit_job(self, **kwargs):
        self.submitted = kwargs
        return kwargs["submission_id"]

    async def tail_job_logs(self, job_id):
        for chunk in self.chunks:
            if chunk is KeyboardInterrupt:
                raise KeyboardInterrupt
            yield chunk

    def get_job_status(self, job_id):
        return SimpleNamespace(value=self.status)

    def get_job_info(self, job_id):
        return SimpleNamespace(message=self.message)

    def stop_job(self, job_id):
        self.stopped = True


def _submit(tmp_path, toy_lists, monkeypatch, client, **kwargs):
    monkeypatch.setattr(jobs, "connect", lambda address: client)
    cfg = train_yaml(tmp_path, toy_lists)
    return jobs.submit_job(cfg, ["optim.max_steps=2"], address="http://head:8265", stage="train", working_dir=tmp_path,
                           **kwargs)


def test_follow_streams_logs_until_success(tmp_path, toy_lists, monkeypatch, capsys):
    client = FakeClient(["step 1\n", "step 2\n"])
    job_id = _submit(tmp_path, toy_lists, monkeypatch, client)
    out = capsys.readouterr().out
    assert job_id.startswith("lipo-train-") and f"submitted job {job_id}" in out
    assert "step 1\nstep 2\n" in out and f"job {job_id} SUCCEEDED" in out
    assert client.submitted["entrypoint"] == "lipo train configs/train.yaml optim.max_steps=2"
    assert client.submitted["runtime_env"]["working_dir"] == str(tmp_path.resolve())


@pytest.mark.parametrize("status", ["FAILED", "STOPPED"])
def test_failed_or_stopped_job_is_an_error(tmp_path, toy_lists, monkeypatch, status):
    client = FakeClient(["boom\n"], status, "Job entrypoint command failed with exit code 2\nlast logs ...")
    with pytest.raises(LipoError, match=f"{status}: Job entrypoint command failed with exit code 2 \\(full log"):
        _submit(tmp_path, toy_lists, monkeypatch, client)


def test_ctrl_c_detaches_without_stopping_the_job(tmp_path, toy_lists, monkeypatch, capsys):
    client = FakeClient(["step 1\n", KeyboardInterrupt], status="RUNNING")
    job_id = _submit(tmp_path, toy_lists, monkeypatch, client)
    err = capsys.readouterr().err
    assert not client.stopped and "keeps running" in err
    assert f"ray job logs --follow {job_id} --address http://head:8265" in err
    assert f"ray job stop {job_id} --address http://head:8265" in err


def test_broken_log_stream_falls_back_to_the_status(capsys):
    class Broken(FakeClient):
        async def tail_job_logs(self, job_id):
            yield "step 1\n"
            raise RuntimeError("connection closed unexpectedly\ndetails")

    assert jobs.follow_job(Broken([]), "j1", "http://head:8265", poll_s=0) == "SUCCEEDED"
    assert "log stream ended early (connection closed unexpectedly)" in capsys.readouterr().err

    class Gone(Broken):
        def get_job_status(self, job_id):
            raise ConnectionError("Failed to connect to Ray at address: http://head:8265.")

    with pytest.raises(LipoError, match="lost contact with http://head:8265 while following job j1 .*ray job status"):
        jobs.follow_job(Gone([]), "j1", "http://head:8265", poll_s=0)


def test_no_follow_returns_after_submitting(tmp_path, toy_lists, monkeypatch, capsys):
    client = FakeClient([KeyboardInterrupt], status="RUNNING")  # following would "interrupt": it must not happen
    job_id = _submit(tmp_path, toy_lists, monkeypatch, client, follow=False)
    assert f"ray job logs --follow {job_id}" in capsys.readouterr().out and client.submitted


# --- A real job on a real (local) Ray cluster -------------------------------------------------------------------------
@pytest.fixture
def ray_head():
    """`ray start --head --block` in its own process group; stopped by signalling that group, never by `ray stop`
    (which would kill every Ray on the machine, including other test sessions')."""
    # A short temp dir: Ray's unix sockets live under it (108-byte path limit), and its address file stays out of
    # /tmp/ray, so no other ray.init() on this machine can find and join this cluster.
    temp_dir = tempfile.mkdtemp(prefix="lipo-rh-", dir="/tmp")
    dash = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "LIPO_SHARED_FS",
                                                        "LIPO_SHARED_PATHS")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",  # nothing to drain for; it would add 30 s to teardown
               # The job runs `lipo` from PATH, as it would in the cluster image.
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    log = open(Path(temp_dir) / "head.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--port={free_port()}",
         "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         "--include-dashboard=true", "--num-cpus=2", f"--temp-dir={temp_dir}", "--disable-usage-stats",
         f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 180
        while True:
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"ray head did not come up:\n{(Path(temp_dir) / 'head.log').read_text()[-3000:]}")
            request = urllib.request.Request(f"{address}/api/jobs/",
                                             headers={"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"})
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1)
        yield SimpleNamespace(address=address, env=env)
    finally:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` shuts its node down on SIGTERM
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group this fixture created
        except ProcessLookupError:
            pass
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_submitted_train_job_succeeds_and_logs_to_mlflow(ray_head, tmp_path, toy_lists):
    from lipo import tracking

    work = tmp_path / "work"
    # A lipo checkout whose package announces itself: the job must import this copy, not the installed lipo.
    shutil.copytree(REPO / "platform" / "lipo", work / "platform" / "lipo",
                    ignore=shutil.ignore_patterns("__pycache__"))
    with open(work / "platform" / "lipo" / "__init__.py", "a", encoding="utf-8") as f:
        f.write('\nprint("[lipo] uploaded checkout imported", flush=True)\n')
    db = tmp_path / "mlflow.db"
    cfg = train_yaml(work, toy_lists, output_dir=str(tmp_path / "runs"),
                     optim={"max_steps": 2, "micro_batch_size": 2}, checkpoint={"every": 1000},
                     scaling={"num_workers": 1, "cpus_per_worker": 0.5})
    (work / "runs").mkdir()
    (work / "runs" / "big.bin").write_bytes(b"\0" * 1024)  # excluded: must not matter to the job
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "lipo.cli", "submit", str(cfg.relative_to(work)), f"tracking.uri=sqlite:///{db}",
         "run_name=submitted", "--stage", "train", "--address", ray_head.address],
        cwd=work, env=ray_head.env, capture_output=True, text=True, timeout=600)
    print(f"lipo submit took {time.time() - start:.0f}s\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[lipo] submitted job lipo-train-" in proc.stdout
    assert "[lipo] train data:" in proc.stdout  # the job's own output, followed
    assert "[lipo] uploaded checkout imported" in proc.stdout
    assert proc.stdout.rstrip().splitlines()[-1].endswith("SUCCEEDED")

    c = tracking.client(f"sqlite:///{db}")
    [run] = c.search_runs([c.get_experiment_by_name("lipo").experiment_id],
                          filter_string="tags.mlflow.runName = 'submitted'")
    assert run.info.status == "FINISHED"
    assert len(c.get_metric_history(run.info.run_id, "train/loss")) == 2
    assert run.data.params["data.train"] == '["lists.jsonl"]'  # the uploaded copy, read from the job's cwd
    assert (tmp_path / "runs" / "submitted" / "model").is_dir()
