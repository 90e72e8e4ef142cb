"""`lipo submit`: run a stage (or the whole pipeline) as a Ray job on a remote cluster, and follow it.

    lipo submit configs/quickstart.yaml --address http://127.0.0.1:8265                 # lipo run ... on the cluster
    lipo submit configs/train_example.yaml optim.lr=1e-4 --stage train --address http://HEAD:8265

The job runs exactly the command `lipo <stage>` runs locally, in a copy of the current directory (the Ray
`working_dir`, minus outputs and caches, see EXCLUDES), so the config and data paths it names resolve the same way.
Submitted from a lipo checkout (a `platform/lipo` package in the working dir), the job imports that code too (Ray
`py_modules`), not the version installed on the cluster: what you test locally is what runs.
The config is validated here first: a typo never costs a cluster round trip. Ctrl-C detaches; the job keeps running.

Equivalent Ray CLI (what `lipo submit` builds; `deploy/jobs/runtime_env.yaml` holds the same runtime env):

    ray job submit --address http://127.0.0.1:8265 --runtime-env deploy/jobs/runtime_env.yaml \
      --entrypoint-num-cpus 0 -- lipo run configs/quickstart.yaml

Environment: `LIPO_ENTRYPOINT_NUM_CPUS` / `LIPO_ENTRYPOINT_NUM_GPUS` reserve resources for the driver (default 0,
which keeps the driver on the head node); `MLFLOW_TRACKING_URI`, `LIPO_SHARED_PATHS` and `LIPO_SHARED_FS` are passed
on to the job.

On a multi-node cluster the job's `output_dir` must be shared storage: `lipo.runtime.check_shared_storage` refuses a
node-local one when a stage starts. The Helm chart's pods already declare their shared volume (`LIPO_SHARED_PATHS`
in their env), so a job needs nothing from the submitter's shell for it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from ray.exceptions import AuthenticationError
from ray.job_submission import JobSubmissionClient

from lipo.errors import LipoError
from lipo.stages import STAGES, Stage, by_name

# gitignore-style patterns (Ray's `excludes`). Outputs, databases and environments are large, may be private, and
# count against Ray's upload limit for working_dir; the job writes its own outputs on the cluster.
EXCLUDES = [".git", "runs/", "mlruns", "*.db", ".venv", "__pycache__", "*.egg-info", "benchmarks/results"]

# Passed from the submitter's environment to the job when set.
PASSED_ENV = ("MLFLOW_TRACKING_URI", "LIPO_SHARED_FS", "LIPO_SHARED_PATHS")
FIXED_ENV = {"RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0"}

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
_LOOPBACK = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}


# --- What is submitted ----------------------------------------------------------------------------------------------
def submittable(name: str) -> Stage:
    """The stage `--stage NAME` names (lipo.stages); one that cannot run as a job is refused in one line."""
    stage = by_name(name)
    if not stage.submit:
        raise LipoError(f"stage '{name}' does not run as a Ray job; use one of "
                        f"{', '.join(s.name for s in STAGES if s.submit)}")
    return stage


def entrypoint(stage: str, config_rel: str, overrides: list[str]) -> str:
    """The shell command of the job: `lipo <cmd> CONFIG [overrides]`, every word shell-quoted."""
    return shlex.join(["lipo", submittable(stage).command, config_rel, *overrides])


def runtime_env(working_dir: str | Path, environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    env_vars = {k: environ[k] for k in PASSED_ENV if environ.get(k)}
    env_vars.update(FIXED_ENV)
    env: dict[str, Any] = {"working_dir": str(working_dir), "excludes": list(EXCLUDES), "env_vars": env_vars}
    package = Path(working_dir) / "platform" / "lipo"
    if (package / "__init__.py").is_file():  # a checkout: its lipo goes first on the job's path (driver and workers)
        env["py_modules"] = [str(package)]
    return env


def _resource(environ: Mapping[str, str], name: str, given: float | None) -> float:
    if given is not None:
        value = given
    else:
        raw = environ.get(name, "0")
        try:
            value = float(raw)
        except ValueError:
            raise LipoError(f"{name}={raw!r} is not a number") from None
    if value < 0:
        raise LipoError(f"{name} must be >= 0, got {value}")
    return int(value) if value == int(value) else value


def job_spec(stage: str, config_rel: str, overrides: list[str], working_dir: str | Path,
             environ: Mapping[str, str] = os.environ, num_cpus: float | None = None,
             num_gpus: float | None = None) -> dict[str, Any]:
    """Keyword arguments of `JobSubmissionClient.submit_job` (deploy/jobs/pipeline.yaml is one of these)."""
    return {
        "entrypoint": entrypoint(stage, config_rel, overrides),
        "runtime_env": runtime_env(working_dir, environ),
        # 0 (the default) leaves the driver on the head node, where Ray runs resource-less entrypoints; it only
        # orchestrates, the work runs in Ray tasks and Train workers.
        "entrypoint_num_cpus": _resource(environ, "LIPO_ENTRYPOINT_NUM_CPUS", num_cpus),
        "entrypoint_num_gpus": _resource(environ, "LIPO_ENTRYPOINT_NUM_GPUS", num_gpus),
        "metadata": {"lipo.stage": stage, "lipo.config": config_rel},
    }


def config_in_working_dir(config: str | Path, working_dir: str | Path) -> str:
    """The config's path relative to the working dir (POSIX, as the job sees it); refuses one that is not uploaded."""
    wd = Path(working_dir).resolve()
    path = Path(config).resolve()
    if not path.is_file():
        raise LipoError(f"config file not found: {config}")
    try:
        rel = path.relative_to(wd).as_posix()
    except ValueError:
        raise LipoError(f"config {path} is outside the working directory {wd}, which is what the job receives; "
                        f"copy it under {wd} (e.g. configs/) or run lipo submit from a directory that contains it"
                        ) from None
    if _excluded(rel):
        raise LipoError(f"config {rel} is in a path that is not uploaded with the job (excluded: "
                        f"{', '.join(EXCLUDES)}); move it, e.g. under configs/")
    return rel


