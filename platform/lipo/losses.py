"""Ranking losses for listwise preference optimisation (LiPO, arXiv 2402.01878).

Each loss scores a batch of ``B`` lists of ``K`` candidate responses each:

* ``scores`` ``[B, K]`` float: policy scores; in LiPO ``s_k = beta * (log pi(y_k|x) - log pi_ref(y_k|x))``.
* ``labels`` ``[B, K]`` float: graded preference labels, higher is better.
* ``mask`` ``[B, K]`` bool or ``None``: True marks a real item, False padding; ``None`` means all are real.

It returns a 0-dim tensor to call ``.backward()`` on. Lists shorter than ``K`` are padded and masked;
padded entries influence neither value nor gradient, whatever they hold (NaN included). A batch with
nothing to score gives 0 with zero gradients. Half-precision inputs are computed in float32.

Usage::

    from lipo.losses import LOSSES
    loss = LOSSES["lambda"](scores, labels, mask)   # LiPO-lambda
    loss.backward()

Definitions and reductions follow LiPO's Algorithm 1 (Liu et al., 2024, sec. 3-4), which calls the
Rax learning-to-rank library (Jagerman et al., 2022) with its default arguments.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import Tensor

__all__ = [
    "LAMBDA_WEIGHTS", "LOSSES", "LambdaWeightFn", "LambdaWeightName", "LossFn", "ObjectiveName",
    "compute_ranks", "dcg", "ideal_dcg", "lambda_loss", "list_mle", "masked_mean", "pair_diffs", "pair_hinge",
    "pair_logistic", "point_mse", "point_sigmoid", "prepare_lists", "softmax",
]

ObjectiveName = Literal[
    "point_mse", "point_sigmoid", "softmax", "pair_hinge", "pair_logistic", "list_mle", "lambda"
]
LambdaWeightName = Literal["dcg", "dcg2", "label_diff", "constant"]
LossFn = Callable[[Tensor, Tensor, Tensor | None], Tensor]
LambdaWeightFn = Callable[[Tensor, Tensor, Tensor, bool], Tensor]

# Stands in for -inf on masked logits: exp() of it is exactly 0, yet it stays finite, so no inf - inf
# (NaN) can appear in a forward or backward pass.
_MASKED_LOGIT = -1e30


def prepare_lists(scores: Tensor, labels: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Checks shapes; returns (scores, labels, valid) with padded entries zeroed."""
    if scores.dim() != 2 or scores.shape != labels.shape:
        raise ValueError(f"scores and labels must both be [B, K]; got {tuple(scores.shape)} and "
                         f"{tuple(labels.shape)}")
    if mask is None:
        valid = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    else:
        if mask.shape != scores.shape:
            raise ValueError(f"mask must be {tuple(scores.shape)}; got {tuple(mask.shape)}")
        valid = mask.to(device=scores.device, dtype=torch.bool)
    if not scores.is_floating_point() or scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()  # exp/log in half precision lose too much; ints need a float dtype
    labels = labels.to(device=scores.device, dtype=scores.dtype)
    # where(), not multiplication: a NaN in a padded slot must not leak into the grad (0 * NaN = NaN).
    scores = torch.where(valid, scores, torch.zeros_like(scores))
    labels = torch.where(valid, labels, torch.zeros_like(labels))
    return scores, labels, valid


def masked_mean(values: Tensor, where: Tensor) -> Tensor:
    """Mean of ``values`` over ``where``; 0 (still attached to the graph) when ``where`` is empty."""
    total = torch.where(where, values, torch.zeros_like(values)).sum()
    return total / where.sum().clamp(min=1).to(values.dtype)


