"""The GPU suite's CPU smoke mode (benchmarks/gpu_check.py --smoke) runs, reports, and fails loudly on bad parity.

Run: pytest tests/benchmarks/test_gpu_check_smoke.py      (one gpu_check.py subprocess)

A subset of the parts keeps it short: the sampling part (generate vs lipo vs the old sampler, the greedy check), the
1.26B MFU matrix (engine, ceiling, targets, table, docs copy) and the TRL part (recorded as unavailable where trl is
not installed), then the parity part with one packed log-prob shifted, which must exit 1. Parity runs sdpa only here:
FlexAttention compiles slowly on a CPU.

CI time (issue 17): all four parts run in one gpu_check.py process (it used to be two, each paying for the torch /
deepspeed imports and the gloo group). `--perturb-parity` touches only the parity part (gpu_parity.py), and every part
records its own errors, so "no error but parity's" asserts what the separate clean run's "no error" did.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def run(tmp_path: Path, *args: str) -> tuple[int, dict]:
    env = {**os.environ, "GPU_CHECK_PORT": free_port(), "PYTHONPATH": str(ROOT / "platform")}
    env.pop("OUT", None)  # never write into a device tool's output folder from a test
    for key in ("MASTER_PORT", "MASTER_ADDR", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke",
                           "--out-dir", str(tmp_path), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=480)  # four parts in one process (was two of 300 s); gpu_check stops at 430 s
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_smoke_reports_and_perturbed_parity_fails(tmp_path):
    rc, data = run(tmp_path, "--parts", "generation,mfu_1.26B,trl,parity", "--parity-attn", "sdpa",
                   "--perturb-parity")
    assert rc == 1  # the perturbed parity fails the run...
    assert {e.split(":")[0] for e in data["errors"]} == {"parity"}, data["errors"]  # ...and nothing else did
    assert "parity" in data["error"]
    assert data["parity"]["checks"] and not any(c["ok"] for c in data["parity"]["checks"])

    kinds = {(s["kind"], s["K"], s.get("packing"), s.get("zero_stage")) for s in data["mfu"]["settings"]}
    assert ("ceiling", 8, None, None) in kinds and ("lipo", 8, True, 2) in kinds and ("lipo", 8, False, 2) in kinds
    assert {t["target"] for t in data["targets"]} >= {"1.26B K=8 packed ZeRO-2 MFU", "lipo / TRL tokens/s at K=2"}
    assert data["trl"]["status"] in ("unavailable", "done")
    gen = data["generation"]
    assert gen["status"] == "done" and gen["lipo_shape_ok"] and gen["greedy"]["equal_fraction"] >= 0.9
    assert set(gen["samplers"]) == {"generate", "lipo", "lipo before"}, gen["skipped"]
    assert gen["samplers"]["lipo"]["ratio_vs_generate"] > 0
    assert "lipo >= 1.0x generate tokens/s (0.48B bf16, 256 rows)" in {t["target"] for t in data["targets"]}
    assert json.loads((tmp_path / "gpu_check.json").read_text())["mfu"] == data["mfu"]
    doc = (tmp_path / "benchmarks.md").read_text()
    assert "<!-- gpu_check:begin -->" in doc and "## Packing" in doc  # the section replaced, the rest kept
