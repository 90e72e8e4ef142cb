"""The evaluation report: files on disk and the same in MLflow, linked to the training run.

    out = write_report(out_dir, samples, metrics, meta)     # samples.jsonl, metrics.json, rewards_hist.png
    log_report(uri, run_id, out, samples, metrics, links)   # metrics, the sample table, the files, link tags

In MLflow the run holds: the `eval/*` metrics; `eval/samples_table.json`, a table (prompt, both responses, both
rewards, the outcome) that the MLflow UI shows under Evaluation; and the directory `eval/` with the histogram PNG
of both sides' rewards, the samples and the metrics; and the evaluated prompts as an MLflow dataset (context
`evaluation`, source `samples.jsonl`, digest of the prompt ids). The run is tagged `eval.train_run_id` (and nested under
`parent_run_id` when given), so the training run and its evaluations find each other.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # no display on servers and CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402

from lipo import tracking  # noqa: E402


def histogram(path: Path, policy: list[float], baseline: list[float], xlabel: str, title: str) -> Path:
    """Overlaid histograms of the two sides' scores, on shared bins (PNG, headless Agg backend)."""
    both = np.asarray(policy + baseline, dtype=float)
    bins = np.histogram_bin_edges(both, bins=min(30, max(5, len(both) // 4)))
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.hist(policy, bins=bins, alpha=0.6, label=f"policy (mean {np.mean(policy):.3g})")
    ax.hist(baseline, bins=bins, alpha=0.6, label=f"baseline (mean {np.mean(baseline):.3g})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("prompts")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(out_dir: Path, rows: list[dict], metrics: dict[str, float], meta: dict) -> Path:
    """samples.jsonl, metrics.json (with `meta`: models, baseline source, judge) and the histogram(s)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "samples.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    (out_dir / "metrics.json").write_text(json.dumps({"metrics": metrics, **meta}, indent=2, sort_keys=True))
    if rows and rows[0]["reward_policy"] is not None:
        kind = meta.get("reward_kind")
        histogram(out_dir / "rewards_hist.png", [r["reward_policy"] for r in rows],
                  [r["reward_baseline"] for r in rows],
                  "P(side wins)" if kind == "pairwise" else "reward", f"Reward model ({kind}): policy vs baseline")
    if rows and rows[0]["fn_policy"] is not None:
        histogram(out_dir / "function_hist.png", [r["fn_policy"] for r in rows], [r["fn_baseline"] for r in rows],
                  "score", f"Function judge {meta.get('judge_function')}: policy vs baseline")
    return out_dir


def _table(rows: list[dict]) -> dict[str, list]:
    prompt = [p if isinstance(p, str) else json.dumps(p, ensure_ascii=False) for p in (r["prompt"] for r in rows)]
    cols = {"id": [r["id"] for r in rows], "prompt": prompt, "policy": [r["policy"] for r in rows],
            "baseline": [r["baseline"] for r in rows]}
    for key in ("reward_policy", "reward_baseline", "outcome", "fn_policy", "fn_baseline", "fn_outcome", "log_ratio"):
        if rows and rows[0][key] is not None:
            cols[key] = [r[key] for r in rows]
    return cols


def log_report(uri: str, run_id: str, out_dir: Path, rows: list[dict], metrics: dict[str, float],
               tags: dict[str, str]) -> None:
    tracking.log_metrics(uri, run_id, metrics, step=0)
    client = tracking.client(uri)
    for k, v in tags.items():
        client.set_tag(run_id, k, v)
    client.log_table(run_id, data=_table(rows), artifact_file="eval/samples_table.json")
    tracking.log_artifacts(uri, run_id, out_dir, "eval")
    # The evaluated prompts, as the run's dataset: their ids in order make the digest (the rows are here already)
    ids = hashlib.sha256("\n".join(str(r["id"]) for r in rows).encode()).hexdigest()[:16]
    tracking.log_datasets(uri, run_id, [str(Path(out_dir) / "samples.jsonl")], "evaluation", name="eval-prompts",
                          digests=[ids])


def train_run_id(explicit: str | None, policy_spec: str, registry_uri: str) -> str | None:
    """The training run to link: the explicit id, else the run behind a `runs:/ID/...` or `models:/NAME@ALIAS`
    (or `models:/NAME/VERSION`) policy URI."""
    if explicit or not policy_spec.startswith(("runs:/", "models:/")):
        return explicit
    if policy_spec.startswith("runs:/"):
        return policy_spec[len("runs:/"):].split("/")[0] or None
    name, _, version = policy_spec[len("models:/"):].partition("/")
    name, _, alias = name.partition("@")
    try:
        c = tracking.client(registry_uri)
        return (c.get_model_version_by_alias(name, alias) if alias else c.get_model_version(name, version)).run_id
    except Exception:  # the registry may live elsewhere; the link is a convenience, not a requirement
        return None