def _excluded(rel: str) -> bool:
    try:  # Ray's own matcher, so the answer is what the upload will do
        from ray._private.thirdparty.pathspec import PathSpec
    except ImportError:  # pragma: no cover - a Ray without it: skip the check, the job reports a missing file
        return False
    spec = PathSpec.from_lines("gitwildmatch", EXCLUDES)
    parts = rel.split("/")
    # A directory pattern ("runs/") matches the files under it; test every parent too, as Ray's walk does.
    return any(spec.match_file("/".join(parts[:i])) for i in range(1, len(parts) + 1))


def validate_locally(stage: str, config: str | Path, overrides: list[str]) -> None:
    """Load the config with its stage's class (lipo.stages); raises ConfigError (one line)."""
    submittable(stage).load(config, overrides)


# --- Talking to the cluster -----------------------------------------------------------------------------------------
def normalize_address(address: str) -> str:
    """`HEAD:8265` -> `http://HEAD:8265`. A `ray://` (client) or GCS address is not the Jobs API."""
    address = (address or "").strip().rstrip("/")
    if not address:
        raise LipoError("--address is required: the Ray dashboard URL, e.g. http://127.0.0.1:8265")
    if "://" not in address:
        address = "http://" + address
    scheme = urlsplit(address).scheme
    if scheme not in ("http", "https"):
        raise LipoError(f"--address {address}: use the dashboard's Jobs API URL (http://HEAD:8265), not {scheme}://")
    return address


def connect(address: str, timeout: float = 10.0):
    """A JobSubmissionClient for `address`, or one LipoError line saying why not."""
    url = urlsplit(address)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    hint = ("is the Ray head's dashboard running and reachable (e.g. `kubectl port-forward "
            "svc/<cluster>-head-svc 8265:8265`)?")
    # A plain TCP probe first: Ray's client has no connect timeout, so a firewalled host would hang for minutes.
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise LipoError(f"cannot reach the Ray Jobs API at {address} ({exc.strerror or exc}); {hint}") from None
    try:
        return JobSubmissionClient(address)
    except AuthenticationError as exc:
        # Deliberately no fallback to ~/.ray/auth_token: that is the local cluster's secret, not this one's.
        raise LipoError(f"the Ray cluster at {address} refused the request ({_first_line(exc)}); export "
                        f"RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) with its token") from None
    except Exception as exc:  # ConnectionError, a non-Ray server answering 404 ...
        raise LipoError(f"cannot use the Ray Jobs API at {address}: {_first_line(exc)}; {hint}") from None


