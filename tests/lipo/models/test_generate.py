"""The sampler (`lipo.models.generate`): per-row determinism, filtering against a plain reference, the sampling
distribution, the shared prefill, greedy parity with `model.generate`, and both cache keywords.

Run: .venv/bin/python -m pytest tests/lipo/models/test_generate.py -q
Models are the 2-layer, width-64 random models of test_packing.py, built in memory.
"""

from __future__ import annotations

import math

import pytest
import torch

import lipo.models.generate as G
from lipo.models.generate import SamplingParams, draw, filter_logits, row_uniforms, sample_ids
from lipo.models.tiny import tiny_llama
from tests.lipo.models.test_packing import build

PAD, EOS = 0, 2
PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18, 19], [20, 21, 22]]
HOT = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=12)


@pytest.fixture(scope="module")
def model():
    return tiny_llama(seed=3)


def test_row_uniforms_are_a_function_of_seed_and_step_only():
    seeds = torch.tensor([0, 1, 2, 17_000, 2**40 + 5, -3])
    u = row_uniforms(seeds, 4)
    assert torch.equal(u, row_uniforms(seeds.flip(0), 4).flip(0))  # order-free
    assert torch.equal(u[3:4], row_uniforms(seeds[3:4], 4))  # batch-free
    assert not torch.equal(u, row_uniforms(seeds, 5))
    assert len(set(u.tolist())) == len(seeds)  # the high 32 bits of a seed count
    many = row_uniforms(torch.arange(20_000), 0)
    assert float(many.min()) > 0 and float(many.max()) < 1
    hist = torch.histc(many, bins=10, min=0, max=1) / len(many)  # [10]
    assert float((hist - 0.1).abs().max()) < 0.01  # ~ 7 standard errors of a bin share


def _reference_filter(row: list[float], p: SamplingParams) -> set[int]:
    """The tokens a plain per-row top-k then top-p filter keeps."""
    scaled = [x / p.temperature for x in row]
    kept = sorted(range(len(row)), key=lambda i: -scaled[i])
    if p.top_k > 0:
        kept = kept[:p.top_k]
    z = sum(math.exp(scaled[i]) for i in kept)
    out, mass = [], 0.0
    for i in kept:
        out.append(i)
        mass += math.exp(scaled[i]) / z
        if mass >= p.top_p:
            break
    return set(out)


@pytest.mark.parametrize("top_k,top_p,temperature", [(0, 1.0, 1.0), (5, 1.0, 1.0), (0, 0.7, 1.0), (8, 0.5, 0.7),
                                                     (0, 0.3, 2.0), (1, 0.9, 1.0)])
def test_filter_matches_a_plain_reference(top_k, top_p, temperature):
    p = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    logits = torch.randn(16, 40, generator=torch.Generator().manual_seed(top_k + int(10 * top_p)), dtype=torch.float64)
    out = filter_logits(logits, p)
    for i in range(len(logits)):
        assert set(torch.isfinite(out[i]).nonzero().flatten().tolist()) == _reference_filter(logits[i].tolist(), p)
        kept = torch.isfinite(out[i])
        assert torch.allclose(out[i][kept], logits[i][kept] / temperature)


def test_draws_follow_the_filtered_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]]).expand(30_000, 6)  # [N, 6]
    seeds = torch.arange(30_000)
    for p in (SamplingParams(temperature=1.0), SamplingParams(temperature=0.5, top_k=3)):
        want = torch.softmax(filter_logits(logits[:1].double(), p), dim=-1)[0]  # [6]
        got = torch.bincount(draw(logits, p, seeds, 0), minlength=6) / len(seeds)
        assert float((got - want).abs().max()) < 0.01  # standard error <= 0.003
        assert torch.all(got[want == 0] == 0)  # filtered tokens are never drawn
    assert torch.equal(draw(logits[:3], SamplingParams(temperature=0), seeds[:3], 0), torch.zeros(3, dtype=torch.long))


def test_a_rows_sample_depends_only_on_its_seed(model):
    alone = [sample_ids(model, [PROMPTS[i]], [100 + i], HOT, PAD, EOS)[0] for i in range(len(PROMPTS))]
    batched = sample_ids(model, PROMPTS, [100, 101, 102, 103], HOT, PAD, EOS)
    order = [2, 0, 3, 1]
    shuffled = sample_ids(model, [PROMPTS[i] for i in order], [100 + i for i in order], HOT, PAD, EOS)
    assert batched == alone
    assert shuffled == [alone[i] for i in order]
    assert sample_ids(model, PROMPTS[:1], [999], HOT, PAD, EOS) != alone[:1]  # and the seed matters


