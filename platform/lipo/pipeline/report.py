"""The comparison report: paired statistics over prompts and seeds, the paper's claims, the ablations, CSVs, plots.

    out_dir = write_report(runs, Path("out/compare"), full_k=8, reference_weight="dcg", name="quickstart",
                           world="copy", resamples=2000, confidence=0.95, seed=0, wall_s=3600.0)

`runs` holds one dict per trained-and-evaluated policy (`lipo.pipeline.compare` builds them): objective, K,
weight (lambda's weight; None otherwise), seed, train_run_id, eval_run_id, metrics, samples (path of the
evaluation's samples.jsonl) and wall_s. A variant is (objective, K, weight); its runs are its training seeds.
Writes report.md, report.csv (one row per variant), runs.csv (one row per run) and the plots winrate_vs_k.png,
delta_vs_lambda.png and lambda_weights.png (each only when its part is present; every point has its CI).

Decisions:
- The reference is ("lambda", full_k, reference_weight); the main table is K == full_k without lambda's other
  weights; K < full_k rows form the list-size ablation; lambda's other weights at full_k the weight ablation.
- All statistics come from the per-prompt samples (`lipo.evaluation.paired`), not from each run's logged
  metrics, so every number pairs by (seed, prompt id). Gold is required (fn_outcome); proxy (outcome) is optional.
- Paired comparisons use the seeds both variants have (a note says when that drops any); differing prompt ids
  are refused. The head-to-head uses the gold scores (fn_policy) with exact ties (tie_eps 0: the gold judge is
  a deterministic function). Each statistic uses the same bootstrap seed, so the draws are shared across variants.
- report.csv (and each claim line) also gives the gold difference's unpaired interval, to show what pairing gains,
  and its prompts-only interval (seeds held fixed), to show how much of the width is seed-to-seed luck. The
  verdicts use the two-level paired interval only.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402

from lipo.errors import LipoError  # noqa: E402
from lipo.evaluation.paired import (Aligned, Estimate, align, common, estimate, head_to_head,  # noqa: E402
                                    paired_difference, prompt_interval, unpaired_difference, verdict)

PAPER_NAMES = {"point_mse": "point-mse", "point_sigmoid": "point-sigmoid", "softmax": "softmax",
               "pair_hinge": "pair-hinge", "pair_logistic": "pair-logistic", "list_mle": "list-mle",
               "lambda": "lambda (LiPO)"}
CLAIMS = {"pair_logistic": "pair-logistic (DPO-BT)", "list_mle": "list-mle (DPO-PL)", "softmax": "softmax"}
KEY_METRICS = ("eval/prompts", "eval/win_rate", "eval/win_rate_ci_low", "eval/win_rate_ci_high", "eval/fn_win_rate",
               "eval/fn_win_rate_ci_low", "eval/fn_win_rate_ci_high", "eval/kl")
RUN_FIELDS = ("objective", "K", "weight", "seed", "train_run_id", "eval_run_id", "samples", "wall_s")


@dataclass
class Variant:
    key: tuple  # (objective, K, weight)
    runs: list[dict]
    gold: Aligned  # fn_outcome: gold win vs SFT, 1 / 0.5 / 0
    score: Aligned  # fn_policy: the gold score of the policy's sample (for the head-to-head)
    proxy: Aligned | None  # outcome: reward-model win vs SFT; None without a reward model


def _number(v, path, row: int, field: str, optional: bool = False) -> float | None:
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise LipoError(f"{path}: row {row}: field '{field}': expected a number, got {v!r}")
    return float(v)


def read_samples(path) -> dict[str, dict]:
    """samples.jsonl -> {prompt id: {"gold", "score", "proxy"}}; a bad row is a LipoError naming file, row, field."""
    out: dict[str, dict] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise LipoError(f"{path}: cannot read the evaluation samples ({exc.strerror})") from None
    for row, line in enumerate(lines, 1):
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            raise LipoError(f"{path}: row {row}: not a JSON object") from None
        pid = r.get("id") if isinstance(r, dict) else None
        if not isinstance(pid, str):
            raise LipoError(f"{path}: row {row}: field 'id': expected a string, got {pid!r}")
        if pid in out:
            raise LipoError(f"{path}: row {row}: field 'id': prompt '{pid}' appears twice")
        out[pid] = {"gold": _number(r.get("fn_outcome"), path, row, "fn_outcome"),
                    "score": _number(r.get("fn_policy"), path, row, "fn_policy"),
                    "proxy": _number(r.get("outcome"), path, row, "outcome", optional=True)}
    if not out:
        raise LipoError(f"{path}: no evaluated prompts")
    return out


def label(key: tuple, reference_weight: str | None = None) -> str:
    obj, _, weight = key
    name = PAPER_NAMES.get(obj, obj)
    return name if obj != "lambda" or weight in (None, reference_weight) else f"lambda ({weight})"


def load_variants(runs: list[dict], reference_weight: str) -> dict[tuple, Variant]:
    """Group runs by (objective, K, weight) and align each variant's per-prompt values on one prompt order."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        weight = r.get("weight") or reference_weight if r["objective"] == "lambda" else None
        groups.setdefault((r["objective"], int(r["K"]), weight), []).append(r)
    ids, out = None, {}
    for key, rs in groups.items():
        name = f"{label(key, reference_weight)} K={key[1]}"
        by_seed: dict[int, dict] = {}
        for r in rs:
            if r["seed"] in by_seed:
                raise LipoError(f"{name}: seed {r['seed']} was run twice ({r['samples']})")
            by_seed[r["seed"]] = read_samples(r["samples"])
        ids = ids or list(by_seed[min(by_seed)])
        cols = {f: {s: {i: v[f] for i, v in d.items()} for s, d in by_seed.items()} for f in ("gold", "score", "proxy")}
        has_proxy = {r["samples"]: [v["proxy"] is not None for v in by_seed[r["seed"]].values()] for r in rs}
        flags = [f for fs in has_proxy.values() for f in fs]
        if any(flags) and not all(flags):  # a half-judged variant would silently pair on a subset
            bad = next(path for path, fs in has_proxy.items() if not all(fs))
            raise LipoError(f"{bad}: field 'outcome' is null on some rows, while other rows of {name} have it")
        proxy = align(cols["proxy"], name, ids) if all(flags) else None
        out[key] = Variant(key, sorted(rs, key=lambda r: r["seed"]), align(cols["gold"], name, ids),
                           align(cols["score"], name, ids), proxy)
    return out


