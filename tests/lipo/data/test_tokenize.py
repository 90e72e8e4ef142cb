"""tokenize_list: the kept response indices, and labels / ref_logps carried through the drops, by hand.

The byte tokenizer maps 'a'..'h' to ids 67..74, 'q' to 83; BOS = 1, EOS = 2.
"""

from __future__ import annotations

from lipo.data.tokenize import TokenizeSpec, tokenize_list, tokenize_lists
from lipo.models.tiny import byte_tokenizer


def test_empty_and_duplicate_responses_are_dropped_and_keep_says_which_stayed():
    row = {"id": "r", "prompt": "q", "responses": ["ab", "", "cd", "ab", "efgh"],
           "labels": [1.0, 0.9, 0.5, 0.2, 0.0], "ref_logps": [-1.0, -2.0, -3.0, -4.0, -5.0]}
    tl, stats = tokenize_list(row, byte_tokenizer(), TokenizeSpec(max_prompt_tokens=64, max_response_tokens=3))
    # "" is EOS alone (empty), the second "ab" repeats the first; "efgh" + EOS keeps its first 3 tokens.
    assert tl["keep"] == [0, 2, 4]
    assert tl["prompt_ids"] == [1, 83]
    assert tl["response_ids"] == [[67, 68, 2], [69, 70, 2], [71, 72, 73]]
    assert tl["labels"] == [1.0, 0.5, 0.0] and tl["ref_logps"] == [-1.0, -3.0, -5.0] and tl["id"] == "r"
    assert stats.counts == {"lists_in": 1, "lists_kept": 1, "dropped_empty_response": 1,
                            "dropped_duplicate_response": 1, "response_truncated": 1}


def test_rows_without_labels_still_tokenise_and_short_lists_are_dropped():
    tok, spec = byte_tokenizer(), TokenizeSpec(64, 16)
    tl, _ = tokenize_list({"prompt": "q", "responses": ["", "ab", "cd"]}, tok, spec)  # build-lists, before labels
    assert tl["keep"] == [1, 2] and tl["labels"] is None and tl["ref_logps"] is None
    gone, stats = tokenize_list({"prompt": "q", "responses": ["ab", "ab"], "labels": [1.0, 0.0]}, tok, spec)
    assert gone is None and stats.counts["dropped_list_too_few_responses"] == 1
    kept, total = tokenize_lists([{"prompt": "q", "responses": ["ab", "ab"], "labels": [1.0, 0.0]},
                                  {"prompt": "q", "responses": ["a", "b"], "labels": [1.0, 0.0]}], tok, spec)
    assert [k["keep"] for k in kept] == [[0, 1]] and total.counts["lists_in"] == 2


def test_batched_tokenize_lists_equals_row_by_row_with_and_without_a_chat_template():
    """`tokenize_lists` encodes a chunk in one tokenizer call per kind; it must give `tokenize_list`'s ids exactly."""
    import random

    rng = random.Random(0)
    words = ["the", "a", "cat", "sat", "", "on", "mat", "é", "東京"]
    rows = [{"id": f"r{i}", "prompt": " ".join(rng.choices(words, k=rng.randint(1, 12))),
             "responses": [" ".join(rng.choices(words, k=rng.randint(0, 6))) for _ in range(rng.randint(2, 5))],
             "labels": [rng.random() for _ in range(5)]} for i in range(60)]
    rows.append({"id": "chat", "prompt_messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                 "prompt": None, "responses": ["x", "y"], "labels": [1.0, 0.0]})
    for r in rows:
        r["labels"] = r["labels"][: len(r["responses"])]
    chat = byte_tokenizer()
    chat.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}>"
    for tok in (byte_tokenizer(), chat):
        spec = TokenizeSpec(max_prompt_tokens=20, max_response_tokens=8)
        batched, stats = tokenize_lists(rows, tok, spec)
        one_by_one = [tokenize_list(r, tok, spec) for r in rows]
        assert batched == [tl for tl, _ in one_by_one if tl is not None]
        assert sum((s.counts for _, s in one_by_one), start=type(stats.counts)()) == stats.counts