FAMILY_CASES = [("llama", "sdpa"), ("mistral-window", "sdpa"), ("qwen2-window", "sdpa"), ("gemma2", "eager"),
                ("phi3", "sdpa"), ("gpt2", "sdpa")]


def _prefill_shapes(model, fn):
    shapes = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)),
                                           with_kwargs=True)
    try:
        return fn(), shapes
    finally:
        hook.remove()


@pytest.mark.parametrize("family,attn", FAMILY_CASES)
def test_shared_prefill_equals_separate_prefills(family, attn):
    model = build(family, attn)  # the windowed families' window (6) is shorter than the longest prompt
    rows = [PROMPTS[2]] * 3 + [PROMPTS[1]] * 2 + [PROMPTS[0]]
    seeds = [7, 8, 9, 10, 11, 12]
    shared, shapes = _prefill_shapes(model, lambda: sample_ids(model, rows, seeds, HOT, PAD, EOS))
    assert shapes[0] == (3, len(PROMPTS[2]))  # one prefill row per distinct prompt
    assert all(w == (6, 1) for w in shapes[1:])
    assert shared == [sample_ids(model, [r], [s], HOT, PAD, EOS)[0] for r, s in zip(rows, seeds)]


def test_caches_with_state_layers_prefill_every_row(model, monkeypatch):
    rows, seeds = [PROMPTS[0]] * 3 + [PROMPTS[1]], [1, 2, 3, 4]
    shared = sample_ids(model, rows, seeds, HOT, PAD, EOS)
    monkeypatch.setattr(G, "_expandable", lambda cache: False)  # as for a linear-attention hybrid's cache
    alone, shapes = _prefill_shapes(model, lambda: sample_ids(model, rows, seeds, HOT, PAD, EOS))
    assert shapes[0] == (4, len(PROMPTS[0])) and alone == shared


@pytest.mark.parametrize("family,attn", FAMILY_CASES)
def test_greedy_matches_model_generate(family, attn):
    model = build(family, attn)
    greedy = SamplingParams(temperature=0, max_new_tokens=10)
    ours = sample_ids(model, PROMPTS[:3], [0, 0, 0], greedy, PAD, EOS)
    for prompt, got in zip(PROMPTS[:3], ours):
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             do_sample=False, max_new_tokens=10, pad_token_id=PAD, eos_token_id=EOS)
        want = out[0, len(prompt):].tolist()
        assert got == (want[:want.index(EOS)] if EOS in want else want), family


def _force_eos(model, after: dict[int, int]):
    """A hook on the LM head: row r's logits make EOS certain from its after[r]-th drawn token on."""
    calls = []

    def hook(module, args, out):
        calls.append(1)
        for r, k in after.items():
            if len(calls) > k:
                out[r, -1, EOS] = 1e4
        return out
    return model.lm_head.register_forward_hook(hook)


def test_eos_ends_a_row_and_is_excluded(model):
    free = sample_ids(model, PROMPTS[:3], [1, 2, 3], HOT, PAD, EOS)
    hook = _force_eos(model, {0: 3, 2: 0})
    try:
        got = sample_ids(model, PROMPTS[:3], [1, 2, 3], HOT, PAD, EOS)
    finally:
        hook.remove()
    assert got == [free[0][:3], free[1], []]  # row 1 is untouched by the others ending


def test_sparse_stop_checks_give_the_same_rows(model, monkeypatch):
    def run(after, every):
        monkeypatch.setattr(G, "_check_every", lambda device: every)  # 1: the CPU setting; 4: like a GPU's
        hook = _force_eos(model, after)
        try:
            return sample_ids(model, PROMPTS, [5, 6, 7, 8], HOT, PAD, EOS)
        finally:
            hook.remove()

    for after in ({0: 2, 1: 5, 2: 1, 3: 3}, {0: 0, 1: 0, 2: 0, 3: 0}):
        every = run(after, 1)
        assert run(after, 4) == every and [len(r) for r in every] == [after[i] for i in range(4)]