@dataclass
class Stats:
    """Everything the report says about one variant (proportions in [0, 1]; differences are variant - reference)."""
    gold: Estimate
    proxy: Estimate | None
    d_gold: Estimate | None = None
    d_proxy: Estimate | None = None
    h2h: Estimate | None = None  # the reference's gold win rate against this variant
    unpaired: tuple[float, float] | None = None  # the gold difference's interval without pairing
    prompts: tuple[float, float] | None = None  # the paired gold difference's interval with the seeds held fixed
    seeds_used: tuple[int, ...] = ()


def compute_stats(variants: dict[tuple, Variant], ref_key: tuple, boot: tuple, notes: list[str],
                  names: dict) -> dict[tuple, Stats]:
    out = {}
    ref = variants.get(ref_key)
    for key, v in variants.items():
        st = Stats(estimate(v.gold.values, *boot), estimate(v.proxy.values, *boot) if v.proxy else None)
        if ref is not None and key != ref_key:
            x, r, seeds = common(v.gold, ref.gold, names[key], names[ref_key])
            st.d_gold, st.unpaired = paired_difference(x, r, *boot), unpaired_difference(x, r, *boot)
            st.seeds_used, st.prompts = seeds, prompt_interval(x - r, *boot)
            xs, rs, _ = common(v.score, ref.score, names[key], names[ref_key])
            st.h2h = head_to_head(rs, xs, *boot)
            if v.proxy and ref.proxy:
                st.d_proxy = paired_difference(*common(v.proxy, ref.proxy, names[key], names[ref_key])[:2], *boot)
            if len(seeds) < len(v.gold.seeds) or len(seeds) < len(ref.gold.seeds):
                notes.append(f"{names[key]} is compared with {names[ref_key]} on their common seeds {list(seeds)}.")
        out[key] = st
    return out


def pct(v: float) -> str:
    return f"{100 * v:.1f}"


def ci(e: Estimate | None, sign: bool = False) -> str:
    if e is None:
        return "n/a"
    f = (lambda v: f"{100 * v + 0.0:+.1f}") if sign else pct  # + 0.0: no "-0.0" for an exact zero
    return f"{f(e.mean)} ({f(e.low)} to {f(e.high)})"


def flipped(e: Estimate) -> Estimate:
    """reference - X from X - reference."""
    return Estimate(-e.mean, -e.high, -e.low, tuple(-v for v in e.per_seed), e.sd)


