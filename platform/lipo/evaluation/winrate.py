"""Win rate and its bootstrap confidence interval: pure functions of per-prompt numbers (numpy only).

The paper judges a policy by its win rate against the SFT policy, as judged by a reward model: per prompt, one
policy sample y_a and one baseline sample y_b; the policy wins when the judge prefers y_a. Ties count half:

    outcome = 1      if judge(y_a) > judge(y_b)                  (pointwise: r_a > r_b; pairwise: P(a > b) > 0.5)
              0.5    if they tie (within tie_eps)
              0      otherwise
    win rate = mean over prompts of outcome

    wr = win_rate(outcomes_from_rewards(r_a, r_b), resamples=1000, confidence=0.95, seed=0)
    wr.rate, wr.low, wr.high

The interval is a percentile bootstrap over prompts: resample the n prompts with replacement `resamples` times
(seeded), take the win rate of each resample, and report the (1-c)/2 and (1+c)/2 quantiles.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from lipo.errors import LipoError


def outcomes_from_rewards(a, b, tie_eps: float = 0.0) -> np.ndarray:
    """[N] 1 / 0.5 / 0: does reward a beat reward b (pointwise judge)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return np.where(d > tie_eps, 1.0, np.where(d < -tie_eps, 0.0, 0.5))


def outcomes_from_probs(p, tie_eps: float = 0.0) -> np.ndarray:
    """[N] 1 / 0.5 / 0 from P(a beats b) (pairwise judge): a win when P > 0.5."""
    return outcomes_from_rewards(p, np.full(np.shape(p), 0.5), tie_eps)


def bootstrap_means(values, resamples: int, seed: int, chunk: int = 256) -> np.ndarray:
    """[resamples] means of `values` resampled with replacement; the same seed gives the same draws."""
    return bootstrap_grid_means(np.asarray(values, dtype=np.float64).reshape(1, -1), resamples, seed, chunk)


def bootstrap_grid_means(values, resamples: int, seed: int, chunk: int = 256) -> np.ndarray:
    """[resamples] means of a [S, N] grid (training seeds x prompts) under a two-level bootstrap.

    Each resample draws S row (seed) indices and N column (prompt) indices with replacement, uses the same prompt
    indices for every drawn seed (the prompts are shared by all seeds), and takes the mean of the S x N cells.
    The prompt draws come from default_rng(seed) exactly as for a 1-D bootstrap and the seed draws from a separate
    stream, so with S == 1 this is the prompt bootstrap of `bootstrap_means`, number for number.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2 or x.size == 0:
        raise LipoError("cannot bootstrap an empty set of prompts")
    s, n = x.shape
    rng, seed_rng = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    out = []
    for start in range(0, resamples, chunk):  # chunks bound memory at chunk * S * n cells
        c = min(chunk, resamples - start)
        p_idx = rng.integers(0, n, size=(c, n))  # [c, N]
        s_idx = seed_rng.integers(0, s, size=(c, s)) if s > 1 else np.zeros((c, 1), dtype=np.int64)  # [c, S]
        # mean over prompts, then over seeds: rows have equal N, so this is the grid mean
        out.append(x[s_idx[:, :, None], p_idx[:, None, :]].mean(axis=2).mean(axis=1))
    return np.concatenate(out)


def percentile_interval(stats, confidence: float) -> tuple[float, float]:
    """The ((1-c)/2, (1+c)/2) quantiles of `stats`, linearly interpolated (numpy's default)."""
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(np.asarray(stats, dtype=np.float64), [alpha, 1.0 - alpha])
    return float(lo), float(hi)


@dataclass(frozen=True)
class WinRate:
    rate: float
    low: float
    high: float
    n: int
    wins: int
    ties: int
    losses: int

    def as_metrics(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}win_rate": self.rate, f"{prefix}win_rate_ci_low": self.low,
                f"{prefix}win_rate_ci_high": self.high, f"{prefix}wins": float(self.wins),
                f"{prefix}ties": float(self.ties), f"{prefix}losses": float(self.losses)}


def win_rate(outcomes, resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> WinRate:
    """Mean outcome with its percentile-bootstrap interval over prompts."""
    o = np.asarray(outcomes, dtype=np.float64)
    lo, hi = percentile_interval(bootstrap_means(o, resamples, seed), confidence)
    return WinRate(rate=float(o.mean()), low=lo, high=hi, n=int(o.size), wins=int((o == 1.0).sum()),
                   ties=int((o == 0.5).sum()), losses=int((o == 0.0).sum()))


def load_judge(spec: str) -> Callable:
    """`package.module:function` -> the function, called as f(prompt, response) -> float."""
    module_name, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise LipoError(f"judge.function: cannot import '{spec}' ({exc})") from None
    if not callable(fn):
        raise LipoError(f"judge.function: '{spec}' is not callable")
    return fn


def response_length(prompt, response: str) -> float:
    """A judge biased by construction: longer is better. Useful to check that a judge's bias shows up."""
    return float(len(response))
