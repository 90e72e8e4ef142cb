"""Tests for lipo.losses: hand-computed values, invariances, DPO equivalence and edge cases.

Expected values are worked out by hand in the comments and recomputed with the math module, never
with the code under test. The running example is one list with

    s = [1, 2, 0.5]    y = [2, 0, 1]

Valid pairs (y_i > y_j): (0,1), (0,2), (2,1) with s_i - s_j = -1, 0.5, -1.5.
Ranks under s (descending): item1 -> 1, item0 -> 2, item2 -> 3, i.e. r = [2, 1, 3].
Gains G = 2^y - 1 = [3, 0, 1]; discounts 1/log2(1+r) = [1/log2(3), 1, 1/2].
"""

from __future__ import annotations

import math

import pytest
import torch

from lipo.losses import (
    LAMBDA_WEIGHTS,
    LOSSES,
    compute_ranks,
    lambda_loss,
    list_mle,
    pair_hinge,
    pair_logistic,
    point_mse,
    point_sigmoid,
    softmax,
)

S = [1.0, 2.0, 0.5]
Y = [2.0, 0.0, 1.0]
ALL_WEIGHTS = [(w, n) for w in LAMBDA_WEIGHTS for n in (False, True)]


def sp(x: float) -> float:
    """softplus(x) = log(1 + e^x)."""
    return math.log1p(math.exp(x))


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def lse(*xs: float) -> float:
    return math.log(sum(math.exp(x) for x in xs))


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# Pair losses of the running example, l_ij = softplus(-(s_i - s_j)).
L01, L02, L21 = sp(1.0), sp(-0.5), sp(1.5)  # 1.31326, 0.47408, 1.70141
# DCG discount differences |1/log2(1+r_i) - 1/log2(1+r_j)| with r = [2, 1, 3].
D01 = 1.0 - 1.0 / math.log2(3)  # 0.36907
D02 = 1.0 / math.log2(3) - 0.5  # 0.13093
D21 = 1.0 - 0.5  # 0.5
IDCG = 3.0 + 1.0 / math.log2(3)  # labels sorted [2, 1, 0]: 3/1 + 1/log2(3) + 0 = 3.63093


def _all_losses():
    """(name, fn) for the seven objectives plus every lambda weight / normalize variant."""
    out = [(n, f) for n, f in LOSSES.items()]
    for w, norm in ALL_WEIGHTS:
        out.append((f"lambda[{w},{norm}]",
                    lambda s, y, m=None, w=w, norm=norm: lambda_loss(s, y, m, weight=w, normalize=norm)))
    return out


ALL_LOSSES = _all_losses()
ALL_IDS = [n for n, _ in ALL_LOSSES]


# --------------------------------------------------------------------------- hand-computed values


def test_registry_names():
    assert set(LOSSES) == {"point_mse", "point_sigmoid", "softmax", "pair_hinge", "pair_logistic",
                           "list_mle", "lambda"}
    assert set(LAMBDA_WEIGHTS) == {"dcg", "dcg2", "label_diff", "constant"}


def test_point_mse_hand():
    # (1-2)^2 + (2-0)^2 + (0.5-1)^2 = 1 + 4 + 0.25 = 5.25; mean over 3 items = 1.75
    assert point_mse(t([S]), t([Y])).item() == pytest.approx(5.25 / 3)
    # Second list has only item 0 valid: (3-1)^2 = 4. Pooled item mean: (5.25 + 4) / 4 = 2.3125
    got = point_mse(t([S, [3.0, 9.0, 9.0]]), t([Y, [1.0, 0.0, 0.0]]),
                    torch.tensor([[True] * 3, [True, False, False]]))
    assert got.item() == pytest.approx(9.25 / 4)


def test_point_sigmoid_hand():
    # BCE with logits = softplus(s) - s*y, y = [1, 0, 0.5]:
    # softplus(1) - 1 = 0.31326, softplus(2) - 0 = 2.12693, softplus(0.5) - 0.25 = 0.72408
    expected = ((sp(1.0) - 1.0) + sp(2.0) + (sp(0.5) - 0.25)) / 3  # = 1.05476
    assert point_sigmoid(t([S]), t([[1.0, 0.0, 0.5]])).item() == pytest.approx(expected)


