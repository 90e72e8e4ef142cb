"""Summed response log-probs from shared-prefix packed rows, and the one entry point that picks packed or not.

    logps = score_lists(model, items, pad_id, packing=True)   # [B, K], same order as collate_lists

`packed_sequence_logps` computes the quantity `sequence_logps` computes (sum of log p(response token | prompt,
earlier response tokens)) from a `pack_lists` batch. Packing needs a verified model family and an attention that
takes a custom mask (`lipo.models.attention`: a FlexAttention block mask, or a dense mask for sdpa/eager);
`supports_packing` says whether this model qualifies, and `score_lists` falls back to the unpacked path where it
does not, so callers can ask for packing unconditionally. Both paths compute the LM head only at scored positions
(`lipo.models.logps.scored_token_logps`).
"""

from __future__ import annotations

import torch

from lipo.data.collate import collate_lists, count_tokens
from lipo.data.packing import is_packed, pack_lists, packed_token_count
from lipo.models.attention import FLEX_BLOCK, attn_implementation, packed_attention, supports_packing
from lipo.models.logps import scored_token_logps, sequence_logps

__all__ = ["batch_logps", "batch_token_count", "make_batch", "packed_sequence_logps", "score_lists",
           "supports_packing"]


def packed_sequence_logps(model: torch.nn.Module, packed: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, K] summed log-probs of each response given its prompt, from a `pack_lists` batch; padded slots get 0."""
    B, K = packed["list_mask"].shape
    ids = packed["input_ids"]  # [R, L]
    inputs = {"input_ids": ids, "attention_mask": packed_attention(model, packed),
              "position_ids": packed["position_ids"]}
    # Column source_col predicts the token at target_col: the previous column inside a response, but the LAST
    # PROMPT column for every response's first token (the column before it holds the previous response).
    row = packed["target_row"]
    lp = scored_token_logps(model, inputs, row, packed["source_col"], ids[row, packed["target_col"]])  # [M]
    out = torch.zeros(B * K, dtype=lp.dtype, device=lp.device)
    return out.index_add(0, packed["target_slot"], lp).reshape(B, K)


# --------------------------------------------------------------------------- one entry point for callers


def make_batch(items: list[dict], pad_id: int, packing: bool, token_budget: int | None = None,
               list_size: int | None = None, pad_to: int = 1) -> dict[str, torch.Tensor]:
    """`pack_lists` if `packing` else `collate_lists`; both carry labels, list_mask (and ref_logps) as [B, K]."""
    if packing:
        return pack_lists(items, pad_id, token_budget=token_budget, list_size=list_size, pad_to=pad_to)
    return collate_lists(items, pad_id, list_size=list_size)


def batch_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, K] log-probs of a `make_batch` batch, packed or not."""
    return packed_sequence_logps(model, batch) if is_packed(batch) else sequence_logps(model, batch)


def batch_token_count(batch: dict[str, torch.Tensor]) -> int:
    """Tokens the forward pass processes for a `make_batch` batch."""
    return packed_token_count(batch) if is_packed(batch) else count_tokens(batch)


def _device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def score_lists(model: torch.nn.Module, items: list[dict], pad_id: int, packing: bool = True,
                token_budget: int | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """[B, K] summed response log-probs of tokenised lists, packed when asked for and the model supports it.

    Gradients flow unless the caller wraps this in `torch.no_grad()`. The result is in `collate_lists` order.
    """
    pad_to = FLEX_BLOCK if attn_implementation(model) == "flex_attention" else 1
    batch = make_batch(items, pad_id, packing and supports_packing(model), token_budget, pad_to=pad_to)
    device = device if device is not None else _device(model)
    return batch_logps(model, {k: v.to(device) for k, v in batch.items()})
