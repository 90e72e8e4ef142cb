"""Score -> label functions (lipo.labels): hand-computed values, ties, invariances, the resolved labeler."""

from __future__ import annotations

import math
from typing import get_args

import pytest

from lipo.labels import LABELERS, LabelError, LabelName, labeler, minmax, rank


def labels(method: str, scores, **kw):
    return labeler(method, **kw)(scores)


def test_minmax():
    # (s - 1) / (5 - 1)
    assert labels("minmax", [3.0, 1.0, 5.0]) == [0.5, 0.0, 1.0]
    assert labels("minmax", [2.0, 2.0]) == [0.5, 0.5]  # all tied: no preference


def test_rank_is_linear_in_rank_and_ties_share_the_mean_rank():
    # ranks 1..4 best first -> (4 - r) / 3
    assert labels("rank", [0.1, 0.9, 0.5, 0.3]) == pytest.approx([0.0, 1.0, 2 / 3, 1 / 3])
    # scores 7, 7, 1: ranks 1.5, 1.5, 3 -> (3 - 1.5) / 2 = 0.75, 0.75, 0
    assert labels("rank", [7.0, 7.0, 1.0]) == [0.75, 0.75, 0.0]
    assert labels("rank", [1.0, 2.0]) == [0.0, 1.0]  # K = 2: DPO's chosen / rejected


def test_rank_and_minmax_are_invariant_to_monotone_transforms_of_scores():
    s = [0.3, -1.2, 2.5, 0.0]
    assert labels("rank", s) == labels("rank", [math.exp(x) for x in s])
    assert labels("minmax", s) == pytest.approx(labels("minmax", [2 * x + 7 for x in s]))


def test_sigmoid_with_temperature():
    assert labels("sigmoid", [0.0, 2.0, -2.0], temperature=2.0) == pytest.approx(
        [0.5, 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1))])
    assert labels("sigmoid", [1e4, -1e4]) == [1.0, 0.0]  # no overflow


def test_identity_and_winrate_pass_through_and_check_range():
    assert labels("identity", [0.0, 0.25, 1.0]) == [0.0, 0.25, 1.0]
    with pytest.raises(LabelError, match="outside"):
        labels("identity", [0.5, 1.5])
    assert labels("winrate", [1.0000001, 0.4]) == [1.0, 0.4]  # float noise of a mean of probabilities
    with pytest.raises(LabelError):
        labels("winrate", [0.5, 2.0])


def test_non_finite_scores_are_a_drop_reason():
    with pytest.raises(LabelError, match="non-finite"):
        labels("minmax", [1.0, float("nan")])


def test_every_label_name_has_a_labeler_and_bad_arguments_fail_when_resolved():
    assert set(LABELERS) == set(get_args(LabelName))
    with pytest.raises(ValueError, match="unknown label method 'ndcg'"):
        labeler("ndcg")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        labeler("sigmoid", temperature=0.0)


def test_the_plain_functions_take_scores_only():
    # what lipo.data.importers calls: no config object, no lookup
    assert minmax([1.0, 3.0]) == [0.0, 1.0] and rank([2.0, 1.0, 3.0]) == [0.5, 0.0, 1.0]