def test_softmax_hand():
    # p = y / sum(y) = [2/3, 0, 1/3]; loss = -sum p_i (s_i - lse(s)) = lse(1, 2, 0.5) - (2/3 + 1/6)
    # = log(e + e^2 + e^0.5) - 5/6 = 2.46437 - 0.83333 = 1.63104
    expected = lse(1.0, 2.0, 0.5) - 5.0 / 6.0
    assert softmax(t([S]), t([Y])).item() == pytest.approx(expected)
    # A second list with all-zero labels has no target distribution and is left out of the mean.
    got = softmax(t([S, [4.0, -3.0, 0.0]]), t([Y, [0.0, 0.0, 0.0]]))
    assert got.item() == pytest.approx(expected)
    # Masking item 1: p = [2/3, 1/3] over items {0, 2}; loss = log(e + e^0.5) - 5/6 = 0.64708
    got = softmax(t([S]), t([Y]), torch.tensor([[True, False, True]]))
    assert got.item() == pytest.approx(lse(1.0, 0.5) - 5.0 / 6.0)


def test_list_mle_hand():
    # Label order: item0 (s=1), item2 (s=0.5), item1 (s=2).
    # -log PL = [lse(1, .5, 2) - 1] + [lse(.5, 2) - .5] + [2 - 2] = 1.46437 + 1.70141 + 0 = 3.16578
    expected = (lse(1.0, 0.5, 2.0) - 1.0) + (lse(0.5, 2.0) - 0.5)
    assert list_mle(t([S]), t([Y])).item() == pytest.approx(expected)
    # Second list: two valid items, labels [0, 1] -> order item1 (s=-1), item0 (s=3):
    # [lse(-1, 3) - (-1)] + 0 = 3.01815 + 1 = 4.01815. Mean over the 2 lists.
    got = list_mle(t([S, [3.0, -1.0, 50.0]]), t([Y, [0.0, 1.0, 7.0]]),
                   torch.tensor([[True] * 3, [True, True, False]]))
    assert got.item() == pytest.approx((expected + lse(-1.0, 3.0) + 1.0) / 2)


def test_list_mle_label_ties_stable_by_index():
    # Tied labels: items kept in index order. y = [1, 1], s = [0, 2]:
    # order (0, 1): [lse(0, 2) - 0] + 0 = 2.12693 (the other order would give lse(0,2) - 2 = 0.12693)
    assert list_mle(t([[0.0, 2.0]]), t([[1.0, 1.0]])).item() == pytest.approx(lse(0.0, 2.0))


def test_pair_hinge_hand():
    # relu(1 - (s_i - s_j)): (0,1): relu(2) = 2, (0,2): relu(0.5) = 0.5, (2,1): relu(2.5) = 2.5
    # mean over 3 pairs = 5 / 3
    assert pair_hinge(t([S]), t([Y])).item() == pytest.approx(5.0 / 3)


def test_pair_logistic_hand_and_pooled_mean():
    # softplus(1) + softplus(-0.5) + softplus(1.5) = 1.31326 + 0.47408 + 1.70141 = 3.48875; / 3
    assert pair_logistic(t([S]), t([Y])).item() == pytest.approx((L01 + L02 + L21) / 3)
    # Second list: item 2 masked, labels [1, 0] -> one pair (0,1) with s0 - s1 = 0: softplus(0)=log 2.
    # Pairs of all lists are pooled: (3.48875 + 0.69315) / 4 = 1.04548 (not the mean of list means).
    got = pair_logistic(t([S, [0.0, 0.0, 9.0]]), t([Y, [1.0, 0.0, 5.0]]),
                        torch.tensor([[True] * 3, [True, True, False]]))
    assert got.item() == pytest.approx((L01 + L02 + L21 + math.log(2)) / 4)


def test_lambda_dcg_hand():
    # w_ij = |G_i - G_j| * |disc_i - disc_j| * n (n = 3 valid items):
    # w01 = 3 * 0.36907 * 3 = 3.32163, w02 = 2 * 0.13093 * 3 = 0.78558, w21 = 1 * 0.5 * 3 = 1.5
    # loss = (3.32163 * 1.31326 + 0.78558 * 0.47408 + 1.5 * 1.70141) / 3 = 7.28674 / 3 = 2.42891
    w01, w02, w21 = 3 * D01 * 3, 2 * D02 * 3, 1 * D21 * 3
    expected = (w01 * L01 + w02 * L02 + w21 * L21) / 3
    assert lambda_loss(t([S]), t([Y])).item() == pytest.approx(expected)
    assert LOSSES["lambda"](t([S]), t([Y])).item() == pytest.approx(expected)  # dcg is the default
    # normalize=True divides the gains by IDCG = 3.63093: 2.42891 / 3.63093 = 0.66895
    got = lambda_loss(t([S]), t([Y]), weight="dcg", normalize=True)
    assert got.item() == pytest.approx(expected / IDCG)


