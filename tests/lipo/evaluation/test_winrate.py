"""Win rate and percentile-bootstrap CI: hand-computed values, the exact bootstrap distribution, seeding."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lipo.errors import LipoError
from lipo.evaluation.winrate import (bootstrap_means, load_judge, outcomes_from_probs, outcomes_from_rewards,
                                     percentile_interval, response_length, win_rate)


def test_outcomes_from_rewards_count_ties_half():
    """r_a = [1, 2, 3], r_b = [0, 2, 5]: a wins, tie, loses -> [1, 0.5, 0]; win rate (1 + 0.5 + 0) / 3 = 0.5."""
    out = outcomes_from_rewards([1.0, 2.0, 3.0], [0.0, 2.0, 5.0])
    assert out.tolist() == [1.0, 0.5, 0.0]
    assert win_rate(out, resamples=200).rate == 0.5


def test_tie_eps_makes_near_equal_rewards_a_tie():
    """d = 1.0 - 1.0000005 = -5e-7 is within eps = 1e-6 (tie); d = 0.1 is a win."""
    out = outcomes_from_rewards([1.0, 1.0], [1.0000005, 0.9], tie_eps=1e-6)
    assert out.tolist() == [0.5, 1.0]
    assert outcomes_from_rewards([1.0], [1.0000005]).tolist() == [0.0]  # no eps: strict comparison


def test_outcomes_from_probs_win_above_half():
    """P(a beats b) = 0.7 -> win, 0.5 -> tie, 0.2 -> loss."""
    assert outcomes_from_probs([0.7, 0.5, 0.2]).tolist() == [1.0, 0.5, 0.0]


def test_percentile_interval_hand_computed():
    """stats 0..100, c = 0.95: quantiles 0.025 and 0.975 of 101 evenly spaced values are 2.5 and 97.5;
    stats 0..10, c = 0.8: positions 0.1 * 10 = 1 and 0.9 * 10 = 9."""
    assert percentile_interval(np.arange(101), 0.95) == pytest.approx((2.5, 97.5))
    assert percentile_interval(np.arange(11), 0.8) == pytest.approx((1.0, 9.0))


def test_bootstrap_of_two_values_matches_its_exact_distribution():
    """Resampling [0, 1] twice with replacement gives the mean 0, 0.5, 1 with probability 1/4, 1/2, 1/4 (the four
    equally likely draws 00, 01, 10, 11). So the 95% percentile interval is [0, 1]."""
    means = bootstrap_means([0.0, 1.0], resamples=20000, seed=3)
    freq = {v: float(np.mean(means == v)) for v in (0.0, 0.5, 1.0)}
    assert freq[0.0] == pytest.approx(0.25, abs=0.015)
    assert freq[0.5] == pytest.approx(0.50, abs=0.015)
    assert freq[1.0] == pytest.approx(0.25, abs=0.015)
    assert percentile_interval(means, 0.95) == (0.0, 1.0)


def test_constant_outcomes_have_a_zero_width_interval():
    wr = win_rate([0.5] * 10, resamples=500, seed=1)
    assert (wr.rate, wr.low, wr.high, wr.ties) == (0.5, 0.5, 0.5, 10)


def test_interval_matches_the_normal_approximation():
    """60 wins, 40 losses: the CI is about 0.6 +- 1.96 * sqrt(0.6 * 0.4 / 100) = 0.6 +- 0.096."""
    wr = win_rate([1.0] * 60 + [0.0] * 40, resamples=4000, seed=0)
    half = 1.96 * math.sqrt(0.6 * 0.4 / 100)
    assert wr.rate == 0.6 and (wr.wins, wr.losses, wr.n) == (60, 40, 100)
    assert wr.low == pytest.approx(0.6 - half, abs=0.02)
    assert wr.high == pytest.approx(0.6 + half, abs=0.02)


def test_bootstrap_is_seeded_and_chunking_does_not_change_draws_per_seed():
    x = np.random.default_rng(0).random(37)
    a = bootstrap_means(x, 1000, seed=5)
    assert np.array_equal(a, bootstrap_means(x, 1000, seed=5))
    assert not np.array_equal(a, bootstrap_means(x, 1000, seed=6))
    with pytest.raises(LipoError, match="empty"):
        bootstrap_means([], 10, seed=0)


def test_metric_names():
    m = win_rate([1.0, 0.0], resamples=100).as_metrics("eval/fn_")
    assert set(m) == {"eval/fn_win_rate", "eval/fn_win_rate_ci_low", "eval/fn_win_rate_ci_high", "eval/fn_wins",
                      "eval/fn_ties", "eval/fn_losses"}


def test_load_judge():
    assert load_judge("lipo.evaluation.winrate:response_length") is response_length
    assert response_length("p", "abcd") == 4.0
    with pytest.raises(LipoError, match="judge.function: cannot import 'no.such.module:f'"):
        load_judge("no.such.module:f")
    with pytest.raises(LipoError, match="not callable"):
        load_judge("lipo.evaluation.winrate:__doc__")
