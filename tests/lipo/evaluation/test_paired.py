"""Paired two-level bootstrap statistics: hand-computed values, exact bootstrap distributions, parity with win_rate."""

from __future__ import annotations

import numpy as np
import pytest

from lipo.errors import LipoError
from lipo.evaluation.paired import (align, common, estimate, head_to_head, paired_difference, prompt_interval,
                                    unpaired_difference, verdict)
from lipo.evaluation.winrate import bootstrap_grid_means, bootstrap_means, win_rate


def test_one_seed_is_exactly_the_prompt_bootstrap_of_win_rate():
    """S == 1: the same seed draws the same prompt indices as winrate.bootstrap_means, so the numbers are equal."""
    o = np.random.default_rng(0).choice([0.0, 0.5, 1.0], size=57)
    assert np.array_equal(bootstrap_grid_means(o[None, :], 700, seed=7), bootstrap_means(o, 700, seed=7))
    est, wr = estimate(o[None, :], 700, 0.95, 7), win_rate(o, 700, 0.95, 7)
    assert (est.mean, est.low, est.high) == (wr.rate, wr.low, wr.high)
    assert est.per_seed == (wr.rate,) and est.sd is None


def test_identical_policies_have_a_zero_difference_with_a_zero_width_interval():
    x = np.random.default_rng(1).choice([0.0, 0.5, 1.0], size=(3, 30))
    d = paired_difference(x, x.copy(), 500, 0.95, 0)
    assert (d.mean, d.low, d.high, d.sd) == (0.0, 0.0, 0.0, 0.0)
    assert not d.excludes_zero and verdict(d.low, d.high) == "not distinguishable"
    h = head_to_head(x, x.copy(), 500, 0.95, 0)  # every sample ties with itself
    assert (h.mean, h.low, h.high) == (0.5, 0.5, 0.5)


def test_a_policy_winning_where_the_reference_loses_has_the_hand_computed_difference():
    """x wins everywhere; ref wins 1 of 4 prompts on each seed: cells x - ref = [[1,1,1,0],[1,0,1,1]], mean 6/8.
    Every cell is >= 0 and a resample is 0 only if it draws the single 0 cell of each row 4 times: the CI is > 0."""
    x = np.ones((2, 4))
    ref = np.array([[0.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]])
    d = paired_difference(x, ref, 2000, 0.95, 3)
    assert d.mean == 0.75 and d.per_seed == (0.75, 0.75) and d.sd == 0.0
    assert d.low > 0 and d.high == 1.0
    assert verdict(d.low, d.high) == "reproduced"  # "x beats ref"
    assert verdict(-d.high, -d.low) == "reversed"  # "ref beats x"


def test_seed_level_draws_match_the_exact_two_seed_distribution():
    """Rows [1, 1, 1] and [0, 0, 0]: prompts do not matter, the two seed draws give means 1, 0.5, 0 with
    probability 1/4, 1/2, 1/4, so the 95% interval is [0, 1] (a prompt-only bootstrap would say [0.5, 0.5])."""
    means = bootstrap_grid_means([[1.0] * 3, [0.0] * 3], 20000, seed=2)
    for v, p in ((1.0, 0.25), (0.5, 0.5), (0.0, 0.25)):
        assert np.mean(means == v) == pytest.approx(p, abs=0.015)
    e = estimate([[1.0] * 3, [0.0] * 3], 2000, 0.95, 2)
    assert (e.mean, e.low, e.high, e.per_seed) == (0.5, 0.0, 1.0, (1.0, 0.0))
    assert e.sd == pytest.approx(np.std([1.0, 0.0], ddof=1))


def test_prompt_draws_are_shared_by_the_drawn_seeds():
    """Rows [0, 1] and [0, 1]: with one shared prompt draw the mean is 0, 0.5 or 1; independent draws per seed
    would also give 0.25 and 0.75."""
    means = bootstrap_grid_means([[0.0, 1.0], [0.0, 1.0]], 4000, seed=4)
    assert set(np.unique(means)) == {0.0, 0.5, 1.0}


