"""The pipeline's ledger runs a stage once per config and says when it skips one."""

from __future__ import annotations

from lipo.pipeline.ledger import Ledger


def test_a_stage_runs_once_per_config(tmp_path):
    calls = []

    def stage(x: int) -> dict:
        calls.append(x)
        return {"value": x * 2}

    ledger = Ledger(tmp_path)
    assert ledger.run("double", {"x": 1}, stage, 1) == {"value": 2}
    assert Ledger(tmp_path).run("double", {"x": 1}, stage, 1) == {"value": 2}  # a rerun reads the marker
    again = Ledger(tmp_path)
    assert again.run("double", {"x": 1}, stage, 1) == {"value": 2} and again.skipped == ["double"]
    assert ledger.run("double", {"x": 5}, stage, 5) == {"value": 10}  # a changed config runs again
    assert calls == [1, 5] and ledger.skipped == []
