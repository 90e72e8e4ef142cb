"""The pipeline's ledger runs a stage once per config and says when it skips one."""

from __future__ import annotations

from lipo.pipeline.ledger import Ledger


def test_a_stage_runs_once_per_config(tmp_path):
    calls = []

    def stage(x: int) -> dict:
        calls.append(x)
        return {"value": x * 2}

    ledger = Ledger(tmp_path)
    first = ledger.run("double", {"x": 1}, stage, 1)
    assert first["value"] == 2 and set(first) == {"value", "wall_s"} and first["wall_s"] >= 0  # its cost is kept
    assert Ledger(tmp_path).run("double", {"x": 1}, stage, 1) == first  # a rerun reads the marker
    again = Ledger(tmp_path)
    assert again.run("double", {"x": 1}, stage, 1) == first and again.skipped == ["double"]
    assert ledger.run("double", {"x": 5}, stage, 5)["value"] == 10  # a changed config runs again
    assert calls == [1, 5] and ledger.skipped == []