def test_on_step_sees_each_step_after_one_forward_and_changes_nothing(model, monkeypatch):
    """Streaming's hook: step t's ids reach the callback after exactly t + 1 forwards (the prefill, then one per
    step), so a token can leave before the next is computed; the rows are the callback's ids up to EOS, the same
    as without a callback, even with a GPU's sparse stop checks. A callback that returns True ends every row at
    that step."""
    monkeypatch.setattr(G, "_check_every", lambda device: 4)  # a GPU's setting: the callback must not depend on it
    plain = sample_ids(model, PROMPTS, [5, 6, 7, 8], HOT, PAD, EOS)
    seen, forwards = [], []
    hook = model.register_forward_pre_hook(lambda m, a, kw: forwards.append(1), with_kwargs=True)
    try:
        got = sample_ids(model, PROMPTS, [5, 6, 7, 8], HOT, PAD, EOS,
                         on_step=lambda t, nxt: seen.append((t, len(forwards), nxt.tolist())))
    finally:
        hook.remove()
    assert got == plain
    assert [(t, f) for t, f, _ in seen] == [(t, t + 1) for t in range(len(seen))]
    cols = [[ids[r] for _, _, ids in seen] for r in range(len(PROMPTS))]  # [N, T] as the callback saw them

    def upto_eos(row: list[int]) -> list[int]:
        return row[:row.index(EOS)] if EOS in row else row

    assert [upto_eos(c) for c in cols] == got
    cut = sample_ids(model, PROMPTS, [5, 6, 7, 8], HOT, PAD, EOS, on_step=lambda t, nxt: t == 2)  # readers gone
    assert cut == [upto_eos(c[:3]) for c in cols]


def test_deadlines_end_late_rows_and_stop_the_pass(model, monkeypatch):
    """A clock that advances one second per forward: a row whose deadline passes ends after the step that saw it
    late (its tokens cut there; the others untouched, batch-free), and once every row is late the pass stops
    there, running no further forward. Seeds outside int64 are a ValueError naming the row."""
    clock, forwards = [0.0], []
    monkeypatch.setattr(G, "time", type("Clock", (), {"time": staticmethod(lambda: clock[0])}))

    def tick(module, args, kwargs):
        forwards.append(1)
        clock[0] += 1.0  # step t is drawn after forward t + 1, at clock t + 1

    free = sample_ids(model, PROMPTS, [5, 6, 7, 8], HOT, PAD, EOS)
    hook = model.register_forward_pre_hook(tick, with_kwargs=True)
    try:
        got = sample_ids(model, PROMPTS, [5, 6, 7, 8], HOT, PAD, EOS, deadlines=[3.0, None, 0.5, None])
        some = len(forwards)
        forwards.clear()
        clock[0] = 0.0
        cut = sample_ids(model, PROMPTS, [5, 6, 7, 8], HOT, PAD, EOS, deadlines=[3.0] * 4)
    finally:
        hook.remove()
    assert got == [free[0][:3], free[1], free[2][:1], free[3]]  # late at step 2 (clock 3) and at step 0 (clock 1)
    assert some == min(max(len(r) for r in free[1::2]) + 1, HOT.max_new_tokens)  # ran on for rows 1 and 3
    assert cut == [row[:3] for row in free] and len(forwards) == 3  # the prefill + 2 decode forwards, no more
    with pytest.raises(ValueError, match=r"seeds\[1\] = 9223372036854775808 is outside"):
        sample_ids(model, PROMPTS[:2], [0, 2**63], HOT, PAD, EOS)
    assert G.sample_seed(2**53 + 7, 999) == (2**53 + 7) * 1000 + 999 <= G.SEED_MAX


def test_auto_dtype_is_bf16_on_a_gpu_and_fp32_on_cpu(monkeypatch):
    from lipo.models.loading import load_causal_lm, torch_dtype

    assert torch_dtype("auto", cuda=True) == torch.bfloat16 and torch_dtype("auto", cuda=False) == torch.float32
    assert torch_dtype("float16", cuda=True) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as in a Ray actor without GPUs
    assert next(load_causal_lm("builtin:tiny-llama", "auto").parameters()).dtype == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert next(load_causal_lm("builtin:tiny-llama", "auto").parameters()).dtype == torch.bfloat16


def test_only_key_value_caches_are_expanded():
    import transformers as T
    import transformers.cache_utils  # noqa: F401  (T.cache_utils below)
    from transformers import DynamicCache

    assert G._expandable(DynamicCache(config=T.Gemma2Config(num_hidden_layers=2)))  # full + sliding-window layers
    assert G._expandable(DynamicCache(config=T.MistralConfig(num_hidden_layers=2, sliding_window=8)))
    # a hybrid whose layers also carry convolution and recurrent states (their cache layers exist from 5.2x on)
    if hasattr(T, "FalconH1Config") and hasattr(T.cache_utils, "LinearAttentionLayer"):
        assert not G._expandable(DynamicCache(config=T.FalconH1Config(num_hidden_layers=2)))