def test_paired_interval_is_much_narrower_when_outcomes_are_correlated():
    """Both policies win the same 70% easy prompts; x also wins 12 hard ones. The paired cells are 0 except 12
    ones (sd ~ sqrt(.06 * .94 / 600)), the unpaired interval adds the two prompt-difficulty spreads."""
    rng = np.random.default_rng(5)
    ref = (rng.random((3, 200)) < 0.7).astype(float)
    ref[:] = ref[0]  # the same easy prompts on every seed
    x = ref.copy()
    hard = np.flatnonzero(ref[0] == 0)[:12]
    x[:, hard] = 1.0
    d = paired_difference(x, ref, 2000, 0.95, 0)
    lo, hi = unpaired_difference(x, ref, 2000, 0.95, 0)
    assert d.mean == pytest.approx(0.06)
    assert (d.high - d.low) <= 0.5 * (hi - lo)
    assert d.low > 0 and lo < 0  # the pairing resolves what two separate intervals cannot


def test_head_to_head_counts_ties_half():
    """ref scores [3, 1, 2, 2] vs x [1, 3, 2, 0]: win, loss, tie, win -> 0.625; seed 2 all ties -> 0.5."""
    h = head_to_head([[3, 1, 2, 2], [1, 1, 1, 1]], [[1, 3, 2, 0], [1, 1, 1, 1]], 500, 0.95, 0)
    assert h.per_seed == (0.625, 0.5) and h.mean == pytest.approx(0.5625)
    assert 0.0 <= h.low <= h.mean <= h.high <= 1.0


def test_verdict_needs_the_interval_strictly_off_the_null():
    assert verdict(0.0, 0.1) == "not distinguishable"
    assert verdict(0.001, 0.1) == "reproduced"
    assert verdict(-0.2, -0.01) == "reversed"
    assert verdict(0.51, 0.6, null=0.5) == "reproduced" and verdict(0.3, 0.5, null=0.5) == "not distinguishable"


def test_align_orders_seeds_and_prompts_and_refuses_missing_or_extra_ids():
    a = align({1: {"b": 0.0, "a": 1.0}, 0: {"a": 0.5, "b": 1.0}}, "lambda K=8")
    assert a.seeds == (0, 1) and a.ids == ("a", "b") and a.values.tolist() == [[0.5, 1.0], [1.0, 0.0]]
    with pytest.raises(LipoError, match="lambda K=8: seed 1 has no outcome for prompt 'b'"):
        align({0: {"a": 1.0, "b": 0.0}, 1: {"a": 1.0}}, "lambda K=8")
    with pytest.raises(LipoError, match="softmax K=8: seed 0 has prompt 'c' that the other evaluations lack"):
        align({0: {"a": 1.0, "b": 0.0, "c": 1.0}}, "softmax K=8", ids=["a", "b"])


def test_common_pairs_by_seed_and_prompt_id():
    """x has seeds 0, 1, 2 and prompts in order (b, a); ref has seeds 1, 2 and (a, b): paired on seeds 1, 2 with
    x's columns reordered to ref's."""
    x = align({0: {"b": 9.0, "a": 9.0}, 1: {"b": 1.0, "a": 2.0}, 2: {"b": 3.0, "a": 4.0}}, "x")
    ref = align({1: {"a": 0.0, "b": 0.0}, 2: {"a": 0.0, "b": 1.0}}, "ref")
    xv, rv, seeds = common(x, ref, "x", "ref")
    assert seeds == (1, 2) and xv.tolist() == [[2.0, 1.0], [4.0, 3.0]] and rv.tolist() == [[0.0, 0.0], [0.0, 1.0]]
    other = align({1: {"a": 0.0, "z": 0.0}}, "list-mle K=8")
    with pytest.raises(LipoError, match="list-mle K=8: has no outcome for prompt 'b'"):
        common(other, ref, "list-mle K=8", "ref")
    with pytest.raises(LipoError, match="no training seed in common"):
        common(align({5: {"a": 0.0, "b": 0.0}}, "y"), ref, "y", "ref")


def test_prompt_interval_holds_the_seeds_fixed():
    """Rows [1, 1, 1] and [0, 0, 0]: every prompt's mean over the seeds is 0.5, so resampling prompts alone gives
    [0.5, 0.5], where the two-level interval is [0, 1]; with one seed both are the same prompt bootstrap."""
    assert prompt_interval([[1.0] * 3, [0.0] * 3], 500, 0.95, 0) == (0.5, 0.5)
    o = np.random.default_rng(2).choice([0.0, 1.0], size=(1, 40))
    e = estimate(o, 500, 0.95, 1)
    assert prompt_interval(o, 500, 0.95, 1) == (e.low, e.high)
