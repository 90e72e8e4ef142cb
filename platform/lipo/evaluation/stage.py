"""`lipo eval CONFIG.yaml [key=value ...]`: win rate of the policy against the baseline, judged over HTTP.

    result = run_eval(load_config(EvalConfig, "configs/eval_example.yaml"))

Steps: read the prompts (before anything starts); reach the server (`server.url`, or start the `serve` section
locally on loopback with a one-off key); sample, judge and estimate the KL through the server
(`lipo.evaluation.runner`); write the report and log it to MLflow, linked to the training run
(`lipo.evaluation.report`). A failed evaluation marks its MLflow run FAILED.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from lipo import tracking
from lipo.errors import LipoError
from lipo.evaluation.config import EvalConfig
from lipo.evaluation.report import log_report, train_run_id, write_report
from lipo.evaluation.runner import evaluate, read_prompts, sample_rows
from lipo.evaluation.winrate import load_judge
from lipo.serving.config import HttpConfig
from lipo.serving.local import serve_running, start_local, stop_local


@dataclass
class EvalResult:
    run_name: str
    run_id: str
    tracking_uri: str
    metrics: dict
    report_dir: Path


def server_key(cfg: EvalConfig) -> str | None:
    """The API key of an existing server: `server.api_key_file`, else the environment variable it names."""
    if cfg.server.api_key_file:
        try:
            return Path(cfg.server.api_key_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise LipoError(f"server.api_key_file: cannot read {cfg.server.api_key_file} ({exc.strerror})") from None
    return os.environ.get(cfg.server.api_key_env)


def run_eval(cfg: EvalConfig) -> EvalResult:
    rows = read_prompts(cfg.data.prompts, cfg.data.max_prompts)  # user mistakes surface before any start-up
    if cfg.judge.function:
        load_judge(cfg.judge.function)
    run_name = cfg.run_name or time.strftime("eval-%Y%m%d-%H%M%S")
    uri = tracking.resolve_uri(cfg.tracking.uri, cfg.output_dir)
    if cfg.server.url:
        url, key, app, started = cfg.server.url, server_key(cfg), None, None
    else:  # our own app: loopback, any free port, a key nobody else knows, a name no user app has
        key, had_serve, app = secrets.token_urlsafe(32), serve_running(), f"lipo-eval-{secrets.token_hex(3)}"
        own = cfg.serve.model_copy(update={"app_name": app, "http": HttpConfig(host="127.0.0.1", port=0,
                                                                               route_prefix=f"/{app}")})
        url, started = start_local(own, key, log_level="WARNING"), not had_serve
    config = cfg.model_copy(update={"run_name": run_name}).model_dump(mode="json")
    with tracking.stage_run(uri, cfg.tracking.experiment, run_name, "eval", cfg.tracking.parent_run_id,
                            config=config, output=cfg.output_dir) as run:
        try:
            samples, metrics, plan = evaluate(cfg, rows, url, key)
        finally:
            if started is not None:
                stop_local(app, shutdown=started)
        meta = {"policy_model": plan["policy"], "baseline": "reference" if plan["use_reference"] else plan["baseline"],
                "reward_kind": plan["reward_kind"], "judge_function": cfg.judge.function, "server": url}
        out = write_report(Path(cfg.output_dir) / run_name / "eval", sample_rows(samples), metrics, meta)
        train_id = train_run_id(cfg.tracking.train_run_id, cfg.serve.policy.model, cfg.serve.tracking_uri or uri)
        log_report(uri, run.run_id, out, sample_rows(samples), metrics,
                   {"eval.train_run_id": train_id} if train_id else {})
    shown = {k.removeprefix("eval/"): round(v, 4) for k, v in metrics.items() if "win_rate" in k or k == "eval/kl"}
    print(f"[lipo] eval {run_name}: {shown}\n[lipo] report: {out}\n[lipo] mlflow: run '{run_name}' in {uri}",
          flush=True)
    return EvalResult(run_name, run.run_id, uri, metrics, out)
