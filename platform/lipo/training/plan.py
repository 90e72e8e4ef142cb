"""Which lists each worker sees at each step: a pure function of (seed, epoch, step, micro-step, rank).

Every worker sees the whole tokenised list dataset (memory-mapped, `lipo.training.token_cache`) and reads only its
slice of a seeded permutation, like torch's DistributedSampler. The batch at any step is therefore known without
replaying the data stream, which is what makes a resumed run bit-for-bit equal to an uninterrupted one. Two plans
answer the same `steps_per_epoch`, `total_steps` and `indices(step, micro_step, rank)`:

- `BatchPlan` (`optim.micro_batch_size`): `micro` lists per worker per forward pass.
- `TokenBudgetPlan` (`optim.max_tokens_per_micro_batch`): the permutation is cut greedily, in order, into runs of
  at most `max_tokens` tokens each (`row_tokens`; a longer list is a run of its own); step s, micro-step m, rank r
  takes run `s * world * accum + m * world + r` of the epoch.

Either way the last step of an epoch is filled by wrapping around to the start of the same epoch, so no list is
skipped. Tests: `python -m pytest -q tests/lipo/training/test_token_budget.py`.

    plan = TokenBudgetPlan(row_tokens(rows.table), 4096, world=2, accum=4, epochs=1, max_steps=None, seed=0)
    items = rows.take(plan.indices(step, micro_step, rank))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch


def permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """[n] the epoch's seeded order of the dataset's rows (the same for every worker)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


@dataclass
class BatchPlan:
    n: int  # lists in the dataset
    micro: int  # lists per worker per forward pass
    world: int
    accum: int
    epochs: int
    max_steps: int | None
    seed: int
    _orders: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def global_batch(self) -> int:
        return self.micro * self.world * self.accum

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n / self.global_batch)

    @property
    def total_steps(self) -> int:
        total = self.steps_per_epoch * self.epochs
        return min(total, self.max_steps) if self.max_steps else total

    def order(self, epoch: int) -> np.ndarray:
        """[steps_per_epoch * global_batch] the epoch's permutation, wrapped around to fill the last step (a numpy
        array: 8 bytes a list, where a Python list of ints would take about 36)."""
        if epoch not in self._orders:
            perm = permutation(self.n, self.seed, epoch).numpy()
            self._orders = {epoch: np.resize(perm, self.steps_per_epoch * self.global_batch)}
        return self._orders[epoch]

    def indices(self, step: int, micro_step: int, rank: int) -> list[int]:
        """Dataset indices for optimizer step `step`, accumulation micro-step `micro_step`, worker `rank`."""
        epoch, s = divmod(step, self.steps_per_epoch)
        base = s * self.global_batch + micro_step * self.micro * self.world + rank * self.micro
        return self.order(epoch)[base : base + self.micro].tolist()


def row_tokens(table: pa.Table) -> np.ndarray:
    """[rows] int64: the token ids each row stores, summed over its token-id columns; a null counts 0.

    Token-id columns are the ones named `*_ids`: `prompt_ids` list<int> and `response_ids` list<list<int>> (LiPO
    and SFT rows), `text_ids` or `pair_ids` list<list<int>> (reward-model rows). The name decides, not the type:
    `keep` is also a list<int> but holds response indices. The prompt counts once per list, as in a packed batch.
    Only the list offsets are read (never the token values), with pyarrow compute over whole columns."""
    names = [name for name in table.column_names if name.endswith("_ids")]
    if not names:
        raise ValueError(f"no token-id column (*_ids) among {table.column_names}")
    total = np.zeros(table.num_rows, dtype=np.int64)
    for name in names:
        total += _list_sizes(table[name])
    return total


def _list_sizes(col: pa.ChunkedArray) -> np.ndarray:
    """[len(col)] int64 number of leaf values in each row of a list<int> or list<list<int>> column."""
    if not isinstance(col.type, (pa.ListType, pa.LargeListType)):
        raise TypeError(f"a token-id column must be a list of ints (or of lists of ints), not {col.type}")
    if not isinstance(col.type.value_type, (pa.ListType, pa.LargeListType)):
        return pc.list_value_length(col).fill_null(0).to_numpy().astype(np.int64)
    inner = _list_sizes(pc.list_flatten(col))  # [inner lists] their sizes; a null row has none
    parent = pc.list_parent_indices(col).to_numpy()  # [inner lists] the row each belongs to
    return np.bincount(parent, weights=inner, minlength=len(col)).astype(np.int64)  # float64: exact below 2^53


def greedy_cut(lengths: np.ndarray, budget: int) -> np.ndarray:
    """[runs + 1] bounds of the greedy in-order cut of `lengths` [n] (tokens) into runs of at most `budget` tokens;
    run j is rows bounds[j]:bounds[j + 1], and a row longer than the budget is a run of its own."""
    n = len(lengths)
    end = np.cumsum(lengths, dtype=np.int64)  # [n] tokens up to and including row i
    nxt = np.searchsorted(end, end - lengths + budget, side="right")  # [n] first row past a run that starts at i
    nxt = np.append(np.maximum(nxt, np.arange(1, n + 1)), n)  # [n + 1] at least one row per run; n is the end
    # The runs start at 0, nxt[0], nxt[nxt[0]], ... up to n. Pointer doubling walks this path in log2(runs)
    # vectorised rounds: before round r, `on` marks its first 2^r starts and jump = nxt applied 2^r times.
    on = np.zeros(n + 1, dtype=bool)  # [n + 1]
    on[0], jump = True, nxt
    while not on[n]:
        on[jump[on]] = True
        jump = jump[jump]
    return np.flatnonzero(on)


@dataclass
class TokenBudgetPlan:
    lengths: np.ndarray  # [n] int64 tokens of each list (`row_tokens`)
    max_tokens: int  # token budget of one micro-batch on one worker
    world: int
    accum: int
    epochs: int
    max_steps: int | None
    seed: int
    steps_per_epoch: int = field(init=False)
    _runs: tuple[int, np.ndarray, np.ndarray] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        # The number of runs depends on the epoch's permutation: every epoch gets the most steps any epoch that
        # will run needs (the epochs `max_steps` reaches, else all), and wraps around to fill the rest.
        self.steps_per_epoch = 0
        for epoch in range(self.epochs):
            runs = len(self.runs(epoch)[1]) - 1
            self.steps_per_epoch = max(self.steps_per_epoch, math.ceil(runs / (self.world * self.accum)))
            if self.max_steps and (epoch + 1) * self.steps_per_epoch >= self.max_steps:
                break

    @property
    def total_steps(self) -> int:
        total = self.steps_per_epoch * self.epochs
        return min(total, self.max_steps) if self.max_steps else total

    def runs(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(order [n] row ids, bounds [runs + 1]) of `epoch`: run j is order[bounds[j]:bounds[j + 1]]. Only the
        latest epoch is kept."""
        if self._runs is None or self._runs[0] != epoch:
            order = permutation(len(self.lengths), self.seed, epoch).numpy()
            self._runs = (epoch, order, greedy_cut(self.lengths[order], self.max_tokens))
        return self._runs[1], self._runs[2]

    def indices(self, step: int, micro_step: int, rank: int) -> list[int]:
        """Dataset indices for optimizer step `step`, accumulation micro-step `micro_step`, worker `rank`."""
        epoch, s = divmod(step, self.steps_per_epoch)
        order, bounds = self.runs(epoch)
        j = (s * self.world * self.accum + micro_step * self.world + rank) % (len(bounds) - 1)  # wraps around
        return order[bounds[j] : bounds[j + 1]].tolist()