def per_seed(e: Estimate) -> str:
    s = " / ".join(pct(v) for v in e.per_seed)
    return s if e.sd is None else f"{s} (sd {pct(e.sd)})"


def write_report(runs: list[dict], out_dir: Path, *, full_k: int, reference_weight: str, name: str,
                 world: str | None, resamples: int = 2000, confidence: float = 0.95, seed: int = 0,
                 wall_s: float | None = None, compute_s: float | None = None) -> Path:
    """report.md, report.csv, runs.csv and the plots under `out_dir`; returns `out_dir`."""
    if not runs:
        raise LipoError("compare: no runs to report")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    variants = load_variants(runs, reference_weight)
    ref_key = ("lambda", full_k, reference_weight)
    names = {k: f"{label(k, reference_weight)} K={k[1]}" for k in variants}
    notes: list[str] = []
    stats = compute_stats(variants, ref_key, (resamples, confidence, seed), notes, names)
    if ref_key not in variants:
        notes.append(f"No {PAPER_NAMES['lambda']} run at K={full_k} with weight {reference_weight}: no paired "
                     f"differences, head-to-heads or claims.")
    notes += [f"{names[k]}: no proxy (reward model) outcome." for k, v in variants.items() if v.proxy is None]
    parts = {"main": [k for k in variants if k[1] == full_k and (k[0] != "lambda" or k[2] == reference_weight)],
             "k": sorted({(k[0], k[2]) for k in variants if k[1] < full_k}),
             "weights": [k for k in variants if k[0] == "lambda" and k[1] == full_k]}
    md = _header(name, world, variants, confidence, wall_s, compute_s)
    md += _main(parts["main"], stats, variants, ref_key, reference_weight, confidence)
    md += _ablation_k(parts["k"], variants, stats, (resamples, confidence, seed), reference_weight)
    md += _ablation_weights(parts["weights"], stats, ref_key) if len(parts["weights"]) > 1 else []
    md += ["", "## Notes", ""] + [f"- {n}" for n in notes] if notes else []
    c = f"{100 * confidence:g}% CI"
    pngs = _plots(out_dir, parts, variants, stats, ref_key, reference_weight, c)
    md += ["", f"## Plots (every point with its {c})", ""] + [f"![{p[:-4]}]({p})" for p in pngs] if pngs else []
    (out_dir / "report.md").write_text("\n".join(md) + "\n")
    _write_csvs(out_dir, runs, variants, stats, reference_weight)
    return out_dir


def _header(name, world, variants, confidence, wall_s, compute_s) -> list[str]:
    any_v = next(iter(variants.values()))
    seeds = sorted({s for v in variants.values() for s in v.gold.seeds})
    c = f"{100 * confidence:g}%"
    lines = [f"# lipo compare: {name}" + (f" (world: {world})" if world else ""), "",
             f"{len(variants)} variants, training seeds {seeds}, {len(any_v.gold.ids)} evaluation prompts"
             + (f"; wall time {wall_s / 60:.1f} min" if wall_s is not None else "")
             + (f" (every stage's own time, also of stages an earlier invocation ran: {compute_s / 60:.1f} min)"
                if compute_s is not None else "") + ".", "",
             "**How to read this.** Win rates (%) are against the SFT policy's sample of the same prompt, judged by "
             "the proxy reward model or the gold reward (ties count half), averaged over prompts and training seeds. "
             f"Intervals are {c} percentile bootstraps that resample training seeds and prompts together. "
             "Every policy answers the same prompts against the same SFT samples, so a difference between two "
             "policies is bootstrapped in pairs (per seed and prompt), which cancels how hard each prompt is; "
             "it is much tighter than comparing two separate intervals. The head-to-head judges the reference's "
             "sample against the other policy's sample directly with the gold reward. A claim \"lambda beats X\" is "
             f"**reproduced** when the paired {c} interval of (lambda - X) lies above 0 (head-to-head: above 50%), "
             "**reversed** when it lies below, and **not distinguishable** otherwise; that last one means the "
             "difference is smaller than this comparison can resolve, not that there is none."]
    return lines


