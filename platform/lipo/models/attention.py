"""Attention masks of packed lists, and the choice of attention kernel and of packing.

    impl = resolve_attn_implementation("auto", cuda=True)       # "flex_attention" on a GPU, "sdpa" on CPU
    masks = packed_attention(model, packed)                     # what model(attention_mask=...) takes
    rule = PackingRule.for_model(model, "auto", cuda=True)      # rule.pack(items) -> bool, rule.describe()

A packed row carries two ids per column (`lipo.data.packing`): `segment_ids` (which list; -1 on padding) and
`block_ids` (0 on a list's prompt, k + 1 on its response k). Query q may attend key j when both are in the same
list, j <= q, and j lies in the prompt or in q's own response; a padding column attends only to itself, so no
softmax row is empty. Sliding-window layers add `pos[q] - pos[j] < window`, from the position ids, since within
one response the position difference is the distance in the unpacked row.

Three forms of that one rule:
- `flex_attention`: a FlexAttention `BlockMask` built from the ids. No [L, L] tensor exists: the kernel skips
  blocks that are fully masked and evaluates the rule inside the rest, so attention costs what the unpacked rows
  cost. FlexAttention has no backward on CPU in torch 2.13, hence `auto` means flex only on a GPU.
- `sdpa`: a dense bool [R, 1, L, L] mask (True = attend), built on the device from the ids.
- `eager`: the same mask as additive floats (0 / dtype min), since eager adds the mask to the scores.

How masks reach attention in transformers 5.x: `masking_utils._preprocess_mask_arguments` returns any 4-D mask or
`BlockMask` as-is. Sliding-window layers build their window into the mask, which transformers skips for a custom
mask, so the window is applied here (`MASK_STYLE`).

Packing choice (`data.packing: auto`): packing saves tokens (the prompt once instead of K times) but a dense mask
costs O(L^2) and forces SDPA off its fastest kernels. Measured: on CPU packing wins from K=2 (1.20x at a token
saving of 1.33x; benchmarks/results/packing.md); on an H200 with the dense mask it lost at K=2 (0.80x at a saving
of 1.5x) and barely won at K=8 (1.06x under ZeRO-3 at 2.4x). Hence a micro-batch is packed when its saving
(unpacked tokens / packed tokens) reaches `MIN_SAVING[form]`: 1.0 under flex (any saving), 1.15 for a dense mask on
CPU, 2.0 for a dense mask on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flex_attention")
FLEX_BLOCK = 128  # FlexAttention's block size; packed rows are padded to a multiple of it (fewer recompiles)
MIN_SAVING = {"flex": 1.0, "dense-cpu": 1.15, "dense-gpu": 2.0}


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside DeepSpeed/DDP engines and PEFT wrappers (for its config only)."""
    m = model
    while isinstance(getattr(m, "module", None), torch.nn.Module):  # DeepSpeedEngine, DistributedDataParallel
        m = m.module
    if hasattr(m, "get_base_model"):  # peft.PeftModel
        m = m.get_base_model()
    return m


def attn_implementation(model: torch.nn.Module) -> str | None:
    config = getattr(unwrap(model), "config", None)
    return getattr(config, "_attn_implementation", None)


def supports_packing(model: torch.nn.Module) -> bool:
    """True if `model` computes exact packed log-probs: a verified family with eager, sdpa or flex attention."""
    config = getattr(unwrap(model), "config", None)
    return (getattr(config, "model_type", None) in MASK_STYLE
            and getattr(config, "_attn_implementation", None) in ATTN_IMPLEMENTATIONS)


def resolve_attn_implementation(requested: str, cuda: bool) -> str:
    """`auto` -> flex_attention on a GPU (when this torch has it), sdpa otherwise; anything else as given."""
    if requested != "auto":
        return requested
    try:
        import torch.nn.attention.flex_attention  # noqa: F401  (torch >= 2.5)
    except ImportError:
        return "sdpa"
    return "flex_attention" if cuda else "sdpa"


# --------------------------------------------------------------------------- the three mask forms


