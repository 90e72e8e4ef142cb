"""The LM head applied only at scored positions, in chunks: values and gradients equal full-logits log-softmax.

Run: .venv/bin/python -m pytest tests/lipo/models/test_scored_logps.py -q
The reference here is the textbook computation (full logits from the model, log_softmax, gather), so the chunked,
checkpointed path is checked against something it shares no code with.
"""

from __future__ import annotations

import pytest
import torch

from lipo.data.collate import collate_lists
from lipo.data.packing import pack_lists
from lipo.models import logps as L
from lipo.models.packed_logps import packed_sequence_logps
from tests.lipo.models.test_packing import build, make_items


def full_logits_logps(model, batch) -> torch.Tensor:
    """[B, K] from the model's own logits over every position (what lipo did before chunking)."""
    ids, attn, resp = (batch[k] for k in ("input_ids", "attention_mask", "response_mask"))
    B, K, T = ids.shape
    logits = model(input_ids=ids.view(-1, T), attention_mask=attn.view(-1, T)).logits  # [B*K, T, V]
    lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids.view(-1, T)[:, 1:, None]).squeeze(-1)
    return (lp * resp.view(-1, T)[:, 1:]).sum(-1).view(B, K) * batch["list_mask"]


def grads(model, fn) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    out = fn()  # [B, K]
    (out * torch.linspace(0.5, 1.5, out.numel()).view_as(out)).sum().backward()  # distinct weight per response
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2", "qwen2"])
def test_chunked_head_matches_full_logits(family, monkeypatch):
    monkeypatch.setattr(L, "CHUNK_ELEMENTS", 259 * 7)  # 7 rows per chunk: many chunks and a ragged last one
    monkeypatch.setattr(L, "RECOMPUTE_ABOVE", 0)  # checkpointed chunks under autograd too
    model = build(family, "eager" if family == "gemma2" else "sdpa")
    items = make_items(4, seed=11)
    batch = collate_lists(items, 0)
    want_g = grads(model, lambda: full_logits_logps(model, batch))
    got_g = grads(model, lambda: L.sequence_logps(model, batch))
    packed_g = grads(model, lambda: packed_sequence_logps(model, pack_lists(items, 0)))
    with torch.no_grad():
        want = full_logits_logps(model, batch)
        torch.testing.assert_close(L.sequence_logps(model, batch), want, atol=1e-5, rtol=1e-6)  # fp32 sums
        torch.testing.assert_close(packed_sequence_logps(model, pack_lists(items, 0)), want, atol=1e-5, rtol=1e-6)
    assert want_g.keys() == got_g.keys() == packed_g.keys() and len(want_g) > 0
    for name in want_g:
        torch.testing.assert_close(got_g[name], want_g[name], atol=1e-5, rtol=0, msg=name)
        torch.testing.assert_close(packed_g[name], want_g[name], atol=1e-5, rtol=0, msg=name)


def test_head_sees_one_column_and_passes_through_otherwise():
    model = build("llama")
    head = model.get_output_embeddings()
    shapes = []
    handle = head.register_forward_hook(lambda m, a, out: shapes.append(tuple(a[0].shape)))
    batch = collate_lists(make_items(2, seed=12), 0)
    with torch.no_grad():
        L.sequence_logps(model, batch)
        h = torch.randn(3, 5, 64)
        assert head(h).shape == (3, 5, 259)  # outside a capture the kept hook changes nothing
        assert model(input_ids=batch["input_ids"][0]).logits.shape[1] == batch["input_ids"].shape[-1]
    handle.remove()
    n_rows = int(batch["list_mask"].sum())
    # First call: inside the model's forward, one column per row; then only the scored positions, in chunks.
    assert shapes[0][:2] == (n_rows, 1)
    assert sum(s[0] for s in shapes[1:-2]) == int(batch["response_mask"][..., 1:].sum())
    assert len(head._forward_pre_hooks) == 1  # registered once, not once per call


def test_concurrent_callers_on_one_model_get_their_own_results():
    # A Serve replica scores concurrent requests on threads that share one model: each capture is per thread.
    from concurrent.futures import ThreadPoolExecutor

    model = build("llama")
    batches = [collate_lists(make_items(3, seed=s), 0) for s in range(8)]
    with torch.no_grad():
        want = [L.sequence_logps(model, b) for b in batches]

        def score(b):
            with torch.no_grad():
                return L.sequence_logps(model, b)

        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(score, batches * 3))
    for i, g in enumerate(got):
        torch.testing.assert_close(g, want[i % len(batches)], atol=1e-5, rtol=1e-6)


def test_unverified_family_uses_its_own_logits():
    import transformers as T

    config = T.GPTNeoXConfig(vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=512)
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(config).eval()
    batch = collate_lists(make_items(3, seed=13), 0)
    with torch.no_grad():
        torch.testing.assert_close(L.sequence_logps(model, batch), full_logits_logps(model, batch),
                                   atol=1e-5, rtol=0)


def test_zero3_partitioned_head_gives_the_same_gradients():
    # Under ZeRO-3 the head's weight is fetched by DeepSpeed's module hooks on every chunk call and again when the
    # backward pass recomputes a chunk; the gradients must still equal a plain model's.
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("zero3_grads.py")
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    worst = float(run.stdout.split("max-grad-diff")[-1].split()[0])
    assert worst < 1e-5, worst
