"""The end of `lipo run`: register the policy in the MLflow Model Registry and report what happened.

The summary goes to the console (its last lines say where to look) and to the pipeline's MLflow parent run
(metrics plus `summary.json`), so the run table shows the comparison without opening the children:

- `eval/*`: the evaluation's metrics as they are (`eval/win_rate` with `eval/win_rate_ci_low`/`_ci_high`, the gold
  judge's `eval/fn_win_rate...`, `eval/kl`, ...);
- each training child's final metrics under its own prefix (`CHILD_PREFIXES`: `sft/`, `rm/`, `train/`): its
  `train/x` as `<prefix>/x` (e.g. `train/loss`, `sft/loss`), its held-out `eval/x` as `<prefix>/heldout_x` (e.g.
  `rm/heldout_pair_accuracy`); bookkeeping (`BOOKKEEPING`: learning rate, throughput, ...) is left in the child;
- `summary/*`: the numbers of `summary.json` (list counts, agreements), as before.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from lipo import tracking
from lipo.data.readers import read_lists
from lipo.data.records import prompt_of
from lipo.bootstrap import gold_reward_spec
from lipo.lists.scorers import resolve_function
from lipo.metrics import pairwise_accuracy
from lipo.mlflow_models import logged_model_id
from lipo.tracking import StageRun


def register_model(uri: str, train_run_id: str, name: str, alias: str) -> dict:
    """Register the trained policy as a new version of `name`, and point `alias` at it. The version's source is the
    run's transformers-flavour logged model (`lipo.mlflow_models`), so `mlflow models serve -m models:/NAME@ALIAS`
    and `mlflow.transformers.load_model` work; a run without one (its model on object storage, or logged as raw
    files by an older lipo) registers its `model/` artifacts as before."""
    c = tracking.client(uri)
    try:
        c.get_registered_model(name)
    except Exception:  # noqa: BLE001 - MLflow raises its own RestException for a missing model
        c.create_registered_model(name)
    model_id = logged_model_id(uri, train_run_id)
    if model_id is not None:
        # The logged model's storage location, not `models:/m-ID`: MLflow 3.17 resolves the latter with the global
        # tracking URI, not this client's.
        version = c.create_model_version(name, c.get_logged_model(model_id).artifact_location, run_id=train_run_id,
                                         model_id=model_id)
    else:
        version = c.create_model_version(name, f"{c.get_run(train_run_id).info.artifact_uri}/model",
                                         run_id=train_run_id)
    c.set_registered_model_alias(name, alias, version.version)
    return {"name": name, "version": version.version, "alias": alias, "uri": f"models:/{name}@{alias}",
            "model_id": model_id}


def judge_agreement(lists_dir: str, judge: str) -> float | None:
    """`pairwise_accuracy` of the lists' scores (`rewards`) against the `judge` function's verdicts, over the pairs
    the judge does not tie (tied scores count half, as in the reward model's held-out accuracy); None: no such pair.

    With the world's gold reward as judge this is the reward model's accuracy on the very lists LiPO learns from;
    it, more than held-out accuracy on the reward model's own data, bounds how much of the proxy's gain is real.
    """
    fn = resolve_function(judge)
    rows = [r for r in read_lists(lists_dir)[0].to_pylist() if r["rewards"] is not None]
    verdicts = [[fn(prompt_of(r), y) for y in r["responses"]] for r in rows]
    if not any(len(set(v)) > 1 for v in verdicts):
        return None
    k = max(len(v) for v in verdicts)
    scores = torch.zeros(len(rows), k, dtype=torch.float64)  # [B, K]
    gold = torch.zeros_like(scores)  # [B, K]
    mask = torch.zeros(len(rows), k, dtype=torch.bool)  # [B, K]
    for b, (r, v) in enumerate(zip(rows, verdicts)):
        scores[b, :len(v)], gold[b, :len(v)], mask[b, :len(v)] = torch.tensor(r["rewards"]), torch.tensor(v), True
    return float(pairwise_accuracy(scores, gold, mask))


CHILD_PREFIXES = {"sft": "sft", "reward_model": "rm", "train": "train"}  # pipeline result key -> metric prefix
BOOKKEEPING = {"lr", "tokens_per_s", "grad_norm", "epoch"}


def parent_metrics(res: dict) -> dict[str, float]:
    """The children's metrics that go on the parent run (see the module docstring)."""
    out = {k: float(v) for k, v in res.get("evaluate", {}).get("metrics", {}).items() if k.startswith("eval/")}
    for key, prefix in CHILD_PREFIXES.items():
        for name, v in res.get(key, {}).get("metrics", {}).items():
            ns, _, rest = name.partition("/")
            if ns == "train" and rest not in BOOKKEEPING:
                out[f"{prefix}/{rest}"] = float(v)
            elif ns == "eval":
                out[f"{prefix}/heldout_{rest}"] = float(v)
    return out


def _fmt_rate(m: dict, prefix: str) -> str:
    if f"{prefix}win_rate" not in m:
        return "n/a"
    return (f"{m[f'{prefix}win_rate']:.3f} (95% CI {m[f'{prefix}win_rate_ci_low']:.3f}-"
            f"{m[f'{prefix}win_rate_ci_high']:.3f}, {int(m['eval/prompts'])} prompts)")


def report_summary(parent: StageRun, cfg, res: dict, skipped: list[str]) -> dict:
    ev = res["evaluate"]["metrics"]
    rm = res.get("reward_model", {}).get("metrics", {})
    tr = res["train"]["metrics"]
    counts = res["build_lists"].get("counts", {})
    pref = res.get("preferences", {}).get("counts", {})
    agreement = None
    if cfg.world is not None and "reward_model" in res:
        agreement = judge_agreement(res["build_lists"]["output_dir"], gold_reward_spec(cfg.world.task))
    summary = {
        "preference_lists": pref.get("lists"),
        "lists": counts.get("lists"), "prompts": counts.get("prompts"), "candidates": counts.get("candidates"),
        "reward_model_heldout_pair_accuracy": rm.get("eval/pair_accuracy"),
        "reward_model_gold_agreement_on_lists": agreement,
        "train_final_loss": tr.get("train/loss"), "train_final_pair_accuracy": tr.get("train/pair_accuracy"),
        **{k: v for k, v in ev.items() if "win_rate" in k or k in ("eval/kl", "eval/reward_gain")},
        "policy_model": res["train"]["model_dir"], "eval_report": res["evaluate"]["report_dir"],
        "registered": res.get("register", {}).get("uri"), "skipped_stages": skipped,
    }
    numeric = {f"summary/{k.replace('eval/', '')}": float(v) for k, v in summary.items()
               if isinstance(v, (int, float)) and v is not None}
    parent.log_metrics({**numeric, **parent_metrics(res)}, 0)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        parent.log_artifacts(tmp, "")
    acc = summary["reward_model_heldout_pair_accuracy"]
    lines = [f"===== lipo run '{cfg.name}': summary ====="]
    if pref:
        lines.append(f"preferences:  {pref.get('lists')} lists of SFT samples ({pref.get('candidates')} answers), "
                     "labelled by the gold reward")
    lines += [
        f"reward model: held-out pairwise accuracy {acc:.3f}" if acc is not None else "reward model: (given)",
        *([f"              agrees with the gold reward on {agreement:.3f} of the LiPO lists' pairs"]
          if agreement is not None else []),
        f"data:         {summary['lists']} lists from {summary['prompts']} prompts "
        f"({summary['candidates']} candidates)",
        f"train:        final loss {tr.get('train/loss', float('nan')):.4f}, "
        f"pair accuracy {tr.get('train/pair_accuracy', float('nan')):.3f}",
        f"win rate vs SFT, proxy reward model: {_fmt_rate(ev, 'eval/')}",
        f"win rate vs SFT, gold reward:        {_fmt_rate(ev, 'eval/fn_')}",
    ]
    if skipped:
        lines.append(f"skipped (finished earlier): {', '.join(skipped)}")
    lines += [
        f"MLflow UI:  mlflow ui --backend-store-uri {parent.uri}   (then open http://127.0.0.1:5000)",
        f"model:      {summary['policy_model']}" + (f"   registered as {summary['registered']}"
                                                     if summary["registered"] else ""),
        f"report:     {summary['eval_report']}",
    ]
    print("\n".join(lines), flush=True)
    return summary
