"""The comparison report: a table like the LiPO paper's Table 1, the list-size ablation, a CSV and a plot."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402

PAPER_NAMES = {"point_mse": "point-mse", "point_sigmoid": "point-sigmoid", "softmax": "softmax",
               "pair_hinge": "pair-hinge", "pair_logistic": "pair-logistic", "list_mle": "list-mle",
               "lambda": "lambda (LiPO)"}


def _cell(row: dict, prefix: str) -> str:
    rate = row.get(f"eval/{prefix}win_rate")
    if rate is None:
        return "n/a"
    lo, hi = row[f"eval/{prefix}win_rate_ci_low"], row[f"eval/{prefix}win_rate_ci_high"]
    return f"{100 * rate:.1f} ({100 * lo:.1f}-{100 * hi:.1f})"


def write_report(rows: list[dict], out_dir: Path, full_k: int, name: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "report.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    main = [r for r in rows if r["K"] == full_k]
    lines = [f"# lipo compare: {name}", "",
             f"Win rate (%) of each objective's policy against the SFT policy, with 95% bootstrap CIs, on the same "
             f"lists (K={full_k}), same budget and seeds.", "",
             "| objective | proxy reward model win rate | gold reward win rate |", "| --- | --- | --- |"]
    lines += [f"| {PAPER_NAMES.get(r['objective'], r['objective'])} | {_cell(r, '')} | {_cell(r, 'fn_')} |"
              for r in main]
    ks = sorted({r["K"] for r in rows})
    ablation = sorted({r["objective"] for r in rows if r["K"] != full_k})
    if ablation:
        lines += ["", "## List-size ablation (proxy / gold win rate, %)", "",
                  "| objective | " + " | ".join(f"K={k}" for k in ks) + " |", "| --- |" + " --- |" * len(ks)]
        for obj in ablation:
            cells = []
            for k in ks:
                r = next((x for x in rows if x["objective"] == obj and x["K"] == k), None)
                cells.append("n/a" if r is None else f"{100 * (r['eval/win_rate'] or 0):.1f} / "
                             f"{100 * (r['eval/fn_win_rate'] or 0):.1f}")
            lines.append(f"| {PAPER_NAMES.get(obj, obj)} | " + " | ".join(cells) + " |")
        _plot(rows, ablation, ks, out_dir / "winrate_vs_k.png")
        lines += ["", "![win rate against K](winrate_vs_k.png)"]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    return out_dir


def _plot(rows: list[dict], objectives: list[str], ks: list[int], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for ax, prefix, title in ((axes[0], "", "proxy reward model"), (axes[1], "fn_", "gold reward")):
        for obj in objectives:
            pts = sorted((r["K"], r[f"eval/{prefix}win_rate"]) for r in rows
                         if r["objective"] == obj and r.get(f"eval/{prefix}win_rate") is not None)
            if pts:
                ax.plot([k for k, _ in pts], [v for _, v in pts], marker="o", label=PAPER_NAMES.get(obj, obj))
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_xticks(ks)
        ax.set_xlabel("list size K")
        ax.set_title(title)
    axes[0].set_ylabel("win rate vs SFT")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
