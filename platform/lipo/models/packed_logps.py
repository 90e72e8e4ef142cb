"""Summed response log-probs from shared-prefix packed rows, and the one entry point that picks packed or not.

    logps = score_lists(model, items, pad_id, packing=True)   # [B, K], same order as collate_lists

`packed_sequence_logps` computes the quantity `sequence_logps` computes (sum of log p(response token | prompt,
earlier response tokens)) from a `pack_lists` batch. Packing needs a model that takes a custom 4-D attention mask
and explicit position ids; `supports_packing` says whether this one does, and `score_lists` falls back to the
unpacked path where it does not, so callers can ask for packing unconditionally.

How the custom mask reaches attention in transformers 5.x: `masking_utils._preprocess_mask_arguments` returns any
4-D mask as-is, so it goes straight to the attention function. `sdpa` takes a bool mask (True = attend); `eager` adds
the mask to the scores, so it needs an additive float mask (0 / dtype min). Flash-attention and flex kernels take no
dense mask and are not supported. Sliding-window layers build their window into the mask, which transformers skips
for a custom mask, so we apply the window ourselves from the position ids (see `_attention_masks`).
"""

from __future__ import annotations

import torch

from lipo.data.collate import collate_lists, count_tokens
from lipo.data.packing import is_packed, pack_lists, packed_token_count
from lipo.models.logps import sequence_logps

# How each verified family turns a custom 4-D mask into per-layer masks (tests/lipo/models/test_packing.py checks
# every entry for parity with the unpacked path):
#   "plain":  one mask for every layer, no sliding windows in the architecture;
#   "window": one mask for every layer; `config.sliding_window`, when set, applies to all layers;
#   "layer_types": the forward accepts a {layer type: mask} dict, layers pick by `config.layer_types`.
MASK_STYLE = {
    "llama": "plain",
    "gemma": "plain",
    "olmo2": "plain",
    "gpt2": "plain",
    "mistral": "window",
    "phi3": "window",
    "qwen2": "layer_types",
    "qwen3": "layer_types",
    "gemma2": "layer_types",
}
ATTN_IMPLEMENTATIONS = ("eager", "sdpa")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside DeepSpeed/DDP engines and PEFT wrappers (for its config only)."""
    m = model
    while isinstance(getattr(m, "module", None), torch.nn.Module):  # DeepSpeedEngine, DistributedDataParallel
        m = m.module
    if hasattr(m, "get_base_model"):  # peft.PeftModel
        m = m.get_base_model()
    return m


def supports_packing(model: torch.nn.Module) -> bool:
    """True if `model` computes exact packed log-probs: a verified family with `eager` or `sdpa` attention."""
    config = getattr(unwrap(model), "config", None)
    if config is None:
        return False
    return (getattr(config, "model_type", None) in MASK_STYLE
            and getattr(config, "_attn_implementation", None) in ATTN_IMPLEMENTATIONS)


def _windowed(mask: torch.Tensor, position_ids: torch.Tensor, window: int) -> torch.Tensor:
    # Within one prompt+response sequence, position difference equals the distance in the unpacked row, so this is
    # transformers' `kv_idx > q_idx - sliding_window` rule.
    dist = position_ids.unsqueeze(2) - position_ids.unsqueeze(1)  # [R, L, L]: query pos - key pos
    return mask & (dist < window).unsqueeze(1)


def _attention_masks(model: torch.nn.Module, packed: dict[str, torch.Tensor], dtype: torch.dtype):
    """The bool [R, 1, L, L] packed mask in the form this model's attention wants (tensor or per-layer-type dict)."""
    config = unwrap(model).config
    mask, pos = packed["attention_mask"], packed["position_ids"]  # [R, 1, L, L], [R, L]
    style = MASK_STYLE[config.model_type]
    window = getattr(config, "sliding_window", None)

    def form(m: torch.Tensor) -> torch.Tensor:
        if config._attn_implementation == "sdpa":
            return m  # bool: no dtype to match, and smaller than a float mask
        zero = torch.zeros((), dtype=dtype, device=m.device)
        return torch.where(m, zero, torch.finfo(dtype).min)  # eager adds the mask to the scores

    if style == "window":
        return form(_windowed(mask, pos, window) if window else mask)
    if style == "layer_types":
        types = set(getattr(config, "layer_types", None) or ["full_attention"])
        masks = {"full_attention": form(mask)}
        if "sliding_attention" in types:
            masks["sliding_attention"] = form(_windowed(mask, pos, window))
        return masks
    return form(mask)


def _compute_dtype(model: torch.nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def packed_sequence_logps(model: torch.nn.Module, packed: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, K] summed log-probs of each response given its prompt, from a `pack_lists` batch; padded slots get 0."""
    B, K = packed["list_mask"].shape
    ids = packed["input_ids"]  # [R, L]
    masks = _attention_masks(model, packed, _compute_dtype(model))
    logits = model(input_ids=ids, attention_mask=masks, position_ids=packed["position_ids"],
                   use_cache=False).logits  # [R, L, V]
    # Logits at source_col predict the token at target_col: the previous column inside a response, but the LAST
    # PROMPT column for every response's first token (the column before it holds the previous response).
    row = packed["target_row"]
    picked = logits[row, packed["source_col"]].float()  # [M, V]
    targets = ids[row, packed["target_col"]]  # [M]
    lp = torch.log_softmax(picked, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [M]
    out = torch.zeros(B * K, dtype=lp.dtype, device=lp.device)
    return out.index_add(0, packed["target_slot"], lp).reshape(B, K)


# --------------------------------------------------------------------------- one entry point for callers


def make_batch(items: list[dict], pad_id: int, packing: bool, token_budget: int | None = None,
               list_size: int | None = None) -> dict[str, torch.Tensor]:
    """`pack_lists` if `packing` else `collate_lists`; both carry labels, list_mask (and ref_logps) as [B, K]."""
    if packing:
        return pack_lists(items, pad_id, token_budget=token_budget, list_size=list_size)
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
    batch = make_batch(items, pad_id, packing and supports_packing(model), token_budget)
    device = device if device is not None else _device(model)
    return batch_logps(model, {k: v.to(device) for k, v in batch.items()})