def _first_line(exc: BaseException | str) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def _how_to_reattach(job_id: str, address: str) -> str:
    return (f"[lipo] follow: ray job logs --follow {job_id} --address {address}\n"
            f"[lipo] stop:   ray job stop {job_id} --address {address}")


def follow_job(client, job_id: str, address: str, poll_s: float = 1.0) -> str | None:
    """Stream the job's logs to stdout until it ends; its final status, or None when the user detached (Ctrl-C)."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    try:
        try:
            asyncio.run(tail())
        except Exception as exc:  # the log stream broke (head restarted, port-forward dropped): not the job's end
            print(f"[lipo] warning: log stream ended early ({_first_line(exc)}); waiting for the job's status",
                  file=sys.stderr, flush=True)
        # The stream closes when the driver exits; the status may lag behind it by a moment.
        try:
            while (status := str(client.get_job_status(job_id).value)) not in TERMINAL:
                time.sleep(poll_s)
        except Exception as exc:
            raise LipoError(f"lost contact with {address} while following job {job_id} ({_first_line(exc)}); "
                            f"it may still be running: ray job status {job_id} --address {address}") from None
        return status
    except KeyboardInterrupt:
        print(f"\n[lipo] detached; job {job_id} keeps running\n{_how_to_reattach(job_id, address)}",
              file=sys.stderr, flush=True)
        return None


def _warn_loopback_tracking(environ: Mapping[str, str], address: str) -> None:
    # A port-forwarded MLflow (http://localhost:5000) passed on to a cluster's job points at the job's own pod.
    uri = environ.get("MLFLOW_TRACKING_URI", "")
    if urlsplit(uri).hostname in _LOOPBACK and urlsplit(address).hostname not in _LOOPBACK | {None}:
        print("[lipo] warning: MLFLOW_TRACKING_URI names localhost; on the cluster that is the job's own node. "
              "Unset it to use the cluster's MLflow, or set the in-cluster URL", file=sys.stderr, flush=True)


def submit_job(config: str | Path, overrides: list[str], *, address: str, stage: str = "pipeline",
               follow: bool = True, working_dir: str | Path | None = None, num_cpus: float | None = None,
               num_gpus: float | None = None) -> str:
    """Validate, submit and (by default) follow one job; returns its submission id.

    Raises LipoError for a bad config, an unreachable cluster, and a job that ends FAILED or STOPPED.
    """
    submittable(stage)
    wd = Path(working_dir or os.getcwd()).resolve()
    rel = config_in_working_dir(config, wd)
    overrides = list(overrides or [])
    validate_locally(stage, wd / rel, overrides)
    address = normalize_address(address)
    spec = job_spec(stage, rel, overrides, wd, num_cpus=num_cpus, num_gpus=num_gpus)
    _warn_loopback_tracking(os.environ, address)
    client = connect(address)
    submission_id = f"lipo-{stage}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    try:
        job_id = client.submit_job(submission_id=submission_id, **spec)
    except Exception as exc:  # upload too large, runtime env rejected, auth ...: the cluster's answer, one line
        raise LipoError(f"job submission to {address} failed: {_first_line(exc)}") from None
    print(f"[lipo] submitted job {job_id} to {address}: {spec['entrypoint']}", flush=True)
    if not follow:
        print(_how_to_reattach(job_id, address), flush=True)
        return job_id
    status = follow_job(client, job_id, address)
    if status is None:
        return job_id
    print(f"[lipo] job {job_id} {status}", flush=True)
    if status != "SUCCEEDED":
        info = client.get_job_info(job_id)
        raise LipoError(f"job {job_id} {status}: {_first_line(info.message or 'no message')} "
                        f"(full log: ray job logs {job_id} --address {address})")
    return job_id