def test_lambda_dcg2_hand():
    # |r_i - r_j|: (0,1) -> 1, (0,2) -> 1, (2,1) -> 2;  delta(d) = 1/log2(1+d) - 1/log2(2+d)
    # delta(1) = 1 - 1/log2(3) = 0.36907, delta(2) = 1/log2(3) - 1/2 = 0.13093
    # w = |dG| * delta * n: w01 = 3*0.36907*3 = 3.32163, w02 = 2*0.36907*3 = 2.21442,
    # w21 = 1*0.13093*3 = 0.39279; loss = (4.36219 + 1.04981 + 0.66830) / 3 = 2.02677
    d1 = 1.0 - 1.0 / math.log2(3)
    d2 = 1.0 / math.log2(3) - 1.0 / math.log2(4)
    expected = (3 * d1 * 3 * L01 + 2 * d1 * 3 * L02 + 1 * d2 * 3 * L21) / 3
    assert lambda_loss(t([S]), t([Y]), weight="dcg2").item() == pytest.approx(expected)
    got = lambda_loss(t([S]), t([Y]), weight="dcg2", normalize=True)
    assert got.item() == pytest.approx(expected / IDCG)  # 0.55819


def test_lambda_label_diff_and_constant_hand():
    # label_diff: |y_i - y_j| = 2, 1, 1 -> (2*1.31326 + 0.47408 + 1.70141) / 3 = 1.60067
    expected = (2 * L01 + 1 * L02 + 1 * L21) / 3
    for norm in (False, True):  # neither weight depends on gains, so normalize changes nothing
        assert lambda_loss(t([S]), t([Y]), weight="label_diff", normalize=norm).item() == \
            pytest.approx(expected)
        # constant: w = 1 -> plain pair_logistic, 3.48875 / 3 = 1.16292
        assert lambda_loss(t([S]), t([Y]), weight="constant", normalize=norm).item() == \
            pytest.approx((L01 + L02 + L21) / 3)


def test_lambda_gradient_treats_weights_as_constants():
    # d loss / d s with constant w (dcg weights from test_lambda_dcg_hand), d softplus(-x)/dx = -sig(-x):
    # ds0 = (-w01 sig(1) - w02 sig(-0.5)) / 3, ds1 = (w01 sig(1) + w21 sig(1.5)) / 3,
    # ds2 = (w02 sig(-0.5) - w21 sig(1.5)) / 3
    w01, w02, w21 = 3 * D01 * 3, 2 * D02 * 3, 1 * D21 * 3
    expected = [(-w01 * sig(1.0) - w02 * sig(-0.5)) / 3,
                (w01 * sig(1.0) + w21 * sig(1.5)) / 3,
                (w02 * sig(-0.5) - w21 * sig(1.5)) / 3]
    s = t([S]).requires_grad_()
    lambda_loss(s, t([Y])).backward()
    assert s.grad[0].tolist() == pytest.approx(expected)


def test_lambda_gradient_matches_detached_weights_random():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(4, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (4, 6), generator=g).double()
    m = torch.rand(4, 6, generator=g) > 0.2
    for w_name, norm in ALL_WEIGHTS:
        a = s.clone().requires_grad_()
        lambda_loss(a, y, m, weight=w_name, normalize=norm).backward()
        b = s.clone().requires_grad_()
        w = LAMBDA_WEIGHTS[w_name](torch.where(m, y, 0), compute_ranks(s, m), m, norm)  # constants
        pairs = (y[:, :, None] > y[:, None, :]) & m[:, :, None] & m[:, None, :]
        ref = (w * torch.nn.functional.softplus(-(b[:, :, None] - b[:, None, :])))[pairs].sum()
        (ref / pairs.sum()).backward()
        torch.testing.assert_close(a.grad, b.grad)


# --------------------------------------------------------------------------- equivalences


