"""Shared-prefix packing: layout, and parity of packed_sequence_logps with sequence_logps for every supported family.

Run: /work/venv/bin/python -m pytest tests/lipo/models/test_packing.py -q
Every model is a 2-layer, width-64 random model with the 259-token byte vocabulary, built in memory from a fixed seed.
"""

from __future__ import annotations

import random

import pytest
import torch
import transformers as T

from lipo.data.collate import collate_lists, count_tokens
from lipo.data.packing import batches_by_token_budget, list_token_count, pack_lists, packed_token_count
from lipo.models.logps import sequence_logps
from lipo.models.attention import MASK_STYLE, dense_mask
from lipo.models.packed_logps import (batch_logps, batch_token_count, make_batch, packed_sequence_logps, score_lists,
                                      supports_packing)
from lipo.models.tiny import tiny_llama

COMMON = dict(vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2)
# Window 6 is shorter than most test sequences, so the sliding-window variants really exercise the window.
FAMILIES = {
    "llama": lambda: T.LlamaConfig(**COMMON),
    "mistral": lambda: T.MistralConfig(**COMMON, sliding_window=None),
    "mistral-window": lambda: T.MistralConfig(**COMMON, sliding_window=6),
    "qwen2": lambda: T.Qwen2Config(**COMMON),
    "qwen2-window": lambda: T.Qwen2Config(**COMMON, use_sliding_window=True, sliding_window=6, max_window_layers=1),
    "qwen3": lambda: T.Qwen3Config(**COMMON, head_dim=16),
    "gemma": lambda: T.GemmaConfig(**COMMON, head_dim=16),
    "gemma2": lambda: T.Gemma2Config(**COMMON, head_dim=16, sliding_window=6),
    "phi3": lambda: T.Phi3Config(**COMMON),
    "phi3-window": lambda: T.Phi3Config(**COMMON, sliding_window=6),
    "olmo2": lambda: T.Olmo2Config(**COMMON),
    "gpt2": lambda: T.GPT2Config(vocab_size=259, n_embd=64, n_layer=2, n_head=4, n_positions=512,
                                 bos_token_id=1, eos_token_id=2),
}
NO_SDPA = {"gemma2"}  # transformers has no sdpa path for Gemma2


def build(family: str, attn: str = "sdpa", dtype=torch.float32):
    config = FAMILIES[family]()
    config._attn_implementation = attn
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = T.AutoModelForCausalLM.from_config(config)
    model.config._attn_implementation = attn
    return model.to(dtype).eval()


def make_items(n: int = 5, seed: int = 0, ref: bool = False) -> list[dict]:
    """Lists with mixed prompt/response lengths and different K (2..5)."""
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        k = rng.randint(2, 5)
        items.append({
            "prompt_ids": [1] + [rng.randint(3, 258) for _ in range(rng.randint(1, 20))],
            "response_ids": [[rng.randint(3, 258) for _ in range(rng.randint(1, 10))] + [2] for _ in range(k)],
            "labels": [float(rng.randint(0, 3)) for _ in range(k)],
            "ref_logps": [rng.uniform(-40, -5) for _ in range(k)] if ref else None,
        })
    return items


# --------------------------------------------------------------------------- layout


def test_layout_of_one_list():
    items = [{"prompt_ids": [1, 10, 11], "response_ids": [[20, 21], [30, 31, 32]], "labels": [1.0, 0.0]}]
    p = pack_lists(items, pad_id=0)
    assert p["input_ids"].tolist() == [[1, 10, 11, 20, 21, 30, 31, 32]]
    assert p["position_ids"].tolist() == [[0, 1, 2, 3, 4, 3, 4, 5]]  # each response continues from ITS prompt
    assert p["segment_ids"].tolist() == [[0] * 8] and p["block_ids"].tolist() == [[0, 0, 0, 1, 1, 2, 2, 2]]
    m = dense_mask(p)[0, 0]  # [L, L]
    assert m.shape == (8, 8)
    assert m[2, :3].all() and not m[1, 2]  # prompt is causal
    assert m[4, :5].all() and not m[4, 5:].any()  # response 1 sees prompt + itself
    assert m[7, :3].all() and not m[7, 3:5].any() and m[7, 5:8].all()  # response 2 never sees response 1
    # Both first response tokens are predicted by the last prompt token (column 2).
    assert p["target_col"].tolist() == [3, 4, 5, 6, 7]
    assert p["source_col"].tolist() == [2, 3, 2, 5, 6]
    assert p["target_slot"].tolist() == [0, 0, 1, 1, 1]
    assert packed_token_count(p) == 8


def test_lists_never_see_each_other_and_padding_is_isolated():
    items = make_items(4)
    p = pack_lists(items, pad_id=0, token_budget=60)
    m = dense_mask(p)[:, 0]  # [R, L, L]
    R, L = p["input_ids"].shape
    assert m.diagonal(dim1=1, dim2=2).all()  # every row of the softmax has at least one key
    for r in range(R):
        real = p["segment_ids"][r] >= 0
        assert not m[r][real][:, ~real].any()  # real tokens never attend to padding
    assert packed_token_count(p) == sum(list_token_count(it) for it in items)