def _main(keys, stats, variants, ref_key, reference_weight, confidence) -> list[str]:
    lines = ["", f"## Objectives at K={ref_key[1]}", "",
             "| objective | proxy win rate | gold win rate | gold Δ vs lambda, paired | lambda vs it, head-to-head "
             "(gold) | gold win rate per seed |", "| --- | --- | --- | --- | --- | --- |"]
    for k in keys:
        st = stats[k]
        ref_row = k == ref_key
        lines.append(f"| {label(k, reference_weight)} | {ci(st.proxy)} | {ci(st.gold)} | "
                     f"{'reference' if ref_row else ci(st.d_gold, True)} | {'reference' if ref_row else ci(st.h2h)} "
                     f"| {per_seed(st.gold)} |")
    if ref_key not in stats:
        return lines
    others = [k for k in keys if k != ref_key]
    order = [k for o in CLAIMS for k in others if k[0] == o] + [k for k in others if k[0] not in CLAIMS]
    lines += ["", "## The paper's claims: lambda against each objective", ""]
    for k in order:
        st = stats[k]
        adv = flipped(st.d_gold)
        width = {n: f"{100 * (hi - lo):.1f}" for n, (lo, hi) in
                 (("paired", (adv.low, adv.high)), ("unpaired", st.unpaired), ("prompts only", st.prompts))}
        widths = "CI width, pts: " + ", ".join(f"{n} {w}" for n, w in width.items())
        lines.append(f"- lambda vs {CLAIMS.get(k[0], PAPER_NAMES.get(k[0], k[0]))}: gold Δ (lambda - it) "
                     f"{ci(adv, True)}: **{verdict(adv.low, adv.high)}** ({widths}); head-to-head {ci(st.h2h)}: "
                     f"**{verdict(st.h2h.low, st.h2h.high, 0.5)}**.")
    return lines


def _ablation_k(objs, variants, stats, boot, reference_weight) -> list[str]:
    if not objs:
        return []
    ks = sorted({k[1] for k in variants if (k[0], k[2]) in objs})
    lines = ["", "## List-size ablation (gold win rate, %)", "",
             "| objective | " + " | ".join(f"K={k}" for k in ks) + " | Δ largest - smallest K, paired | larger K "
             "helps |", "| --- |" + " --- |" * (len(ks) + 2)]
    for obj, w in objs:
        have = [k for k in ks if (obj, k, w) in variants]
        cells = [ci(stats[(obj, k, w)].gold) if (obj, k, w) in variants else "n/a" for k in ks]
        if len(have) < 2:
            lines.append(f"| {label((obj, 0, w), reference_weight)} | " + " | ".join(cells) + " | n/a | n/a |")
            continue
        big, small = variants[(obj, have[-1], w)], variants[(obj, have[0], w)]
        x, r, _ = common(big.gold, small.gold, f"{obj} K={have[-1]}", f"{obj} K={have[0]}")
        d = paired_difference(x, r, *boot)
        lines.append(f"| {label((obj, 0, w), reference_weight)} | " + " | ".join(cells) +
                     f" | {ci(d, True)} (K={have[-1]} - K={have[0]}) | {verdict(d.low, d.high)} |")
    return lines


def _ablation_weights(keys, stats, ref_key) -> list[str]:
    lines = ["", f"## Lambda-weight ablation (K={ref_key[1]})", "",
             "| weight | gold win rate | gold Δ vs the reference weight, paired | reference beats it |",
             "| --- | --- | --- | --- |"]
    for k in keys:
        st = stats[k]
        if k == ref_key:
            lines.append(f"| {k[2]} (reference) | {ci(st.gold)} | reference | |")
        else:
            adv = flipped(st.d_gold)
            lines.append(f"| {k[2]} | {ci(st.gold)} | {ci(st.d_gold, True)} | {verdict(adv.low, adv.high)} |")
    return lines


def _write_csvs(out_dir, runs, variants, stats, reference_weight) -> None:
    def cols(prefix: str, e: Estimate | None) -> dict:
        return {prefix: e and e.mean, f"{prefix}_low": e and e.low, f"{prefix}_high": e and e.high}

    rows = []
    for key, v in variants.items():
        st = stats[key]
        kls = [r["metrics"].get("eval/kl") for r in v.runs if r["metrics"].get("eval/kl") is not None]
        rows.append({"objective": key[0], "K": key[1], "weight": key[2], "label": label(key, reference_weight),
                     "seeds": len(v.gold.seeds), "n_prompts": len(v.gold.ids), **cols("proxy_win_rate", st.proxy),
                     **cols("gold_win_rate", st.gold), "gold_seed_sd": st.gold.sd,
                     "proxy_seed_sd": st.proxy and st.proxy.sd,
                     "gold_per_seed": " ".join(f"{x:.4f}" for x in st.gold.per_seed),
                     **cols("gold_delta", st.d_gold), "gold_delta_unpaired_low": st.unpaired and st.unpaired[0],
                     "gold_delta_unpaired_high": st.unpaired and st.unpaired[1],
                     "gold_delta_prompts_low": st.prompts and st.prompts[0],
                     "gold_delta_prompts_high": st.prompts and st.prompts[1], **cols("proxy_delta", st.d_proxy),
                     **cols("h2h_gold", st.h2h), "kl": sum(kls) / len(kls) if kls else None,
                     "wall_s": sum(r.get("wall_s") or 0.0 for r in v.runs)})
    _csv(out_dir / "report.csv", rows)
    _csv(out_dir / "runs.csv", [{**{f: r.get(f) for f in RUN_FIELDS}, **{m: r["metrics"].get(m) for m in KEY_METRICS}}
                                for r in runs])


