"""Mergeable summary statistics: each shard summarises its own values, the driver merges the summaries.

    part = partial([0.1, 0.9, 0.5])          # in the shard writer: a small JSON-able dict
    stats = describe(merge([part, ...]))     # on the driver: count, mean, std, min, p05, p50, p95, max

count, sum, sum of squares, min and max merge exactly (mean and std are computed from them, so they can differ
from a two-pass computation in the last bits). The quantiles come from a bounded sample: a shard keeps all of its
values when it has at most `SAMPLE_SIZE` of them, else `SAMPLE_SIZE` evenly spaced order statistics, each standing
for count/SAMPLE_SIZE values. When every shard kept all its values (shard_size x candidates <= SAMPLE_SIZE, true of
the quickstart and the tests) the quantiles are exact (numpy's linear interpolation); otherwise they are weighted
quantiles of the samples. The driver's merged sample is compacted the same way past `MERGED_SIZE` values, so its
memory stays bounded whatever the number of shards.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

SAMPLE_SIZE = 256  # values kept per shard and statistic
MERGED_SIZE = 1 << 20  # values the driver keeps per statistic before compacting
_Q = (0.05, 0.5, 0.95)


def _weighted_quantiles(values: np.ndarray, weights: np.ndarray, qs: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    v, w = values[order], weights[order]
    mid = np.cumsum(w) - w / 2  # each value sits at the middle of its weight
    return np.interp(qs * w.sum(), mid, v)


def _weighted_points(values: np.ndarray, weights: np.ndarray, m: int) -> np.ndarray:
    """m evenly spaced weighted quantiles of (values, weights): the compaction of a large sample."""
    return _weighted_quantiles(values, weights, (np.arange(m) + 0.5) / m)


def partial(values: Sequence[float]) -> dict[str, Any]:
    """One shard's summary of `values` (JSON-able, a few KB at most)."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {"count": 0}
    sample = a if a.size <= SAMPLE_SIZE else _weighted_points(a, np.ones_like(a), SAMPLE_SIZE)
    return {"count": int(a.size), "sum": float(a.sum()), "sumsq": float((a * a).sum()), "min": float(a.min()),
            "max": float(a.max()), "sample": sorted(float(x) for x in sample)}


class Merged:
    """The running merge of partials: exact moments, and a weighted sample compacted past MERGED_SIZE values."""

    def __init__(self):
        self.count, self.sum, self.sumsq = 0, 0.0, 0.0
        self.min, self.max = float("inf"), float("-inf")
        self.exact = True
        self.values: list[np.ndarray] = []
        self.weights: list[np.ndarray] = []
        self.held = 0

    def add(self, p: dict[str, Any]) -> None:
        if not p["count"]:
            return
        self.count += p["count"]
        self.sum += p["sum"]
        self.sumsq += p["sumsq"]
        self.min, self.max = min(self.min, p["min"]), max(self.max, p["max"])
        s = np.asarray(p["sample"], dtype=np.float64)
        self.exact &= s.size == p["count"]
        self.values.append(s)
        self.weights.append(np.full(s.size, p["count"] / s.size))
        self.held += s.size
        if self.held > MERGED_SIZE:
            v, w, half = np.concatenate(self.values), np.concatenate(self.weights), MERGED_SIZE // 2
            self.values, self.weights = [_weighted_points(v, w, half)], [np.full(half, w.sum() / half)]
            self.held, self.exact = half, False

    def quantiles(self) -> list[float]:
        v, w = np.concatenate(self.values), np.concatenate(self.weights)
        q = np.quantile(v, _Q) if self.exact else _weighted_quantiles(v, w, np.asarray(_Q))
        return [float(x) for x in q]


def merge(partials: Iterable[dict[str, Any]]) -> Merged:
    m = Merged()
    for p in partials:
        m.add(p)
    return m


def describe(m: Merged) -> dict[str, float]:
    """Summary statistics for the manifest and MLflow (no values gives count 0 only)."""
    if not m.count:
        return {"count": 0}
    mean = m.sum / m.count
    q = m.quantiles()
    return {"count": m.count, "mean": mean, "std": float(np.sqrt(max(m.sumsq / m.count - mean * mean, 0.0))),
            "min": m.min, "p05": q[0], "p50": q[1], "p95": q[2], "max": m.max}