def dense_mask(packed: dict[str, torch.Tensor], window: int | None = None) -> torch.Tensor:
    """Bool [R, 1, L, L] (True = attend) from the packed ids, on their device."""
    seg, blk = packed["segment_ids"], packed["block_ids"]  # [R, L]
    L = seg.shape[1]
    col = torch.arange(L, device=seg.device)
    same_list = (seg.unsqueeze(2) == seg.unsqueeze(1)) & (seg >= 0).unsqueeze(2)  # [R, L, L]
    visible = (blk.unsqueeze(1) == 0) | (blk.unsqueeze(2) == blk.unsqueeze(1))  # [R, L, L]: prompt or own response
    mask = same_list & visible & (col.unsqueeze(1) >= col.unsqueeze(0))
    if window:
        pos = packed["position_ids"]
        mask &= (pos.unsqueeze(2) - pos.unsqueeze(1)) < window
    return (mask | torch.eye(L, dtype=torch.bool, device=seg.device)).unsqueeze(1)


def block_mask(packed: dict[str, torch.Tensor], window: int | None = None):
    """The same rule as `dense_mask`, as a FlexAttention BlockMask (compiled on a GPU, so no [L, L] tensor)."""
    from torch.nn.attention.flex_attention import create_block_mask

    seg, blk, pos = packed["segment_ids"], packed["block_ids"], packed["position_ids"]  # [R, L]
    R, L = seg.shape

    def rule(b, h, q, kv):
        same = (seg[b, q] == seg[b, kv]) & (seg[b, q] >= 0) & (q >= kv)
        allowed = same & ((blk[b, kv] == 0) | (blk[b, kv] == blk[b, q]))
        if window:
            allowed = allowed & (pos[b, q] - pos[b, kv] < window)
        return allowed | (q == kv)

    return create_block_mask(rule, R, None, L, L, device=seg.device, _compile=seg.is_cuda)


def packed_attention(model: torch.nn.Module, packed: dict[str, torch.Tensor]):
    """The packed mask in the form this model's attention takes: a tensor/BlockMask, or a {layer type: mask} dict."""
    config = unwrap(model).config
    impl = config._attn_implementation
    window = getattr(config, "sliding_window", None)
    dtype = _compute_dtype(model)

    def build(w: int | None):
        if impl == "flex_attention":
            return block_mask(packed, w)
        m = dense_mask(packed, w)
        if impl == "sdpa":
            return m  # bool: no dtype to match, and smaller than a float mask
        return torch.where(m, torch.zeros((), dtype=dtype, device=m.device), torch.finfo(dtype).min)

    style = MASK_STYLE[config.model_type]
    if style == "window":
        return build(window or None)
    if style == "layer_types":
        masks = {"full_attention": build(None)}
        if "sliding_attention" in set(getattr(config, "layer_types", None) or ["full_attention"]):
            masks["sliding_attention"] = build(window)
        return masks
    return build(None)


def _compute_dtype(model: torch.nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


# --------------------------------------------------------------------------- when to pack


def token_saving(items: list[dict]) -> float:
    """Unpacked tokens / packed tokens of these lists: K prompts become one."""
    packed = sum(len(it["prompt_ids"]) + sum(len(r) for r in it["response_ids"]) for it in items)
    unpacked = sum(len(it["prompt_ids"]) * len(it["response_ids"]) + sum(len(r) for r in it["response_ids"])
                   for it in items)
    return unpacked / max(1, packed)


@dataclass(frozen=True)
class PackingRule:
    """Whether to pack a micro-batch: never, always, or (auto) when its token saving reaches `min_saving`."""

    mode: str  # "off" | "on" | "auto"
    form: str  # "flex" | "dense-cpu" | "dense-gpu" | "unsupported"

    @classmethod
    def for_model(cls, model: torch.nn.Module, requested: bool | str, cuda: bool) -> PackingRule:
        """`cuda`: whether the model will run on a GPU (it may still be on the host while it is being set up)."""
        if not supports_packing(model):
            return cls("off", "unsupported")
        form = "flex" if attn_implementation(model) == "flex_attention" else ("dense-gpu" if cuda else "dense-cpu")
        mode = "auto" if requested == "auto" else ("on" if requested else "off")
        return cls(mode, form)

    @property
    def min_saving(self) -> float:
        return MIN_SAVING.get(self.form, float("inf"))

    def pack(self, items: list[dict]) -> bool:
        if self.mode != "auto":
            return self.mode == "on"
        return token_saving(items) >= self.min_saving

    def describe(self) -> str:
        if self.form == "unsupported":
            return "off (this model family/attention has no verified packed path)"
        how = "FlexAttention block masks" if self.form == "flex" else "a dense [L, L] mask"
        if self.mode == "auto":
            return f"auto: a micro-batch is packed when it saves >= {self.min_saving:g}x tokens ({how})"
        return f"{self.mode} ({how})" if self.mode == "on" else "off"