def pair_diffs(scores: Tensor, labels: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise score differences ``s_i - s_j`` and the valid-pair mask (both valid, ``y_i > y_j``)."""
    diff = scores.unsqueeze(-1) - scores.unsqueeze(-2)  # [B, K, K]
    both = valid.unsqueeze(-1) & valid.unsqueeze(-2)  # [B, K, K]
    return diff, both & (labels.unsqueeze(-1) > labels.unsqueeze(-2))


# --------------------------------------------------------------------------- ranks and DCG


def compute_ranks(scores: Tensor, mask: Tensor | None = None) -> Tensor:
    """1-based rank of each item when sorted by ``scores`` descending; int64 ``[B, K]``.

    Ties go to the lower index; masked items come after every valid one (in index order). The ranks
    are a permutation of ``1..K`` per list and carry no gradient.
    """
    with torch.no_grad():
        scores, _, valid = prepare_lists(scores.detach(), scores.detach(), mask)
        k = scores.shape[-1]
        idx = torch.arange(k, device=scores.device)
        s_i, s_j = scores.unsqueeze(-1), scores.unsqueeze(-2)  # [B, K, 1], [B, 1, K]
        v_i, v_j = valid.unsqueeze(-1), valid.unsqueeze(-2)
        j_before_i = (idx.unsqueeze(-1) > idx.unsqueeze(-2))  # [K, K]: j < i
        ahead = (s_j > s_i) | ((s_j == s_i) & j_before_i)  # [B, K, K]: j outranks i by score
        # Validity is the primary key, so a valid item always outranks a masked one.
        beats = (v_j & ~v_i) | ((v_j == v_i) & ahead)  # [B, K, K]
        return 1 + beats.sum(-1)


def _gains(labels: Tensor) -> Tensor:
    return torch.pow(2.0, labels) - 1.0


def _discounts(ranks: Tensor, dtype: torch.dtype) -> Tensor:
    return 1.0 / torch.log2(1.0 + ranks.to(dtype))


def dcg(labels: Tensor, ranks: Tensor, mask: Tensor | None = None, k: int | None = None) -> Tensor:
    """DCG@k per list, ``sum_{valid i, r_i <= k} (2^{y_i} - 1) / log2(1 + r_i)``; ``[B]``.

    ``k=None`` means no cutoff (Jarvelin & Kekalainen, 2002).
    """
    _, labels, valid = prepare_lists(labels, labels, mask)
    keep = valid if k is None else valid & (ranks <= k)
    per_item = _gains(labels) * _discounts(ranks, labels.dtype)  # [B, K]
    return torch.where(keep, per_item, torch.zeros_like(per_item)).sum(-1)


def ideal_dcg(labels: Tensor, mask: Tensor | None = None, k: int | None = None) -> Tensor:
    """DCG@k of the best ordering (valid items sorted by label, descending); ``[B]``."""
    return dcg(labels, compute_ranks(labels, mask), mask, k)


# --------------------------------------------------------------------------- lambda weights
# Each function maps (labels [B, K], ranks [B, K], valid [B, K] bool, normalize) to pair weights
# [B, K, K], zero on pairs that involve a masked item. Callers pass ranks of the current scores.


def _pair_gain_diffs(labels: Tensor, valid: Tensor, normalize: bool) -> Tensor:
    """``|G_i - G_j|`` with ``G = 2^y - 1``, optionally divided by the list's ideal DCG."""
    gains = torch.where(valid, _gains(labels), torch.zeros_like(labels))  # [B, K]
    if normalize:
        idcg = ideal_dcg(labels, valid)  # [B]
        # A list with no positive ideal DCG has nothing to normalise by: leave it as is.
        gains = gains / torch.where(idcg > 0, idcg, torch.ones_like(idcg)).unsqueeze(-1)
    return (gains.unsqueeze(-1) - gains.unsqueeze(-2)).abs()  # [B, K, K]


def _both_valid(valid: Tensor) -> Tensor:
    return valid.unsqueeze(-1) & valid.unsqueeze(-2)  # [B, K, K]


def _list_size(valid: Tensor, dtype: torch.dtype) -> Tensor:
    # Rax scales DCG weights by the list size so they are not tiny. We use the number of valid items
    # (equal to K on unpadded lists) so that padding a list does not change its loss.
    return valid.sum(-1).to(dtype)[:, None, None]  # [B, 1, 1]


def dcg_lambdaweight(labels: Tensor, ranks: Tensor, valid: Tensor, normalize: bool) -> Tensor:
    """LambdaRank DCG weight (Burges, 2006; Rax ``dcg_lambdaweight``).

    ``w_ij = |G_i - G_j| * |1/log2(1+r_i) - 1/log2(1+r_j)| * n``, with ``G = 2^y - 1``, ``r`` the
    1-based ranks under the current scores and ``n`` the number of valid items in the list.
    """
    disc = _discounts(ranks, labels.dtype)  # [B, K]
    disc_diff = (disc.unsqueeze(-1) - disc.unsqueeze(-2)).abs()  # [B, K, K]
    w = _pair_gain_diffs(labels, valid, normalize) * disc_diff * _list_size(valid, labels.dtype)
    return torch.where(_both_valid(valid), w, torch.zeros_like(w))


def dcg2_lambdaweight(labels: Tensor, ranks: Tensor, valid: Tensor, normalize: bool) -> Tensor:
    """LambdaLoss NDCG-Loss2 weight (Wang et al., 2018, CIKM, sec. 5.2, eq. 11; Rax ``dcg2``).

    ``w_ij = |G_i - G_j| * |1/D(d) - 1/D(d+1)| * n`` with ``d = |r_i - r_j|``, ``D(x) = log2(1+x)``,
    ``G = 2^y - 1`` and ``n`` the number of valid items (Rax's list-size scale factor; the paper has
    none). The paper divides ``G`` by the ideal DCG, which is ``normalize=True`` here.
    """
    d = (ranks.unsqueeze(-1) - ranks.unsqueeze(-2)).abs().to(labels.dtype)  # [B, K, K]
    # d == 0 only on the diagonal, where 1/D(0) is infinite; clamp then zero it instead.
    d_safe = d.clamp(min=1.0)
    delta = (1.0 / torch.log2(1.0 + d_safe) - 1.0 / torch.log2(2.0 + d_safe)).abs()
    delta = torch.where(d > 0, delta, torch.zeros_like(delta))
    w = _pair_gain_diffs(labels, valid, normalize) * delta * _list_size(valid, labels.dtype)
    return torch.where(_both_valid(valid), w, torch.zeros_like(w))


def label_diff_lambdaweight(labels: Tensor, ranks: Tensor, valid: Tensor, normalize: bool) -> Tensor:
    """``w_ij = |y_i - y_j|`` (Rax ``labeldiff_lambdaweight``); ranks and ``normalize`` are unused."""
    del ranks, normalize
    w = (labels.unsqueeze(-1) - labels.unsqueeze(-2)).abs()  # [B, K, K]
    return torch.where(_both_valid(valid), w, torch.zeros_like(w))


def constant_lambdaweight(labels: Tensor, ranks: Tensor, valid: Tensor, normalize: bool) -> Tensor:
    """``w_ij = 1``: ``lambda_loss`` then equals ``pair_logistic`` (RankNet, Burges et al., 2005)."""
    del ranks, normalize
    return _both_valid(valid).to(labels.dtype)


LAMBDA_WEIGHTS: dict[LambdaWeightName, LambdaWeightFn] = {
    "dcg": dcg_lambdaweight,
    "dcg2": dcg2_lambdaweight,
    "label_diff": label_diff_lambdaweight,
    "constant": constant_lambdaweight,
}


# --------------------------------------------------------------------------- losses


def point_mse(scores: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
    """Pointwise mean squared error, ``mean_{valid i} (s_i - y_i)^2``.

    Rax ``pointwise_mse_loss``; LiPO sec. 4 "pointwise MSE".
    """
    scores, labels, valid = prepare_lists(scores, labels, mask)
    return masked_mean((scores - labels).square(), valid)


def point_sigmoid(scores: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
    """Pointwise sigmoid cross-entropy, ``mean_{valid i} -[y_i log sig(s_i) + (1-y_i) log(1-sig(s_i))]``.

    Labels are soft targets and should lie in ``[0, 1]`` (they are not binarised). Computed in the
    stable logits form. Rax ``pointwise_sigmoid_loss``; LiPO sec. 4 "pointwise sigmoid".
    """
    scores, labels, valid = prepare_lists(scores, labels, mask)
    per_item = torch.nn.functional.binary_cross_entropy_with_logits(scores, labels, reduction="none")
    return masked_mean(per_item, valid)


def softmax(scores: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
    """Softmax cross-entropy (ListNet top-1; Cao et al., 2007), LiPO sec. 4.

    Per list: ``-sum_{valid i} (y_i / sum_{valid j} y_j) * log_softmax_valid(s)_i``; mean over lists.
    Labels should be non-negative. A list whose valid labels sum to 0 or less (or that has no valid
    item) defines no target distribution: it contributes nothing and is left out of the mean, as in
    Rax ``softmax_loss``.
    """
    scores, labels, valid = prepare_lists(scores, labels, mask)
    label_sum = labels.sum(-1, keepdim=True)  # [B, 1]
    has_target = label_sum.squeeze(-1) > 0  # [B]
    probs = labels / torch.where(label_sum > 0, label_sum, torch.ones_like(label_sum))  # [B, K]
    logits = torch.where(valid, scores, torch.full_like(scores, _MASKED_LOGIT))
    log_p = torch.log_softmax(logits, dim=-1)  # [B, K]
    xent = torch.where(valid, probs * log_p, torch.zeros_like(log_p))
    return masked_mean(-xent.sum(-1), has_target)


def list_mle(scores: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
    """Plackett-Luce negative log-likelihood (ListMLE; Xia et al., 2008); LiPO's DPO-PL, sec. 3.

    With items sorted by label descending (``pi``), per list
    ``-sum_{valid i} [s_pi(i) - log sum_{j >= i, valid} exp(s_pi(j))]``; mean over lists with at least
    one valid item. Tied labels are ordered by original index (stable), so the loss is only
    permutation-invariant up to that tie-breaking. Rax ``listmle_loss``.
    """
    scores, labels, valid = prepare_lists(scores, labels, mask)
    order = torch.argsort(compute_ranks(labels, valid), dim=-1)  # [B, K], valid items first
    s = scores.gather(-1, order)  # [B, K]
    v = valid.gather(-1, order)  # [B, K]
    logits = torch.where(v, s, torch.full_like(s, _MASKED_LOGIT))
    # log sum_{j >= i} exp(s_j): a logcumsumexp over the reversed list.
    suffix_lse = torch.logcumsumexp(logits.flip(-1), dim=-1).flip(-1)  # [B, K]
    nll = torch.where(v, suffix_lse - s, torch.zeros_like(s)).sum(-1)  # [B]
    return masked_mean(nll, valid.any(-1))


def pair_hinge(scores: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
    """Pairwise hinge, ``mean_{(i,j): y_i > y_j} max(0, 1 - (s_i - s_j))`` (RankSVM; Joachims, 2002).

    The mean pools the valid pairs of all lists; pairs with tied labels or a masked item do not
    count. Rax ``pairwise_hinge_loss``; LiPO sec. 4.
    """
    scores, labels, valid = prepare_lists(scores, labels, mask)
    diff, pairs = pair_diffs(scores, labels, valid)
    return masked_mean(torch.relu(1.0 - diff), pairs)


def pair_logistic(scores: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
    """Pairwise logistic, ``mean_{(i,j): y_i > y_j} log(1 + exp(-(s_i - s_j)))`` (RankNet).

    Burges et al., 2005. With ``K = 2`` and ``s = beta * (log pi - log pi_ref)`` it is exactly the DPO
    loss; LiPO sec. 3 calls this "DPO-BT". Valid pairs of all lists are pooled as in ``pair_hinge``.
    Rax ``pairwise_logistic_loss``.
    """
    scores, labels, valid = prepare_lists(scores, labels, mask)
    diff, pairs = pair_diffs(scores, labels, valid)
    return masked_mean(torch.nn.functional.softplus(-diff), pairs)


def lambda_loss(
    scores: Tensor,
    labels: Tensor,
    mask: Tensor | None = None,
    *,
    weight: LambdaWeightName = "dcg",
    normalize: bool = False,
) -> Tensor:
    """Lambda-weighted pairwise logistic loss: LiPO-lambda (LiPO sec. 4, Algorithm 1).

    ``sum_{(i,j): y_i > y_j} w_ij * log(1 + exp(-(s_i - s_j))) / #pairs``, pooled over the batch with
    the same normaliser as ``pair_logistic`` (so ``weight="constant"`` reproduces it exactly).
    ``w_ij`` comes from ``LAMBDA_WEIGHTS[weight]`` using ranks of the current scores; it is a
    constant with respect to autograd (LambdaRank; Burges, 2006). ``normalize`` divides gains by
    the list's ideal DCG (NDCG weights). Rax ``pairwise_logistic_loss`` with a ``lambdaweight_fn``.
    """
    if weight not in LAMBDA_WEIGHTS:
        raise ValueError(f"unknown lambda weight {weight!r}; expected one of {list(LAMBDA_WEIGHTS)}")
    scores, labels, valid = prepare_lists(scores, labels, mask)
    with torch.no_grad():
        ranks = compute_ranks(scores, valid)
        w = LAMBDA_WEIGHTS[weight](labels.detach(), ranks, valid, normalize)  # [B, K, K]
    diff, pairs = pair_diffs(scores, labels, valid)
    return masked_mean(w * torch.nn.functional.softplus(-diff), pairs)


LOSSES: dict[ObjectiveName, LossFn] = {
    "point_mse": point_mse,
    "point_sigmoid": point_sigmoid,
    "softmax": softmax,
    "pair_hinge": pair_hinge,
    "pair_logistic": pair_logistic,
    "list_mle": list_mle,
    "lambda": lambda_loss,
}
