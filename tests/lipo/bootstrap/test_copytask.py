"""The quickstart world: an exact gold reward with partial credit, and files that are deterministic and disjoint."""

from __future__ import annotations

import json

import pytest

from lipo.bootstrap.copytask import PREFIX, WORD_LEN, gold_reward, make_world


@pytest.mark.parametrize("response,expected", [
    ("abcde", 1.0),
    ("abxde", 0.8),  # one substitution: 4 of 5 positions match
    ("xbcdy", 0.6),
    ("abcd", 0.8),  # a dropped last letter: 4 hits over the longer length 5
    ("abcdef", 5 / 6),  # an extra letter costs through the longer length
    ("bcdea", 0.0),  # shifted by one: no position matches
    ("", 0.0),
    ("  abcde \n", 1.0),  # surrounding whitespace is ignored
])
def test_gold_reward_by_hand(response, expected):
    assert gold_reward(PREFIX + "abcde\n", response) == pytest.approx(expected)


def read(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_world_is_deterministic_disjoint_and_labelled_by_gold(tmp_path):
    a = make_world(tmp_path / "a", n_demos=200, n_rm_lists=40, n_prompts=30, n_eval=20, noise=0.5, rm_list_size=6)
    b = make_world(tmp_path / "b", n_demos=200, n_rm_lists=40, n_prompts=30, n_eval=20, noise=0.5, rm_list_size=6)
    for key in a:
        assert a[key].read_bytes() == b[key].read_bytes(), key
    files = {key: read(path) for key, path in a.items()}
    assert [len(files[k]) for k in ("demos", "rm_lists", "rm_prompts", "prompts", "eval_prompts")] == [200, 40, 40,
                                                                                                       30, 20]
    words = {k: {r["prompt"] for r in rows} for k, rows in files.items() if k != "rm_prompts"}
    names = list(words)
    for i, x in enumerate(names):  # no prompt is shared between demos, reward-model data, lists and evaluation
        for y in names[i + 1:]:
            assert not words[x] & words[y], (x, y)
    assert [r["prompt"] for r in files["rm_prompts"]] == [r["prompt"] for r in files["rm_lists"]]
    for r in files["prompts"] + files["eval_prompts"] + files["rm_prompts"]:
        assert r["prompt"] == PREFIX + r["reference"] + "\n" and len(r["reference"]) == WORD_LEN
    for r in files["rm_lists"]:
        assert len(r["responses"]) == 6 == len(set(r["responses"]))
        assert r["labels"] == [round(gold_reward(r["prompt"], x), 6) for x in r["responses"]]
    exact = sum(gold_reward(r["prompt"], r["response"]) == 1.0 for r in files["demos"])
    assert 70 <= exact <= 130  # noise 0.5 of 200 demos: about half are corrupted (binomial sd ~7)


def test_noise_free_world_has_clean_demonstrations(tmp_path):
    demos = read(make_world(tmp_path, n_demos=50, n_rm_lists=8, n_prompts=4, n_eval=4, noise=0.0)["demos"])
    assert all(gold_reward(r["prompt"], r["response"]) == 1.0 for r in demos)
