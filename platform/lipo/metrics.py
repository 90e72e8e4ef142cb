"""Ranking metrics for monitoring LiPO training and evaluation.

Every function takes ``scores`` ``[B, K]``, ``labels`` ``[B, K]`` and an optional bool ``mask``
``[B, K]`` (True = real item, None = all real) exactly like :mod:`lipo.losses`, and returns a 0-dim
float tensor, detached from autograd, on the scores' device (call ``.item()`` to log it).

Metrics never return NaN, so they can go straight to MLflow: when a batch has nothing to measure
(no valid pair, no list with a positive ideal DCG, ...) the value is 0.0.

Ranks come from :func:`lipo.losses.compute_ranks`: descending score, ties to the lower index,
masked items last.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lipo.losses import compute_ranks, dcg, ideal_dcg, masked_mean, pair_diffs, prepare_lists

__all__ = ["ndcg", "pairwise_accuracy", "top_bottom_margin"]


@torch.no_grad()
def ndcg(scores: Tensor, labels: Tensor, mask: Tensor | None = None, k: int | None = None) -> Tensor:
    """NDCG@k of the ranking induced by ``scores`` (Jarvelin & Kekalainen, 2002).

    ``DCG@k = sum_{valid i, r_i <= k} (2^{y_i} - 1) / log2(1 + r_i)``, divided by the DCG@k of the
    ideal (label-sorted) ordering. ``k=None`` uses all valid items. Averaged over the lists whose
    ideal DCG is positive; lists without any gain (e.g. all labels 0) are skipped.
    """
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1 or None; got {k}")
    scores, labels, valid = prepare_lists(scores.detach(), labels.detach(), mask)
    actual = dcg(labels, compute_ranks(scores, valid), valid, k)  # [B]
    ideal = ideal_dcg(labels, valid, k)  # [B]
    has_gain = ideal > 0
    ratio = actual / torch.where(has_gain, ideal, torch.ones_like(ideal))
    return masked_mean(ratio, has_gain)


@torch.no_grad()
def pairwise_accuracy(scores: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
    """Fraction of preference pairs ordered correctly by the scores.

    Over all pairs ``(i, j)`` in the batch with both items valid and ``y_i > y_j``: 1 if
    ``s_i > s_j``, 0.5 if ``s_i == s_j``, 0 otherwise; the mean of that (0.0 when there is no pair).
    """
    scores, labels, valid = prepare_lists(scores.detach(), labels.detach(), mask)
    diff, pairs = pair_diffs(scores, labels, valid)  # [B, K, K]
    correct = (diff > 0).to(scores.dtype) + 0.5 * (diff == 0).to(scores.dtype)
    return masked_mean(correct, pairs)


@torch.no_grad()
def top_bottom_margin(scores: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over lists of (score of the best-labelled item - score of the worst-labelled item).

    Among valid items; when several items share the top (or bottom) label, their scores are
    averaged, which keeps the metric independent of item order. Lists whose valid labels are all
    equal (including lists with fewer than two valid items) are skipped.
    """
    scores, labels, valid = prepare_lists(scores.detach(), labels.detach(), mask)
    inf = torch.full_like(labels, float("inf"))
    top_label = torch.where(valid, labels, -inf).amax(-1, keepdim=True)  # [B, 1]
    bottom_label = torch.where(valid, labels, inf).amin(-1, keepdim=True)  # [B, 1]
    is_top = valid & (labels == top_label)  # [B, K]
    is_bottom = valid & (labels == bottom_label)  # [B, K]
    zero = torch.zeros_like(scores)

    def _group_mean(members: Tensor) -> Tensor:
        total = torch.where(members, scores, zero).sum(-1)
        return total / members.sum(-1).clamp(min=1).to(scores.dtype)  # [B]

    margin = _group_mean(is_top) - _group_mean(is_bottom)  # [B]
    spread = (top_label > bottom_label).squeeze(-1) & valid.any(-1)  # [B]
    return masked_mean(margin, spread)
