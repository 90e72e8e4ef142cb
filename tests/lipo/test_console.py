"""lipo.console: quiet CLI output (lipo's lines on the screen, Ray's chatter in the log file) and `--verbose`.

Each case starts its own local Ray in a subprocess, since quiet mode rewires the driver's logging for the process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# A driver that starts Ray through lipo, then makes every kind of noise a stage run makes: a task's own prints
# (one of them lipo's), a worker-side warning, Ray Data's and MLflow's driver loggers, and a driver warning.
SCRIPT = r"""
import logging, sys, time, warnings
from pathlib import Path
from lipo import console
console.configure(verbose=sys.argv[2] == "verbose", log_dir=Path(sys.argv[1]))
import ray, ray.data
from lipo.runtime import ensure_ray
ensure_ray()

@ray.remote(num_cpus=0)
def chatter():
    print("internal chatter from a Ray task")
    print("[lipo] progress line from a worker")
    warnings.warn("deprecated thing in a worker", FutureWarning)
    return 1

ray.get(chatter.remote())
logging.getLogger("ray.data").warning("ray data warning line")
logging.getLogger("mlflow.store").warning("mlflow warning line")
warnings.warn("deprecated thing on the driver", FutureWarning)
print("[lipo] driver summary line", flush=True)
time.sleep(3)  # Ray's log monitor forwards worker output in batches
ray.shutdown()
"""


def _run(tmp_path: Path, mode: str) -> tuple[str, list[Path]]:
    logs = tmp_path / mode
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "LIPO_VERBOSE", "LIPO_LOG_DIR")}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(logs), mode], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr, sorted(logs.glob("lipo-*.log"))


NOISE = ("internal chatter from a Ray task", "deprecated thing in a worker", "ray data warning line",
         "mlflow warning line", "deprecated thing on the driver")


@pytest.mark.slow
def test_quiet_keeps_lipo_lines_on_screen_and_the_rest_in_the_printed_log(tmp_path):
    screen, files = _run(tmp_path, "quiet")
    assert "[lipo] progress line from a worker" in screen and "[lipo] driver summary line" in screen
    for noise in NOISE:
        assert noise not in screen, screen
    [log] = files
    assert f"[lipo] Ray, DeepSpeed and MLflow logs: {log}" in screen  # the path is printed
    text = log.read_text()
    for noise in NOISE:
        assert noise in text, text[-3000:]  # nothing is lost: the screen's omissions are all in the file


@pytest.mark.slow
def test_verbose_shows_everything_and_writes_no_file(tmp_path):
    screen, files = _run(tmp_path, "verbose")
    for line in ("[lipo] progress line from a worker", *NOISE):
        assert line in screen, screen[-3000:]
    assert files == [] and "--verbose shows them here" not in screen


def test_cli_verbose_flag_and_log_dir(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from lipo import cli, console

    monkeypatch.delenv("LIPO_LOG_DIR", raising=False)
    assert console.log_dir_for(str(tmp_path / "runs")) == tmp_path / "runs" / "logs"  # logs sit beside the run
    assert console.log_dir_for("s3://bucket/runs") == console.default_log_dir()  # not on object storage
    calls = []
    monkeypatch.setattr(console, "configure", lambda verbose, log_dir=None: calls.append((verbose, log_dir)))
    cfg = type("Cfg", (), {"output_dir": str(tmp_path / "runs")})()
    monkeypatch.setattr(cli, "_flags", {"verbose": False})
    runner = CliRunner()
    assert "--verbose" in runner.invoke(cli.app, ["--help"]).output
    runner.invoke(cli.app, ["--verbose", "train", "--help"])  # the root callback runs before the command's help
    assert cli._flags["verbose"] is True
    cli._console(cfg)
    cli._flags["verbose"] = False
    cli._console(cfg)
    assert calls == [(True, tmp_path / "runs" / "logs"), (False, tmp_path / "runs" / "logs")]
