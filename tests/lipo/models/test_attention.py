"""Packed attention in its three forms (flex block mask, dense bool, additive float) and the packing choice.

Run: .venv/bin/python -m pytest tests/lipo/models/test_attention.py -q
FlexAttention has no backward on CPU in torch 2.13, so flex is checked here forward-only (no grad); its gradients
are checked on a GPU by benchmarks/gpu_check.py, which fails on any parity error.
"""

from __future__ import annotations

import pytest
import torch

from lipo.data.collate import collate_lists
from lipo.data.packing import pack_lists
from lipo.models.attention import (PackingRule, block_mask, dense_mask, resolve_attn_implementation,
                                   token_saving)
from lipo.models.logps import sequence_logps
from lipo.models.packed_logps import make_batch, packed_sequence_logps, score_lists
from tests.lipo.models.test_packing import build, make_items


def test_flex_forward_matches_unpacked():
    # One shape only: every new shape is an inductor compile on CPU (tens of seconds). Sliding-window variants are
    # left to the GPU suite: torch 2.13's CPU flex template fails to compile a window rule (a C++ codegen error),
    # and CPU training never uses flex (`auto` picks sdpa there).
    sdpa, flex = build("llama", "sdpa"), build("llama", "flex_attention")
    items = make_items(5, seed=21)
    with torch.no_grad():
        want = sequence_logps(sdpa, collate_lists(items, 0))
        got = score_lists(flex, items, 0, packing=True, token_budget=200)  # several lists a row, padded to 128
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-6)


def test_block_mask_and_dense_mask_are_the_same_rule():
    packed = pack_lists(make_items(3, seed=22), 0, token_budget=60)
    pos = packed["position_ids"]
    for window in (None, 4):
        dense = dense_mask(packed, window)[:, 0]  # [R, L, L]
        bm = block_mask(packed, window)
        R, L = packed["segment_ids"].shape
        q, kv = torch.meshgrid(torch.arange(L), torch.arange(L), indexing="ij")
        for b in range(R):
            got = bm.mask_mod(torch.tensor(b), torch.tensor(0), q, kv)
            assert torch.equal(got, dense[b]), (b, window)
    assert pos.shape == packed["segment_ids"].shape


def test_pad_to_keeps_values():
    model = build("llama")
    items = make_items(3, seed=23)
    p = make_batch(items, 0, True, pad_to=64)
    assert p["input_ids"].shape[1] % 64 == 0
    with torch.no_grad():
        torch.testing.assert_close(packed_sequence_logps(model, p), packed_sequence_logps(model, pack_lists(items, 0)),
                                   atol=1e-6, rtol=0)


def test_token_saving_by_hand():
    # prompt 4, responses 2 and 3: unpacked (4+2)+(4+3)=13 tokens, packed 4+2+3=9
    assert token_saving([{"prompt_ids": [1] * 4, "response_ids": [[2] * 2, [3] * 3]}]) == pytest.approx(13 / 9)


def test_packing_rule():
    sdpa, flex = build("llama", "sdpa"), build("llama", "flex_attention")
    k2 = [{"prompt_ids": [1] * 10, "response_ids": [[2] * 10, [3] * 10]}]  # saving 40/30 = 1.33
    k8 = [{"prompt_ids": [1] * 30, "response_ids": [[2] * 10] * 8}]  # saving 320/110 = 2.9
    assert PackingRule.for_model(flex, "auto", cuda=True).pack(k2)
    cpu, gpu = PackingRule.for_model(sdpa, "auto", cuda=False), PackingRule.for_model(sdpa, "auto", cuda=True)
    assert cpu.form == "dense-cpu" and cpu.pack(k2) and cpu.pack(k8)
    assert gpu.form == "dense-gpu" and not gpu.pack(k2) and gpu.pack(k8)
    assert not PackingRule.for_model(sdpa, False, cuda=False).pack(k8) and PackingRule.for_model(sdpa, True, cuda=True).pack(k2)
    assert "FlexAttention" in PackingRule.for_model(flex, "auto", cuda=True).describe()
    sdpa.config._attn_implementation = "flash_attention_2"  # takes no custom mask
    rule = PackingRule.for_model(sdpa, True, cuda=False)
    assert rule.form == "unsupported" and not rule.pack(k8) and "no verified packed path" in rule.describe()


def test_resolve_attn_implementation():
    assert resolve_attn_implementation("auto", cuda=False) == "sdpa"
    assert resolve_attn_implementation("auto", cuda=True) == "flex_attention"
    assert resolve_attn_implementation("eager", cuda=True) == "eager"


def test_auto_attention_falls_back_to_sdpa_where_flex_is_missing(monkeypatch, tmp_path):
    from lipo.models import loading

    build("llama").save_pretrained(tmp_path)
    asked = []
    real = loading.AutoModelForCausalLM.from_pretrained

    def from_pretrained(path, **kw):
        asked.append(kw["attn_implementation"])
        if kw["attn_implementation"] == "flex_attention":  # as transformers says for an architecture without it
            raise ValueError("does not support an attention implementation through flex_attention")
        return real(path, **kw)

    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    model = loading.load_causal_lm(str(tmp_path), attn_implementation="auto", cuda=True)
    assert asked == ["flex_attention", "sdpa"] and model.config._attn_implementation == "sdpa"
    assert loading.load_causal_lm("builtin:tiny-llama", attn_implementation="auto").config._attn_implementation == "sdpa"
