"""`build_lists`: the whole build-lists stage for one config, with its MLflow run.

    result = build_lists(cfg)          # BuildListsConfig -> BuildResult(output_dir, manifest, run_id, tracking_uri)

Run it with `lipo build-lists CONFIG.yaml [key=value ...]` (the CLI and the pipeline call this function). Steps:
prepare (config, models and the output directory before Ray, then the distributed validation pass over the prompts;
`lipo.lists.pipeline.prepare`),
open the MLflow run (`lipo.tracking.stage_run`), run the Ray Data pipeline shard by shard (progress metrics per
shard), write the manifest, log its numbers with the manifest and a sample table as artifacts, and the prompts and
lists as MLflow datasets. Rerunning the same config into the same `output.dir` resumes; a finished build is not
redone (and opens no run).
Tests: tests/workflows/test_build_lists_e2e.py.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lipo import tracking
from lipo.lists.config import BuildListsConfig
from lipo.lists.manifest import sample_rows
from lipo.lists.pipeline import Plan, execute, finalize, manifest_metrics, prepare
from lipo.runtime import check_shared_storage, ensure_ray

STAGE = "build-lists"


@dataclass
class BuildResult:
    output_dir: Path | str  # a Path for a local output.dir (a path or file://), else the URI
    manifest: dict
    run_id: str | None
    tracking_uri: str | None


def build_lists(cfg: BuildListsConfig, parent_run_id: str | None = None) -> BuildResult:
    """Build (or resume, or find complete) the dataset `cfg` describes; returns where it is and its manifest."""
    plan = prepare(cfg)  # every user mistake surfaces here, before any model loads
    print(f"[lipo] prompts: {plan.report.summary()}; shards: {len(plan.shards) - len(plan.pending)} of "
          f"{len(plan.shards)} done ({plan.status})", flush=True)
    if plan.status == "complete":
        print(f"[lipo] {plan.out.root} is already complete; nothing to do", flush=True)
        return BuildResult(plan.out.root, plan.out.manifest(), None, None)

    if plan.pending:
        ensure_ray()
        check_shared_storage(plan.out.root, key="output.dir")  # workers on other nodes write shards there: it must be shared storage
    t = cfg.tracking
    # MLflow's default store sits beside a local output.dir; with an object-store output.dir, in the working directory
    local_parent = str(plan.out.root.parent) if plan.out.local else "."
    uri = tracking.resolve_uri(t.uri, local_parent) if t.enabled else None
    name = t.run_name or f"{STAGE}-{plan.config_hash}"  # a resumed build keeps its run
    with tracking.stage_run(uri, t.experiment, name, STAGE, parent_run_id, config=plan.resolved,
                            enabled=t.enabled, output=plan.out.root) as run:  # another output.dir: another run
        def on_shard(done: int, record: dict[str, Any]) -> None:  # progress in MLflow as each shard lands
            run.log_metrics({"progress/shards_done": done, "progress/lists": record["lists"]}, done)

        if plan.pending:
            execute(plan, on_shard)
        manifest = finalize(plan)
        run.log_metrics(manifest_metrics(manifest), len(plan.shards))
        if run.run_id:
            _log_artifacts(run, plan, manifest)
    c = manifest["counts"]
    print(f"[lipo] lists: {c['lists']} from {c['prompts']} prompts ({c['candidates']} candidates) in {plan.out.root}"
          + (f"\n[lipo] mlflow: run {run.run_id} in {run.uri}" if run.run_id else ""), flush=True)
    return BuildResult(plan.out.root, manifest, run.run_id, run.uri)


def _log_artifacts(run: tracking.StageRun, plan: Plan, manifest: dict[str, Any]) -> None:
    """`manifest.json` and `sample_table.json` (MLflow's table layout) under the run's `build-lists/`; the prompts
    (context `input`) and the lists (context `output`, digest of their manifest) as MLflow datasets."""
    run.log_datasets(plan.cfg.input.prompts, "input", name="prompts")
    run.log_datasets([str(plan.out.root)], "output", name="lists")
    with tempfile.TemporaryDirectory() as tmp:
        rows = sample_rows(plan.out, manifest["files"], plan.cfg.output.sample_rows)
        columns = list(rows[0]) if rows else []
        (Path(tmp) / "manifest.json").write_text(json.dumps(manifest, indent=2))
        # MLflow's table layout (pandas "split"): columns + rows, readable by mlflow.load_table
        (Path(tmp) / "sample_table.json").write_text(json.dumps(
            {"columns": columns, "data": [[r[c] for c in columns] for r in rows]}, indent=1))
        run.log_artifacts(tmp, STAGE)
