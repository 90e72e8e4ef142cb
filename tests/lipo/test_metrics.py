"""Tests for lipo.metrics with hand-computed expectations.

Running example: s = [1, 2, 0.5], y = [2, 0, 1]; ranks under s r = [2, 1, 3];
gains 2^y - 1 = [3, 0, 1].
"""

from __future__ import annotations

import math

import pytest
import torch

from lipo.metrics import ndcg, pairwise_accuracy, top_bottom_margin

S = [1.0, 2.0, 0.5]
Y = [2.0, 0.0, 1.0]


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_ndcg_hand():
    # DCG  = 3/log2(1+2) + 0/log2(1+1) + 1/log2(1+3) = 1.89279 + 0 + 0.5 = 2.39279
    # IDCG = 3/log2(2) + 1/log2(3) + 0 = 3.63093;  NDCG = 0.65900
    dcg = 3 / math.log2(3) + 1 / math.log2(4)
    idcg = 3 + 1 / math.log2(3)
    got = ndcg(t([S]), t([Y]))
    assert got.dim() == 0 and got.item() == pytest.approx(dcg / idcg)
    # @1: top item is item1 with gain 0 -> 0 / 3 = 0
    assert ndcg(t([S]), t([Y]), k=1).item() == 0.0
    # @2: (3/log2(3)) / (3 + 1/log2(3)) = 1.89279 / 3.63093 = 0.52130
    assert ndcg(t([S]), t([Y]), k=2).item() == pytest.approx((3 / math.log2(3)) / idcg)


def test_ndcg_perfect_mask_and_skipped_lists():
    # List 0 ranked perfectly -> 1. List 1 has all-zero labels (IDCG 0) -> skipped.
    # List 2: item 2 masked (its high score ignored); valid s = [0, 1], y = [1, 0]:
    # DCG = 0/1 + 1/log2(3) = 0.63093, IDCG = 1 -> 0.63093.  Mean over lists 0 and 2.
    s = t([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0], [0.0, 1.0, 9.0]])
    y = t([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 5.0]])
    m = torch.tensor([[True] * 3, [True] * 3, [True, True, False]])
    assert ndcg(s, y, m).item() == pytest.approx((1.0 + 1 / math.log2(3)) / 2)


def test_ndcg_no_gain_is_zero_and_bad_k():
    assert ndcg(t([S]), torch.zeros(1, 3)).item() == 0.0
    with pytest.raises(ValueError):
        ndcg(t([S]), t([Y]), k=0)


def test_pairwise_accuracy_hand():
    # pairs (0,1): 1 > 2? no -> 0;  (0,2): 1 > 0.5 -> 1;  (2,1): 0.5 > 2? no -> 0.  1/3
    assert pairwise_accuracy(t([S]), t([Y])).item() == pytest.approx(1 / 3)
    # score tie on (0,1) counts 0.5: s = [1, 1, 0.5] -> (0.5 + 1 + 0) / 3 = 0.5
    assert pairwise_accuracy(t([[1.0, 1.0, 0.5]]), t([Y])).item() == pytest.approx(0.5)
    # Pooled over lists: list 1 has one valid pair (0,1) ordered correctly: (1 + 1) / 4 = 0.5
    got = pairwise_accuracy(t([S, [2.0, 1.0, 0.0]]), t([Y, [1.0, 0.0, 9.0]]),
                            torch.tensor([[True] * 3, [True, True, False]]))
    assert got.item() == pytest.approx(0.5)


def test_pairwise_accuracy_no_pairs_is_zero():
    assert pairwise_accuracy(t([S]), t([[1.0, 1.0, 1.0]])).item() == 0.0


def test_top_bottom_margin_hand():
    # List 0: top label 2 is item0 (s=1), bottom label 0 is item1 (s=2): 1 - 2 = -1.
    # List 1: item3 masked; top label 1 shared by items 0, 1 -> mean(3, 1) = 2; bottom item2 (s=2): 0.
    # List 2: all labels equal -> skipped.   Mean = (-1 + 0) / 2 = -0.5
    s = t([S + [0.0], [3.0, 1.0, 2.0, 7.0], [5.0, 1.0, 0.0, 0.0]])
    y = t([Y + [0.0], [1.0, 1.0, 0.0, 9.0], [1.0, 1.0, 1.0, 1.0]])
    m = torch.tensor([[True, True, True, False], [True, True, True, False], [True] * 4])
    assert top_bottom_margin(s, y, m).item() == pytest.approx(-0.5)
    assert top_bottom_margin(s[2:], y[2:]).item() == 0.0


def test_metrics_detached_and_finite():
    s = torch.randn(3, 4, requires_grad=True)
    y = torch.randint(0, 3, (3, 4)).float()
    for fn in (ndcg, pairwise_accuracy, top_bottom_margin):
        out = fn(s, y, torch.zeros(3, 4, dtype=torch.bool))
        assert out.item() == 0.0 and not out.requires_grad
        out = fn(s, y)
        assert torch.isfinite(out) and not out.requires_grad