def test_batches_by_token_budget_is_greedy_and_ordered():
    items = [{"prompt_ids": [1] * p, "response_ids": [[2] * r]} for p, r in [(3, 2), (4, 1), (10, 10), (1, 1), (2, 2)]]
    # sizes 5, 5, 20, 2, 4
    assert batches_by_token_budget(items, 10) == [[0, 1], [2], [3, 4]]
    assert batches_by_token_budget(items, 100) == [[0, 1, 2, 3, 4]]
    assert batches_by_token_budget(items, 1) == [[0], [1], [2], [3], [4]]
    with pytest.raises(ValueError):
        batches_by_token_budget(items, 0)


def test_labels_masks_and_ref_match_collate():
    items = make_items(5, ref=True)
    c, p = collate_lists(items, 0, list_size=6), pack_lists(items, 0, token_budget=50, list_size=6)
    for key in ("labels", "list_mask", "ref_logps"):
        assert torch.equal(c[key], p[key]), key
    assert "ref_logps" not in pack_lists(make_items(2), 0)


# --------------------------------------------------------------------------- value and gradient parity


CASES = [(f, a) for f in FAMILIES for a in ("eager", "sdpa") if not (a == "sdpa" and f in NO_SDPA)]


@pytest.mark.parametrize("family,attn", CASES)
def test_values_match_unpacked(family, attn):
    model = build(family, attn)
    assert supports_packing(model)
    items = make_items(5, seed=1)
    with torch.no_grad():
        want = sequence_logps(model, collate_lists(items, 0))  # [B, K]
        per_list = packed_sequence_logps(model, pack_lists(items, 0))
        padding_free = packed_sequence_logps(model, pack_lists(items, 0, token_budget=70))
    assert pack_lists(items, 0, token_budget=70)["input_ids"].shape[0] < len(items)  # really several lists a row
    assert (want != 0).sum() == sum(len(it["response_ids"]) for it in items)
    torch.testing.assert_close(per_list, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(padding_free, want, atol=1e-5, rtol=0)


def test_values_match_in_float64_to_rounding():
    # In float64 the only difference is summation order, so any indexing mistake would show far above 1e-9.
    model = build("llama", "sdpa", torch.float64)
    items = make_items(6, seed=2)
    with torch.no_grad():
        want = sequence_logps(model, collate_lists(items, 0))
        got = packed_sequence_logps(model, pack_lists(items, 0, token_budget=90))
    torch.testing.assert_close(got, want, atol=1e-9, rtol=0)


@pytest.mark.parametrize("family,attn", [("llama", "sdpa"), ("llama", "eager"), ("qwen2-window", "sdpa"),
                                         ("gpt2", "sdpa")])
def test_gradients_match_unpacked(family, attn):
    model = build(family, attn)
    items = make_items(4, seed=3)

    def grads(fn):
        model.zero_grad(set_to_none=True)
        fn().sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    want = grads(lambda: sequence_logps(model, collate_lists(items, 0)))
    got = grads(lambda: packed_sequence_logps(model, pack_lists(items, 0, token_budget=60)))
    assert want.keys() == got.keys() and len(want) > 0
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=0, msg=name)


# --------------------------------------------------------------------------- support detection and fallback


def test_unsupported_family_falls_back_with_equal_values():
    config = T.GPTNeoXConfig(vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=512)
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(config).eval()
    assert config.model_type not in MASK_STYLE and not supports_packing(model)
    items = make_items(3, seed=4)
    with torch.no_grad():
        want = sequence_logps(model, collate_lists(items, 0))
        got = score_lists(model, items, pad_id=0, packing=True)
    assert torch.equal(got, want)


def test_unsupported_attention_implementation():
    model = tiny_llama()
    assert supports_packing(model)
    model.config._attn_implementation = "flash_attention_2"  # takes no dense mask
    assert not supports_packing(model)
    assert not supports_packing(torch.nn.Linear(2, 2))


def test_supports_packing_sees_through_wrappers():
    class Engine(torch.nn.Module):  # stands in for a DeepSpeedEngine / DDP: the model is `.module`
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, **kw):
            return self.module(**kw)

    model = tiny_llama()
    engine = Engine(model)
    assert supports_packing(engine)
    items = make_items(3, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(score_lists(engine, items, 0, packing=True),
                                   sequence_logps(model, collate_lists(items, 0)), atol=1e-5, rtol=0)
    peft = pytest.importorskip("peft")
    lora = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert supports_packing(lora)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:  # LoRA starts as a no-op; make the adapter change the outputs
                p.normal_(0, 0.1)
        torch.testing.assert_close(score_lists(lora, items, 0, packing=True),
                                   sequence_logps(lora, collate_lists(items, 0)), atol=1e-5, rtol=0)


def test_score_lists_and_batch_helpers():
    model = tiny_llama()
    items = make_items(4, seed=6)
    with torch.no_grad():
        unpacked = score_lists(model, items, 0, packing=False)
        packed = score_lists(model, items, 0, packing=True, token_budget=64)
        torch.testing.assert_close(packed, unpacked, atol=1e-5, rtol=0)
        for packing in (False, True):
            batch = make_batch(items, 0, packing)
            torch.testing.assert_close(batch_logps(model, batch), unpacked, atol=1e-5, rtol=0)
    assert batch_token_count(make_batch(items, 0, False)) == count_tokens(collate_lists(items, 0))
    assert batch_token_count(make_batch(items, 0, True)) == sum(list_token_count(it) for it in items)
