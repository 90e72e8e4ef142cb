"""Token-budget batching (`lipo.training.plan`): the greedy cut, the plan's coverage and purity, `row_tokens`, the
config key; and `BatchPlan` pinned to its output from before token budgets existed."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from lipo.config import load_config
from lipo.errors import ConfigError
from lipo.training.config import TrainConfig
from lipo.training.plan import BatchPlan, TokenBudgetPlan, greedy_cut, row_tokens


def naive_cut(lengths: list[int], budget: int) -> list[int]:
    """The greedy cut as one loop over rows: the reference `greedy_cut` must match."""
    bounds, run = [0], 0
    for i, n in enumerate(lengths):
        if i > bounds[-1] and run + n > budget:
            bounds.append(i)
            run = 0
        run += n
    return bounds + [len(lengths)]


def test_greedy_cut_by_hand():
    # budget 8: [3 4] (+2 would be 9) | [2] (+9 would be 11) | [9] alone, over the budget | [1 1 6] exactly 8
    assert greedy_cut(np.array([3, 4, 2, 9, 1, 1, 6]), 8).tolist() == [0, 2, 3, 4, 7]
    # over-long rows back to back, then a run that starts with an empty row
    assert greedy_cut(np.array([5, 5, 6, 0, 1]), 5).tolist() == [0, 1, 2, 3, 5]
    assert greedy_cut(np.array([1]), 1).tolist() == [0, 1]


def test_greedy_cut_matches_the_row_loop():
    rng = np.random.default_rng(0)
    for _ in range(200):
        lengths = rng.integers(0, 30, rng.integers(1, 60))
        budget = int(rng.integers(1, 60))
        assert greedy_cut(lengths, budget).tolist() == naive_cut(lengths.tolist(), budget)


def micro_batches(plan: TokenBudgetPlan, epoch: int) -> list[list[int]]:
    """The epoch's micro-batches in plan order: number s*world*accum + micro*world + rank."""
    steps = range(epoch * plan.steps_per_epoch, (epoch + 1) * plan.steps_per_epoch)
    return [plan.indices(s, m, r) for s in steps for m in range(plan.accum) for r in range(plan.world)]


@pytest.mark.parametrize("world,accum,budget", [(1, 1, 50), (2, 3, 40), (3, 2, 7), (2, 2, 1000)])
def test_every_epoch_covers_each_row_once_within_budget(world, accum, budget):
    lengths = np.random.default_rng(1).integers(1, 20, 101)
    plan = TokenBudgetPlan(lengths, budget, world, accum, epochs=3, max_steps=None, seed=5)
    for epoch in range(3):
        batches = micro_batches(plan, epoch)
        assert len(batches) % (world * accum) == 0
        for b in batches:
            assert b and (lengths[b].sum() <= budget or len(b) == 1)
        runs = len(plan.runs(epoch)[1]) - 1
        once = [i for b in batches[:runs] for i in b]
        assert sorted(once) == list(range(len(lengths)))  # the epoch proper: every row exactly once
        assert batches[runs:] == (batches[:runs] * len(batches))[: len(batches) - runs]  # the fill wraps around
        for b, after in zip(batches[: runs - 1], batches[1:runs]):
            assert lengths[b + after[:1]].sum() > budget  # greedy: the next row would not have fitted
    assert micro_batches(plan, 0) != micro_batches(plan, 1)  # a new permutation each epoch


def test_two_plans_agree_in_any_query_order():
    lengths = np.random.default_rng(2).integers(1, 50, 300)
    a = TokenBudgetPlan(lengths, 120, 2, 2, epochs=3, max_steps=None, seed=11)
    b = TokenBudgetPlan(lengths.copy(), 120, 2, 2, epochs=3, max_steps=None, seed=11)
    keys = [(s, m, r) for s in range(a.total_steps) for m in range(2) for r in range(2)]
    forward = [a.indices(*k) for k in keys]
    backward = {k: b.indices(*k) for k in reversed(keys)}  # a resumed run jumps straight to any step
    assert forward == [backward[k] for k in keys]
    assert TokenBudgetPlan(lengths, 120, 2, 2, 3, None, seed=12).indices(0, 0, 0) != forward[0]