def test_pair_logistic_is_dpo_for_two_items():
    g = torch.Generator().manual_seed(0)
    beta = 0.1
    lp_c, ref_c, lp_r, ref_r = (torch.randn(5, generator=g, dtype=torch.float64) * 10 for _ in range(4))
    scores = beta * torch.stack([lp_c - ref_c, lp_r - ref_r], dim=-1)  # [B, 2]: chosen, rejected
    labels = t([[1.0, 0.0]] * 5)
    # DPO: -log sigmoid(beta * ((lp_c - ref_c) - (lp_r - ref_r))), averaged over the batch
    dpo = [-math.log(sig(beta * ((a - b) - (c - d))))
           for a, b, c, d in zip(lp_c.tolist(), ref_c.tolist(), lp_r.tolist(), ref_r.tolist())]
    assert pair_logistic(scores, labels).item() == pytest.approx(sum(dpo) / 5)


def test_constant_lambda_equals_pair_logistic_exactly():
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        s = torch.randn(3, 7, generator=g)
        s[:, 1] = s[:, 0]  # score ties
        y = torch.randint(0, 3, (3, 7), generator=g).float()  # label ties
        m = torch.rand(3, 7, generator=g) > 0.3
        a, b = s.clone().requires_grad_(), s.clone().requires_grad_()
        la, lb = lambda_loss(a, y, m, weight="constant"), pair_logistic(b, y, m)
        assert torch.equal(la, lb)
        la.backward()
        lb.backward()
        assert torch.equal(a.grad, b.grad)


# --------------------------------------------------------------------------- invariances


def _random_batch(seed: int, b: int = 3, k: int = 5):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, k, generator=g, dtype=torch.float64) * 2  # continuous: no score ties
    y_tied = torch.randint(0, 4, (b, k), generator=g).double() / 3  # in [0, 1], with ties
    y_distinct = torch.rand(b, k, generator=g, dtype=torch.float64)
    m = torch.rand(b, k, generator=g) > 0.25
    m[:, 0] = True
    return g, s, y_tied, y_distinct, m


def _labels_for(name: str, y_tied, y_distinct):
    # list_mle breaks label ties by index, so it is only permutation-invariant without ties.
    return y_distinct if name == "list_mle" else y_tied


@pytest.mark.parametrize("name,fn", ALL_LOSSES, ids=ALL_IDS)
def test_permutation_invariance(name, fn):
    g, s, y_tied, y_distinct, m = _random_batch(10)
    y = _labels_for(name, y_tied, y_distinct)
    perm = torch.argsort(torch.rand(s.shape, generator=g), dim=-1)  # a different permutation per list
    a = s.clone().requires_grad_()
    b = s.clone().requires_grad_()
    la = fn(a, y, m)
    lb = fn(b.gather(-1, perm), y.gather(-1, perm), m.gather(-1, perm))
    torch.testing.assert_close(la, lb)
    la.backward()
    lb.backward()
    torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("name,fn", ALL_LOSSES, ids=ALL_IDS)
def test_padding_invariance(name, fn):
    g, s, y_tied, y_distinct, m = _random_batch(11)
    y = _labels_for(name, y_tied, y_distinct)
    pad_s = torch.randn(3, 4, generator=g, dtype=torch.float64) * 100
    pad_s[0, 0] = float("nan")  # padding content must not matter, even NaN
    pad_y = torch.randint(0, 9, (3, 4), generator=g).double()
    a = s.clone().requires_grad_()
    b = torch.cat([s, pad_s], dim=-1).requires_grad_()
    la = fn(a, y, m)
    lb = fn(b, torch.cat([y, pad_y], -1), torch.cat([m, torch.zeros(3, 4, dtype=torch.bool)], -1))
    torch.testing.assert_close(la, lb)
    la.backward()
    lb.backward()
    torch.testing.assert_close(a.grad, b.grad[:, :5])
    assert torch.equal(b.grad[:, 5:], torch.zeros(3, 4, dtype=torch.float64))


def test_mask_none_equals_all_true():
    _, s, y, _, _ = _random_batch(12)
    for name, fn in ALL_LOSSES:
        torch.testing.assert_close(fn(s, y), fn(s, y, torch.ones_like(s, dtype=torch.bool)), msg=name)


# --------------------------------------------------------------------------- edge cases


