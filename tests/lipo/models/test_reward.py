"""lipo.models.reward's batching helpers: tokenise once keeping the end, length-sorted batches, lists of any K.

Run: python -m pytest -q tests/lipo/models/test_reward.py
"""

from __future__ import annotations

import torch

from lipo.models.reward import classify, length_batches, ordered_pairs, pairwise_matrices, pairwise_matrix, tail_ids
from lipo.models.tiny import byte_tokenizer, tiny_reward_model


def test_tail_ids_keep_the_end_of_a_long_text():
    tok = byte_tokenizer()
    assert tail_ids(tok, ["abcdef", "xy"], 3) == [tok("def")["input_ids"], tok("xy")["input_ids"]]
    assert tail_ids(tok, [], 3) == []


def test_length_batches_sort_longest_first_and_cover_every_index_once():
    batches = length_batches([2, 9, 4, 9, 1], 2)
    assert batches == [[1, 3], [2, 0], [4]]
    assert length_batches([], 4) == []


def test_ordered_pairs_are_row_major_off_diagonal():
    assert ordered_pairs(3) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    assert ordered_pairs(1) == []


def test_classify_returns_input_order_whatever_the_batch_size():
    model, tok = tiny_reward_model(seed=1), byte_tokenizer()
    texts = ["a", "a much longer text than the others", "mid length", "bb"]
    one = torch.stack([classify(model, tok, [t], batch_size=1)[0] for t in texts])  # [4]
    for bs in (1, 3, 4, 10):
        assert torch.allclose(classify(model, tok, texts, batch_size=bs), one, atol=1e-5)
    assert classify(model, tok, []).shape == (0,)


def test_pairwise_matrices_handle_lists_of_any_k():
    model, tok = tiny_reward_model(seed=2), byte_tokenizer()
    lists = [("p", ["x", "yy", "zzz"]), ("q", ["only"]), ("r", []), ("s", ["a", "bcd"])]
    got = pairwise_matrices(model, tok, lists, batch_size=4)
    assert [tuple(P.shape) for P in got] == [(3, 3), (1, 1), (0, 0), (2, 2)]
    assert got[1].item() == 0.5
    for (prompt, rs), P in zip(lists, got, strict=True):
        assert torch.allclose(P, pairwise_matrix(model, tok, prompt, rs, batch_size=1), atol=1e-5)


def test_bf16_reward_model_keeps_an_fp32_head():
    from lipo.models.reward_loading import load_reward_model

    full, tok = load_reward_model("builtin:tiny-reward", "float32")
    half, _ = load_reward_model("builtin:tiny-reward", "bfloat16")
    assert half.score.weight.dtype == torch.float32 and half.model.embed_tokens.weight.dtype == torch.bfloat16
    texts = ["a", "bb", "the same prompt, answer one", "the same prompt, answer two"]
    want, got = classify(full, tok, texts), classify(half, tok, texts)
    assert got.dtype == torch.float32 and torch.allclose(got, want, atol=0.05)
    assert len(set(got.tolist())) == len(texts)  # no ties from a bf16 scalar
