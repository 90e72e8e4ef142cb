"""`lipo build-lists CONFIG.yaml [key=value ...]`: prompts -> K candidates -> scores -> labels + ref log-probs.

Also a Ray job entrypoint: `python -m workflows.build_lists CONFIG.yaml`. Steps: prepare (validate config, models,
prompts and the output directory, before Ray), open the MLflow run, run the Ray Data pipeline shard by shard, write
the manifest, log it with a sample table. Rerunning the same config into the same `output.dir` resumes; a finished
build is not redone.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lipo.lists.config import BuildListsConfig


@dataclass
class BuildResult:
    output_dir: Path
    manifest: dict
    run_id: str | None
    tracking_uri: str | None


def run(cfg: BuildListsConfig, parent_run_id: str | None = None) -> BuildResult:
    from lipo import tracking
    from lipo.lists.manifest import sample_rows
    from lipo.lists.pipeline import execute, finalize, manifest_metrics, prepare
    from lipo.runtime import ensure_ray

    plan = prepare(cfg)  # every user mistake surfaces here, before Ray starts
    print(f"[lipo] prompts: {plan.report.summary()}; shards: {len(plan.shards) - len(plan.pending)} of "
          f"{len(plan.shards)} done ({plan.status})", flush=True)
    if plan.status == "complete":
        print(f"[lipo] {plan.out.root} is already complete; nothing to do", flush=True)
        return BuildResult(plan.out.root, plan.out.manifest(), None, None)

    uri = run_id = None
    if cfg.tracking.enabled:
        uri = tracking.resolve_uri(cfg.tracking.uri, str(plan.out.root.parent))
        name = cfg.tracking.run_name or f"build-lists-{plan.config_hash}"  # a resumed build keeps its run
        run_id, created = tracking.open_run(uri, cfg.tracking.experiment, name, "build-lists", parent_run_id)
        tracking.log_config(uri, run_id, plan.resolved, created)

    def on_shard(done: int, record: dict) -> None:
        if run_id:
            tracking.log_metrics(uri, run_id, {"progress/shards_done": done, "progress/lists": record["lists"]}, done)

    try:
        if plan.pending:
            ensure_ray()
            execute(plan, on_shard)
        manifest = finalize(plan)
    except BaseException:
        if run_id:
            tracking.finish_run(uri, run_id, "FAILED")
        raise

    if run_id:
        tracking.log_metrics(uri, run_id, manifest_metrics(manifest), len(plan.shards))
        with tempfile.TemporaryDirectory() as tmp:
            rows = sample_rows(plan.out, manifest["files"], cfg.output.sample_rows)
            columns = list(rows[0]) if rows else []
            (Path(tmp) / "manifest.json").write_text(json.dumps(manifest, indent=2))
            # MLflow's table layout (pandas "split"): columns + rows, readable by mlflow.load_table
            (Path(tmp) / "sample_table.json").write_text(json.dumps(
                {"columns": columns, "data": [[r[c] for c in columns] for r in rows]}, indent=1))
            tracking.log_artifacts(uri, run_id, tmp, "build-lists")
        tracking.finish_run(uri, run_id)
    c = manifest["counts"]
    print(f"[lipo] lists: {c['lists']} from {c['prompts']} prompts ({c['candidates']} candidates) in {plan.out.root}"
          + (f"\n[lipo] mlflow: run {run_id} in {uri}" if run_id else ""), flush=True)
    return BuildResult(plan.out.root, manifest, run_id, uri)


def main(argv: list[str] | None = None) -> None:
    from lipo.config import load_config

    args = sys.argv[1:] if argv is None else argv
    run(load_config(BuildListsConfig, args[0], args[1:]))


if __name__ == "__main__":
    main()