def _assert_zero_with_finite_grad(fn, s, y, m):
    a = s.clone().requires_grad_()
    loss = fn(a, y, m)
    assert loss.item() == 0.0
    loss.backward()
    assert a.grad is not None and torch.equal(a.grad, torch.zeros_like(a))


@pytest.mark.parametrize("name,fn", ALL_LOSSES, ids=ALL_IDS)
def test_no_valid_item_gives_zero(name, fn):
    s, y = torch.randn(2, 4), torch.rand(2, 4)
    _assert_zero_with_finite_grad(fn, s, y, torch.zeros(2, 4, dtype=torch.bool))


@pytest.mark.parametrize("name,fn", [(n, f) for n, f in ALL_LOSSES if n.startswith(("pair", "lambda"))])
def test_no_valid_pair_gives_zero(name, fn):
    s = torch.randn(2, 4)
    # all labels tied in list 0; list 1 has one valid item only
    y = t([[0.5, 0.5, 0.5, 0.5], [1.0, 0.0, 0.0, 0.0]]).float()
    m = torch.tensor([[True] * 4, [True, False, False, False]])
    _assert_zero_with_finite_grad(fn, s, y, m)


def test_softmax_all_zero_labels_gives_zero():
    _assert_zero_with_finite_grad(softmax, torch.randn(2, 3), torch.zeros(2, 3), None)


@pytest.mark.parametrize("name,fn", ALL_LOSSES, ids=ALL_IDS)
def test_extreme_scores_finite(name, fn):
    g = torch.Generator().manual_seed(5)
    sign = torch.where(torch.rand(4, 6, generator=g) > 0.5, 1.0, -1.0)
    s = (sign * 1e4).requires_grad_()  # float32, |s| = 1e4, many ties too
    y = torch.randint(0, 3, (4, 6), generator=g).float() / 2
    m = torch.rand(4, 6, generator=g) > 0.2
    for mask in (None, m):
        s.grad = None
        loss = fn(s, y, mask)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_half_precision_inputs_are_computed_in_float32():
    s, y = torch.tensor([S], dtype=torch.bfloat16), torch.tensor([Y], dtype=torch.bfloat16)
    for name, fn in ALL_LOSSES:
        assert fn(s, y).dtype == torch.float32, name


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        pair_logistic(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError):
        pair_logistic(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError):
        pair_logistic(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError):
        lambda_loss(torch.zeros(2, 3), torch.zeros(2, 3), weight="ndcg")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- ranks and weights


def test_ranks_ties_to_lower_index_and_masked_last():
    s = t([[1.0, 3.0, 3.0, 0.0, 5.0, 9.0]])
    m = torch.tensor([[True, True, True, True, False, False]])
    # valid: items 1, 2 tie at 3 -> 1, 2 (lower index first); item0 -> 3, item3 -> 4;
    # masked items last in index order despite high scores: item4 -> 5, item5 -> 6
    assert compute_ranks(s, m).tolist() == [[3, 1, 2, 4, 5, 6]]
    assert compute_ranks(t([S])).tolist() == [[2, 1, 3]]
    assert compute_ranks(t([[2.0, 2.0, 2.0]])).tolist() == [[1, 2, 3]]


def test_lambda_weights_zero_on_masked_pairs_and_no_grad():
    s = t([S + [4.0]]).requires_grad_()
    y = t([Y + [3.0]])
    m = torch.tensor([[True, True, True, False]])
    for (w_name, norm) in ALL_WEIGHTS:
        w = LAMBDA_WEIGHTS[w_name](torch.where(m, y, 0), compute_ranks(s, m), m, norm)
        assert w.shape == (1, 4, 4) and not w.requires_grad
        assert torch.equal(w[0, 3, :], torch.zeros(4, dtype=w.dtype))
        assert torch.equal(w[0, :, 3], torch.zeros(4, dtype=w.dtype))


def test_normalize_guards_zero_ideal_dcg():
    # All-zero gains -> ideal DCG 0; weights must be finite (zero), not 0/0.
    y = torch.zeros(1, 3, dtype=torch.float64)
    m = torch.ones(1, 3, dtype=torch.bool)
    for name in ("dcg", "dcg2"):
        w = LAMBDA_WEIGHTS[name](y, compute_ranks(t([S])), m, True)
        assert torch.equal(w, torch.zeros(1, 3, 3, dtype=torch.float64))
