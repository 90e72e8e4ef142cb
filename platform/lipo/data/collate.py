"""Pad tokenised lists into `[B, K, T]` tensors.

Row (b, k) holds prompt b followed by response k, right-padded. `response_mask` is 1 exactly on response tokens
(the tokens scored by `sequence_logps`); `list_mask` [B, K] marks real responses, since lists may be shorter than
the batch's K.

    batch = collate_lists(tokenized, pad_id=tok.pad_token_id)
"""

from __future__ import annotations

import torch


def collate_lists(items: list[dict], pad_id: int, list_size: int | None = None) -> dict[str, torch.Tensor]:
    """items: dicts with prompt_ids, response_ids, labels and optional ref_logps (see `tokenize_list`)."""
    B = len(items)
    K = max(len(it["response_ids"]) for it in items)
    if list_size is not None:
        K = max(K, list_size)
    T = max(len(it["prompt_ids"]) + len(r) for it in items for r in it["response_ids"])
    input_ids = torch.full((B, K, T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, K, T), dtype=torch.long)
    response_mask = torch.zeros((B, K, T), dtype=torch.long)
    labels = torch.zeros((B, K), dtype=torch.float32)
    list_mask = torch.zeros((B, K), dtype=torch.bool)
    has_ref = all(it.get("ref_logps") is not None for it in items)
    ref = torch.zeros((B, K), dtype=torch.float32)
    for b, it in enumerate(items):
        p = list(it["prompt_ids"])
        for k, r in enumerate(it["response_ids"]):
            n = len(p) + len(r)
            input_ids[b, k, :n] = torch.tensor(p + list(r))
            attention_mask[b, k, :n] = 1
            response_mask[b, k, len(p):n] = 1
            list_mask[b, k] = True
        labels[b, : len(it["labels"])] = torch.tensor(it["labels"], dtype=torch.float32)
        if has_ref:
            ref[b, : len(it["ref_logps"])] = torch.tensor(it["ref_logps"], dtype=torch.float32)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask,
             "labels": labels, "list_mask": list_mask}
    if has_ref:
        batch["ref_logps"] = ref
    return batch


def count_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens the forward pass processes (prompt tokens counted once per response row)."""
    return int(batch["attention_mask"].sum().item())