def _csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _bars(ax, xs, es: list[Estimate], fmt: str = "o-", horizontal: bool = False, **kw) -> None:
    """Points with asymmetric CI error bars, in percent."""
    m = [100 * e.mean for e in es]
    err = [[100 * (e.mean - e.low) for e in es], [100 * (e.high - e.mean) for e in es]]
    if horizontal:
        ax.errorbar(m, xs, xerr=err, fmt=fmt, capsize=3, **kw)
    else:
        ax.errorbar(xs, m, yerr=err, fmt=fmt, capsize=3, **kw)


def _plots(out_dir, parts, variants, stats, ref_key, reference_weight, c: str) -> list[str]:
    """Render the plots whose part is present; returns their file names."""
    done = []
    if parts["k"]:
        ks = sorted({k[1] for k in variants if (k[0], k[2]) in parts["k"]})
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
        for ax, field, title in ((axes[0], "proxy", "proxy reward model"), (axes[1], "gold", "gold reward")):
            for i, (obj, w) in enumerate(parts["k"]):
                have = [k for k in ks if (obj, k, w) in variants and getattr(stats[(obj, k, w)], field)]
                dodge = 0.06 * (i - (len(parts["k"]) - 1) / 2)  # keep overlapping error bars apart
                if have:
                    _bars(ax, [ks.index(k) + dodge for k in have], [getattr(stats[(obj, k, w)], field) for k in have],
                          label=label((obj, 0, w), reference_weight))
            ax.axhline(50, color="grey", lw=0.8, ls="--")
            ax.set_xticks(range(len(ks)), [f"K={k}" for k in ks])
            ax.set_title(title)
        axes[0].set_ylabel(f"win rate vs SFT (%), {c}")
        axes[1].legend(fontsize=8)
        done.append(_save(fig, out_dir / "winrate_vs_k.png"))
    others = [k for k in parts["main"] if k != ref_key and stats[k].d_gold is not None]
    if others:
        fig, axes = plt.subplots(1, 2, figsize=(10, 0.45 * len(others) + 1.6), sharey=True)
        ys = list(range(len(others)))[::-1]
        _bars(axes[0], ys, [stats[k].d_gold for k in others], "o", horizontal=True)
        _bars(axes[1], ys, [stats[k].h2h for k in others], "o", horizontal=True, color="tab:green")
        axes[0].axvline(0, color="grey", lw=0.8, ls="--")
        axes[1].axvline(50, color="grey", lw=0.8, ls="--")
        axes[0].set_yticks(ys, [label(k, reference_weight) for k in others])
        axes[0].set_title("gold win rate: objective - lambda (pts, paired)", fontsize=9)
        axes[1].set_title("head-to-head: lambda's gold win rate vs it (%)", fontsize=9)
        done.append(_save(fig, out_dir / "delta_vs_lambda.png"))
    if len(parts["weights"]) > 1:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        ws = parts["weights"]
        _bars(axes[0], range(len(ws)), [stats[k].gold for k in ws], "o")
        axes[0].set_xticks(range(len(ws)), [k[2] for k in ws])
        axes[0].set_ylabel(f"gold win rate vs SFT (%), {c}")
        axes[0].set_title(f"lambda weights at K={ref_key[1]}", fontsize=9)
        diffs = [k for k in ws if stats[k].d_gold is not None]  # paired: the honest way to compare the weights
        if diffs:
            _bars(axes[1], range(len(diffs)), [stats[k].d_gold for k in diffs], "o", color="tab:purple")
            axes[1].axhline(0, color="grey", lw=0.8, ls="--")
            axes[1].set_xticks(range(len(diffs)), [k[2] for k in diffs])
        axes[1].set_title(f"gold: weight - {ref_key[2]} (pts, paired, {c})", fontsize=9)
        done.append(_save(fig, out_dir / "lambda_weights.png"))
    return done


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name
