"""Which lists each worker sees at each step: a pure function of (seed, epoch, step, micro-step, rank).

Every worker sees the whole tokenised list dataset (memory-mapped, `lipo.training.token_cache`) and reads only its
slice of a seeded permutation, like torch's DistributedSampler. The batch at any step is therefore known without replaying the data stream, which is
what makes a resumed run bit-for-bit equal to an uninterrupted one. The last step of an epoch is filled by wrapping
around to the start of the same permutation, so no list is skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass
class BatchPlan:
    n: int  # lists in the dataset
    micro: int  # lists per worker per forward pass
    world: int
    accum: int
    epochs: int
    max_steps: int | None
    seed: int
    _orders: dict[int, list[int]] = field(default_factory=dict, repr=False)

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

    def order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
            need = self.steps_per_epoch * self.global_batch
            self._orders = {epoch: (perm * math.ceil(need / self.n))[:need]}
        return self._orders[epoch]

    def indices(self, step: int, micro_step: int, rank: int) -> list[int]:
        """Dataset indices for optimizer step `step`, accumulation micro-step `micro_step`, worker `rank`."""
        epoch, s = divmod(step, self.steps_per_epoch)
        base = s * self.global_batch + micro_step * self.micro * self.world + rank * self.micro
        return self.order(epoch)[base : base + self.micro]
