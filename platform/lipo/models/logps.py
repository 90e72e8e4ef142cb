"""Summed response-token log-probabilities: the quantity every LiPO score is built from.

    logps = sequence_logps(model, batch)            # [B, K]
    scores = beta * (logps - batch["ref_logps"])    # [B, K]

Training, reference precomputation (build-lists) and evaluation all call this one function (or its packed twin,
`lipo.models.packed_logps`, which agrees with it to about 4e-6 in fp32), so the numbers match for the same weights
and tokens.
"""

from __future__ import annotations

import torch


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """Sum of log p(token_t | tokens_<t) over positions where `target_mask` is set.

    logits [N, T, V] predict input_ids shifted by one; target_mask [N, T] marks the tokens to score. Only the
    selected positions go through log_softmax, which saves memory for large vocabularies.
    """
    targets = input_ids[:, 1:]  # [N, T-1]
    mask = target_mask[:, 1:].bool()  # [N, T-1]
    picked = logits[:, :-1][mask].float()  # [M, V]
    lp = torch.log_softmax(picked, dim=-1).gather(-1, targets[mask].unsqueeze(-1)).squeeze(-1)  # [M]
    rows = torch.arange(mask.shape[0], device=mask.device).unsqueeze(1).expand_as(mask)[mask]  # [M]
    out = torch.zeros(mask.shape[0], dtype=lp.dtype, device=lp.device)
    return out.index_add(0, rows, lp)  # [N]


def sequence_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, K] summed log-probs of each response given its prompt; padded list slots get 0.

    batch: input_ids, attention_mask, response_mask [B, K, T] and list_mask [B, K] from `lipo.data.collate`.
    Padded slots are not run through the model at all.
    """
    input_ids = batch["input_ids"]
    B, K, T = input_ids.shape
    valid = batch["list_mask"].reshape(-1)  # [B*K]
    ids = input_ids.reshape(-1, T)[valid]  # [N, T]
    attn = batch["attention_mask"].reshape(-1, T)[valid]  # [N, T]
    resp = batch["response_mask"].reshape(-1, T)[valid]  # [N, T]
    # Trim the columns every row pads, so the forward pass sees no dead tail.
    width = int(attn.sum(-1).max().item()) if ids.shape[0] else 1
    ids, attn, resp = ids[:, :width], attn[:, :width], resp[:, :width]
    logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits  # [N, T, V]
    per_row = token_logps(logits, ids, resp)  # [N]
    out = torch.zeros(B * K, dtype=per_row.dtype, device=per_row.device)
    out = out.masked_scatter(valid, per_row) if per_row.numel() else out
    return out.reshape(B, K)