def test_steps_per_epoch_and_total_steps():
    plan = TokenBudgetPlan(np.ones(10, dtype=np.int64), 2, world=2, accum=1, epochs=3, max_steps=None, seed=0)
    assert (plan.steps_per_epoch, plan.total_steps) == (3, 9)  # 5 runs of 2 rows, 2 per step
    capped = TokenBudgetPlan(np.ones(10, dtype=np.int64), 2, world=2, accum=1, epochs=3, max_steps=4, seed=0)
    assert (capped.steps_per_epoch, capped.total_steps) == (3, 4)
    # Run counts differ between permutations: every epoch gets the most steps any of them needs.
    lengths = np.random.default_rng(3).integers(1, 30, 200)
    plan = TokenBudgetPlan(lengths, 45, world=2, accum=2, epochs=4, max_steps=None, seed=1)
    runs = [len(plan.runs(e)[1]) - 1 for e in range(4)]
    assert len(set(runs)) > 1 and plan.steps_per_epoch == max(-(-r // 4) for r in runs)
    assert plan.total_steps == 4 * plan.steps_per_epoch
    first = -(-runs[0] // 4)  # max_steps within the first epoch: only that epoch is looked at
    assert first < plan.steps_per_epoch
    one = TokenBudgetPlan(lengths, 45, world=2, accum=2, epochs=4, max_steps=first - 1, seed=1)
    assert (one.steps_per_epoch, one.total_steps) == (first, first - 1)


def test_row_tokens_by_hand():
    lists = pa.table({
        "id": ["a", "b", "c", "d"],
        "prompt_ids": pa.array([[1, 2, 3], [4], None, []], pa.list_(pa.int64())),
        "response_ids": pa.array([[[5, 6], [7]], [[8, 9, 10], None, []], [[11]], None],
                                 pa.list_(pa.list_(pa.int64()))),
        "keep": [[0, 1], [0, 1, 2], [0], []],  # response indices, not tokens
        "labels": [[1.0, 0.0], [2.0, 1.0, 0.0], [1.0], []],
        "ref_logps": pa.array([None] * 4, pa.list_(pa.float64())),
    })
    expected = [3 + 3, 1 + 3, 0 + 1, 0]
    assert row_tokens(lists).tolist() == expected and row_tokens(lists).dtype == np.int64
    chunked = pa.concat_tables([lists.slice(0, 1), lists.slice(1, 2), lists.slice(3)])  # rows span chunks
    assert chunked.column("response_ids").num_chunks == 3 and row_tokens(chunked).tolist() == expected
    pairs = pa.table({"pair_ids": [[[1, 2], [3, 4, 5]], [[6]]], "targets": [[1.0, 0.0], [1.0]]})  # reward model
    assert row_tokens(pairs).tolist() == [5, 1]


def test_row_tokens_of_a_memory_mapped_file(tmp_path):
    table = pa.table({"prompt_ids": pa.array([[1] * (i % 5) for i in range(50)], pa.list_(pa.int32())),
                      "response_ids": pa.array([[[2] * (i % 3), [3] * (i % 7)] for i in range(50)],
                                               pa.list_(pa.list_(pa.int32())))})  # int32 ids, as the cache writes
    with pa.OSFile(str(tmp_path / "rows.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table, max_chunksize=8)
    mapped = pa.ipc.open_file(pa.memory_map(str(tmp_path / "rows.arrow"), "r")).read_all()
    assert row_tokens(mapped).tolist() == [i % 5 + i % 3 + i % 7 for i in range(50)]


def test_row_tokens_needs_token_columns():
    with pytest.raises(ValueError, match="no token-id column"):
        row_tokens(pa.table({"labels": [[1.0]]}))
    with pytest.raises(TypeError, match="list of ints"):
        row_tokens(pa.table({"input_ids": ["not tokens"]}))


def test_config_key():
    base = ["data.train=[lists.jsonl]"]
    assert load_config(TrainConfig, None, base).optim.max_tokens_per_micro_batch is None
    assert load_config(TrainConfig, None, base + ["optim.max_tokens_per_micro_batch=4096"]) \
        .optim.max_tokens_per_micro_batch == 4096
    with pytest.raises(ConfigError, match="max_tokens_per_micro_batch"):
        load_config(TrainConfig, None, base + ["optim.max_tokens_per_micro_batch=0"])


def test_batch_plan_is_unchanged():
    """Without a token budget the plan is `BatchPlan`, whose output is pinned from before token budgets."""
    p = BatchPlan(7, 2, 2, 1, 2, None, 3)
    assert (p.steps_per_epoch, p.total_steps) == (2, 4)
    assert [[p.indices(s, 0, r) for r in range(2)] for s in range(4)] == [
        [[6, 2], [0, 3]], [[4, 1], [5, 6]], [[6, 3], [1, 4]], [[2, 0], [5, 6]]]
    p = BatchPlan(10, 1, 2, 2, 3, 5, 0)
    assert (p.steps_per_epoch, p.total_steps) == (3, 5)
    assert [[p.indices(s, m, r) for m in range(2) for r in range(2)] for s in range(5)] == [
        [[4], [1], [7], [5]], [[3], [9], [0], [8]], [[6], [2], [4], [1]], [[5], [6], [1], [2]], [[0], [8], [9], [3]]]
