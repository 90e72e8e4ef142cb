"""Paired statistics for comparing policies evaluated on the same prompts, over several training seeds (numpy only).

Every policy of a comparison is evaluated on the same N prompts against the same SFT samples, and every training
seed s trains every variant on the same lists, so a per-prompt value is a cell of a [S, N] grid x[s, p]
(seeds sorted, prompts in one shared order) and two variants can be compared cell by cell:

    win rate vs SFT       mean_{s,p} x[s, p]                 x = outcome (proxy) or fn_outcome (gold), 1 / 0.5 / 0
    paired difference     mean_{s,p} (x[s, p] - ref[s, p])   the prompt's difficulty cancels in each cell
    head-to-head          mean_{s,p} h[s, p],  h = 1 / 0.5 / 0 as ref's gold score beats / ties / loses to x's

Intervals are a two-level percentile bootstrap (`winrate.bootstrap_grid_means`): each resample draws S seeds and
N prompts with replacement, the same prompt draws for every drawn seed, and takes the grid mean; the interval is
the (1-c)/2, (1+c)/2 quantiles. A paired difference bootstraps the difference grid, i.e. both variants see the same
draws, which is why it is much tighter than two independent intervals when the variants agree on which prompts are
hard (`unpaired_difference` gives the independent version for comparison). With S == 1 the interval is exactly
`winrate.win_rate`'s prompt bootstrap. With few seeds (3) the seed level of the bootstrap is coarse: the interval
then mostly reflects prompt noise plus the spread of the few seeds; the per-seed values and their sd are reported
beside it.

    a = align({0: {"p1": 1.0, "p2": 0.5}, 1: {...}}, "lambda K=8")      # Aligned(seeds, ids, values [S, N])
    est = estimate(a.values, resamples=2000, confidence=0.95, seed=0)   # Estimate(mean, low, high, per_seed, sd)
    d = paired_difference(x.values, ref.values, 2000, 0.95, 0)          # x - ref
    verdict(-d.high, -d.low)                                            # "reference beats x": reproduced / ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from lipo.errors import LipoError
from lipo.evaluation.winrate import bootstrap_grid_means, outcomes_from_rewards, percentile_interval

REPRODUCED, REVERSED, UNDECIDED = "reproduced", "reversed", "not distinguishable"


@dataclass(frozen=True)
class Aligned:
    """Per-prompt values of one variant: values[s, p] for seeds[s] and ids[p]."""
    seeds: tuple[int, ...]
    ids: tuple[str, ...]
    values: np.ndarray  # [S, N]


@dataclass(frozen=True)
class Estimate:
    """A grid mean with its two-level bootstrap interval, and the per-seed means with their sd (None if S == 1)."""
    mean: float
    low: float
    high: float
    per_seed: tuple[float, ...]
    sd: float | None

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0.0 or self.high < 0.0


def align(per_seed: Mapping[int, Mapping[str, float]], variant: str, ids: Sequence[str] | None = None) -> Aligned:
    """{seed: {prompt id: value}} -> Aligned, prompts in the order `ids` (default: the first seed's order).

    Refuses (LipoError naming the variant, seed and id) when a seed lacks a prompt or has one the others lack.
    """
    if not per_seed:
        raise LipoError(f"{variant}: no evaluated seeds")
    seeds = tuple(sorted(per_seed))
    order = tuple(ids) if ids is not None else tuple(per_seed[seeds[0]])
    want = set(order)
    for s in seeds:
        got = per_seed[s]
        missing = next((i for i in order if i not in got), None)
        if missing is not None:
            raise LipoError(f"{variant}: seed {s} has no outcome for prompt '{missing}'; every seed and variant "
                            f"must be evaluated on the same prompts")
        extra = next((i for i in got if i not in want), None)
        if extra is not None:
            raise LipoError(f"{variant}: seed {s} has prompt '{extra}' that the other evaluations lack; every seed "
                            f"and variant must be evaluated on the same prompts")
    return Aligned(seeds, order, np.array([[per_seed[s][i] for i in order] for s in seeds], dtype=np.float64))


def common(x: Aligned, ref: Aligned, x_name: str, ref_name: str) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """x's and ref's grids on their common seeds, x's prompts in ref's order: ([S, N], [S, N], seeds).

    Refuses when the prompt ids differ (naming the variant and the id) or when no seed is shared.
    """
    if set(x.ids) != set(ref.ids):
        missing = next((i for i in ref.ids if i not in set(x.ids)), None)
        who, pid = (x_name, missing) if missing is not None else (
            ref_name, next(i for i in x.ids if i not in set(ref.ids)))
        raise LipoError(f"{who}: has no outcome for prompt '{pid}' that {ref_name if who == x_name else x_name} "
                        f"has; paired comparisons need the same prompts")
    seeds = tuple(s for s in ref.seeds if s in x.seeds)
    if not seeds:
        raise LipoError(f"{x_name}: no training seed in common with {ref_name} (seeds {list(x.seeds)} vs "
                        f"{list(ref.seeds)})")
    col = {pid: j for j, pid in enumerate(x.ids)}
    xv = x.values[[x.seeds.index(s) for s in seeds]][:, [col[i] for i in ref.ids]]  # [S, N] in ref's order
    return xv, ref.values[[ref.seeds.index(s) for s in seeds]], seeds


def estimate(values, resamples: int, confidence: float, seed: int) -> Estimate:
    """Grid mean of [S, N] `values`, its two-level percentile interval, per-seed means and their sd (ddof 1)."""
    x = np.asarray(values, dtype=np.float64)
    lo, hi = percentile_interval(bootstrap_grid_means(x, resamples, seed), confidence)
    per_seed = x.mean(axis=1)  # [S]
    sd = float(per_seed.std(ddof=1)) if per_seed.size > 1 else None
    return Estimate(float(x.mean()), lo, hi, tuple(float(v) for v in per_seed), sd)


def paired_difference(x, ref, resamples: int, confidence: float, seed: int) -> Estimate:
    """x - ref cell by cell ([S, N] each, same seeds and prompts), bootstrapped with shared draws."""
    return estimate(np.asarray(x, dtype=np.float64) - np.asarray(ref, dtype=np.float64), resamples, confidence, seed)


def unpaired_difference(x, ref, resamples: int, confidence: float, seed: int) -> tuple[float, float]:
    """The interval of mean(x) - mean(ref) bootstrapping each independently: what comparing two separate
    intervals amounts to. Reported only to show what the pairing gains."""
    a = bootstrap_grid_means(x, resamples, seed)
    b = bootstrap_grid_means(ref, resamples, seed + 1)  # independent draws
    return percentile_interval(a - b, confidence)


def prompt_interval(values, resamples: int, confidence: float, seed: int) -> tuple[float, float]:
    """The interval of a [S, N] grid's mean resampling prompts only (the seeds held fixed: per-prompt means over
    seeds, then the prompt bootstrap). Narrower than the two-level one by the seed-to-seed spread; it answers "on
    these trained policies" rather than "on another training run"."""
    x = np.asarray(values, dtype=np.float64)
    return percentile_interval(bootstrap_grid_means(x.mean(axis=0, keepdims=True), resamples, seed), confidence)


def head_to_head(ref_score, x_score, resamples: int, confidence: float, seed: int) -> Estimate:
    """ref's win rate against x, per (seed, prompt) judged by the gold scores of their samples (ties count half)."""
    r = np.asarray(ref_score, dtype=np.float64)
    h = outcomes_from_rewards(r.ravel(), np.asarray(x_score, dtype=np.float64).ravel()).reshape(r.shape)  # [S, N]
    return estimate(h, resamples, confidence, seed)


def verdict(low: float, high: float, null: float = 0.0) -> str:
    """For a claim "the reference beats X", given the CI of the reference's advantage (ref - X, null 0; or ref's
    head-to-head win rate, null 0.5): reproduced if the CI lies above the null, reversed if below, else not
    distinguishable. A CI touching the null is not distinguishable."""
    if low > null:
        return REPRODUCED
    if high < null:
        return REVERSED
    return UNDECIDED
