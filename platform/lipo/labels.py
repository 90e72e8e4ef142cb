"""Scores -> labels psi in [0, 1], one list at a time (LiPO's relevance labels; higher is better).

Each labeler is a pure function of one list's scores (and of its own parameters, if any), named in `LABELERS`:

- `minmax`:   psi_k = (s_k - min s) / (max s - min s); a list whose scores are all equal gets 0.5 everywhere.
- `rank`:     psi_k = (K - r_k) / (K - 1), r_k the 1-based rank of s_k (1 = highest score), tied scores sharing the
              mean of their ranks. The best response gets 1, the worst 0, the rest evenly spaced; for K = 2 this is
              DPO's chosen = 1 / rejected = 0. LiPO (arXiv 2402.01878) builds lists from *ranked* responses, and its
              objectives use the labels only through their order and the gains G = 2^psi - 1; linear-in-rank labels
              are the plain reading of "labels from ranks" (we could not check the paper's exact wording offline, so
              this definition is ours and stated here).
- `sigmoid`:  psi_k = sigmoid(s_k / T), T = `temperature` (build-lists: `label.temperature`): keeps absolute reward
              levels across lists.
- `winrate`:  the pairwise scorer's output, already psi_k = (1/K) sum_i P(y_k beats y_i) with P(y_k, y_k) = 0.5
              (LiPO, section 4); passed through.
- `identity`: scores already in [0, 1] (e.g. existing labels), passed through; anything outside is an error.

    rank([3.0, 1.0, 2.0])                       # [1.0, 0.0, 0.5]
    label = labeler("sigmoid", temperature=2.0)  # resolved once; then label(scores) per list
    label([0.0, 2.0])                            # [0.5, 0.731...]

`labeler` also rejects non-finite scores. A labeler raises `LabelError` for a list it cannot label; build-lists
(`lipo.lists.stages.ScoreStage`) drops that list and counts the reason; `lipo.data.importers` uses `minmax` and
`rank` directly. This module imports nothing from lipo, so any layer may use it. Tests: tests/lipo/test_labels.py.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Literal

LabelName = Literal["minmax", "rank", "sigmoid", "winrate", "identity"]
Labeler = Callable[[Sequence[float]], list[float]]


class LabelError(ValueError):
    """A list that cannot be labelled; the message is the (short, countable) drop reason."""


def minmax(scores: Sequence[float]) -> list[float]:
    lo, hi = min(scores), max(scores)
    if hi == lo:
        return [0.5] * len(scores)  # no preference in this list: every pair is a tie
    return [(s - lo) / (hi - lo) for s in scores]


def rank(scores: Sequence[float]) -> list[float]:
    k = len(scores)
    order = sorted(range(k), key=lambda i: -scores[i])
    ranks = [0.0] * k
    i = 0
    while i < k:  # walk runs of tied scores; each member gets the mean of the run's 1-based ranks
        j = i
        while j + 1 < k and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for m in range(i, j + 1):
            ranks[order[m]] = (i + j) / 2 + 1
        i = j + 1
    return [(k - r) / (k - 1) for r in ranks]


def sigmoid(scores: Sequence[float], temperature: float = 1.0) -> list[float]:
    out = []
    for s in scores:
        z = s / temperature
        # the two branches avoid overflow of exp() for large |z|
        out.append(1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z)))
    return out


def identity(scores: Sequence[float]) -> list[float]:
    if any(not 0.0 <= s <= 1.0 for s in scores):
        raise LabelError("label: score outside [0, 1] for identity labels")
    return [float(s) for s in scores]


def winrate(scores: Sequence[float]) -> list[float]:
    # win rates are means of probabilities; clamp float rounding (1 + 1e-7), reject anything else
    if any(not -1e-6 <= s <= 1 + 1e-6 for s in scores):
        raise LabelError("label: win rate outside [0, 1]")
    return [min(1.0, max(0.0, float(s))) for s in scores]


LABELERS: dict[LabelName, Callable[..., list[float]]] = {
    "minmax": minmax,
    "rank": rank,
    "sigmoid": sigmoid,
    "winrate": winrate,
    "identity": identity,
}


def labeler(method: LabelName, temperature: float = 1.0) -> Labeler:
    """The labeler `method` names with its parameters bound: `scores -> labels`, raising `LabelError` for
    non-finite scores or scores the labeler rejects. Resolve it once, call it per list."""
    if method not in LABELERS:
        raise ValueError(f"unknown label method {method!r} (choose from {', '.join(LABELERS)})")
    if not temperature > 0:
        raise ValueError(f"label temperature must be > 0, got {temperature}")
    fn = functools.partial(sigmoid, temperature=temperature) if method == "sigmoid" else LABELERS[method]

    def label(scores: Sequence[float]) -> list[float]:
        if not all(math.isfinite(s) for s in scores):
            raise LabelError("score: non-finite score")
        return fn(scores)

    return label
