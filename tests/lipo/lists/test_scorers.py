"""Scorers: the pairwise win-rate labels against a hand-computed example, batching across lists (parity with
one-text-at-a-time scoring, forward counts, order), and the function / existing scorers.

Run: python -m pytest -q tests/lipo/lists/test_scorers.py
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from lipo.errors import LipoError
from lipo.labels import labeler
from lipo.lists.config import ScoreConfig
from lipo.lists.scorers import (ExistingScorer, FunctionScorer, PairwiseScorer, PointwiseScorer, build_scorer,
                                reference_similarity)
from lipo.models.reward import pair_text, pairwise_matrix, pointwise_text, winrate_labels
from lipo.models.templates import DEFAULT_PAIR_TEMPLATE
from lipo.models.tiny import byte_tokenizer, tiny_reward_model

# Raw P(first beats second) that a position-biased ranking model gives for the text "a|b".
RAW = {("x", "y"): 0.9, ("y", "x"): 0.3, ("x", "z"): 0.6, ("z", "x"): 0.6, ("y", "z"): 0.2, ("z", "y"): 0.7}


class PairStub(torch.nn.Module):
    """A 'ranking model' whose logit for the text "a|b" is log-odds RAW[(a, b)]."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer
        self.unused = torch.nn.Parameter(torch.zeros(()))  # classify() reads the device from the parameters

    def forward(self, input_ids, attention_mask):
        texts = [self.tokenizer.decode(ids[m.bool()]) for ids, m in zip(input_ids, attention_mask, strict=True)]
        p = torch.tensor([RAW[tuple(t.split("|"))] for t in texts])
        return SimpleNamespace(logits=torch.log(p / (1 - p)).unsqueeze(-1))  # [N, 1]


def test_pairwise_winrate_labels_match_hand_computation_with_position_flip_averaging():
    """Debiased P(a > b) = (P(a, b) + 1 - P(b, a)) / 2:
        P(x>y) = (0.9 + 1 - 0.3) / 2 = 0.8    P(y>x) = 0.2
        P(x>z) = (0.6 + 1 - 0.6) / 2 = 0.5    P(z>x) = 0.5
        P(y>z) = (0.2 + 1 - 0.7) / 2 = 0.25   P(z>y) = 0.75
    psi_k = mean_i P(k > i) with P(k > k) = 0.5:
        psi_x = (0.5 + 0.8 + 0.5) / 3 = 0.6
        psi_y = (0.2 + 0.5 + 0.25) / 3 = 0.31667
        psi_z = (0.5 + 0.75 + 0.5) / 3 = 0.58333
    Without the flip averaging, x would get (0.5 + 0.9 + 0.6) / 3 = 0.667 from its own row alone.
    """
    tok = byte_tokenizer()
    scorer = PairwiseScorer(PairStub(tok), tok, "{a}|{b}", max_tokens=64)
    row = {"id": "q", "prompt": "ignored", "prompt_messages": None, "responses": ["x", "y", "z"]}
    psi = labeler("winrate")(scorer([row])[0])
    assert psi == pytest.approx([0.6, 0.95 / 3, 1.75 / 3], abs=1e-6)
    assert sum(psi) == pytest.approx(1.5, abs=1e-6)  # sum_k psi_k = K / 2, since P(a>b) + P(b>a) = 1
    # Listing the responses in another order permutes the labels and changes nothing else.
    flipped = scorer([{**row, "responses": ["z", "x", "y"]}])[0]
    assert flipped == pytest.approx([psi[2], psi[0], psi[1]], abs=1e-6)


def test_builtin_pairwise_and_pointwise_scorers_run():
    rows = [{"id": "a", "prompt": "Reverse: ab", "prompt_messages": None, "responses": ["ba", "ab", "b"]}]
    winrates = build_scorer(ScoreConfig(name="pairwise", model="builtin:tiny-reward"))(rows)[0]
    assert len(winrates) == 3 and sum(winrates) == pytest.approx(1.5, abs=1e-5)
    rewards = build_scorer(ScoreConfig(name="pointwise", model="builtin:tiny-reward"))(rows * 2)
    assert len(rewards) == 2 and rewards[0] == pytest.approx(rewards[1]) and all(map(math.isfinite, rewards[0]))


def test_function_scorer_passes_kwargs_and_reference():
    scorer = FunctionScorer("lipo.lists.scorers:reference_similarity", {}, pass_reference=True)
    row = {"id": "a", "prompt": "Reverse: abc", "prompt_messages": None, "reference": "cba",
           "responses": ["cba", " cba ", "xyz"]}
    assert scorer([row]) == [[1.0, 1.0, 0.0]]
    assert reference_similarity("p", "cb", reference="cba") == pytest.approx(0.8)  # 2 * 2 matches / (2 + 3)


def test_function_scorer_errors_name_the_function_and_row():
    with pytest.raises(LipoError, match="score.function: cannot import module 'no_such_module'"):
        FunctionScorer("no_such_module:f", {}, False)
    with pytest.raises(LipoError, match="has no callable 'nope'"):
        FunctionScorer("lipo.lists.scorers:nope", {}, False)
    row = {"id": "r7", "prompt": "p", "prompt_messages": None, "responses": ["a", "b"]}
    with pytest.raises(LipoError, match="raised ValueError on id 'r7': boom"):
        FunctionScorer("lists_helpers:failing_reward", {}, False)([row])
    with pytest.raises(LipoError, match="returned str on id 'r7'"):
        FunctionScorer("lists_helpers:text_reward", {}, False)([row])


def test_existing_scorer_returns_the_given_numbers():
    assert ExistingScorer()([{"given": [3.0, 1.0]}]) == [[3.0, 1.0]]


# Lists of unequal K (1 to 5) and unequal prompt / response lengths; 6 texts of 20 pairs each way are scored.
ROWS = [{"id": "a", "prompt": "Reverse the word: cab\nAnswer:", "prompt_messages": None,
         "responses": ["bac", "b", "a much longer answer that is not the word"]},
        {"id": "b", "prompt": "Hi", "prompt_messages": None, "responses": ["yes", "no way, not at all"]},
        {"id": "c", "prompt": "Spell out 4 in words, please, and nothing else.", "prompt_messages": None,
         "responses": ["four", "FOUR", "4", "fore", "for sure it is four"]},
        {"id": "d", "prompt": "one", "prompt_messages": None, "responses": ["only one candidate"]}]
N_TEXTS = sum(len(r["responses"]) for r in ROWS)  # 11
N_PAIRS = sum(len(r["responses"]) * (len(r["responses"]) - 1) for r in ROWS)  # 6 + 2 + 20 + 0 = 28


@pytest.fixture(scope="module")
def rm():
    return tiny_reward_model(seed=3), byte_tokenizer()


class Forwards:
    """Counts the model's forwards and records each one's [n, T] input shape (a forward hook)."""

    def __init__(self, model):
        self.shapes: list[tuple[int, int]] = []
        self.handle = model.register_forward_hook(lambda mod, args, kw, out: self.shapes.append(
            tuple(kw["input_ids"].shape)), with_kwargs=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@torch.no_grad()
def alone(model, tok, text: str) -> float:
    """The logit of one text run by itself: no padding, no batch."""
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, 0].item()


def naive_winrates(model, tok, row) -> list[float]:
    """LiPO win rates by hand: each ordered pair alone, P(a > b) = (P(a, b) + 1 - P(b, a)) / 2, P(k > k) = 0.5."""
    rs, k = row["responses"], len(row["responses"])
    raw = {(i, j): torch.sigmoid(torch.tensor(alone(model, tok, pair_text(row["prompt"], rs[i], rs[j])))).item()
           for i in range(k) for j in range(k) if i != j}
    return [(0.5 + sum((raw[i, j] + 1 - raw[j, i]) / 2 for j in range(k) if j != i)) / k for i in range(k)]


@pytest.mark.parametrize("batch_size", [1, 5, N_PAIRS, N_PAIRS + 9])
def test_pairwise_batched_across_lists_equals_per_list_scoring(rm, batch_size):
    """Smaller than, equal to and larger than the 28 ordered pairs: ceil(28 / batch size) full, length-sorted
    forwards that span lists, and the win rates of one-pair-at-a-time scoring, in each row's response order."""
    model, tok = rm
    scorer = PairwiseScorer(model, tok, DEFAULT_PAIR_TEMPLATE, max_tokens=1024, max_batch_size=batch_size)
    with Forwards(model) as fw:
        got = scorer(ROWS)
    assert len(fw.shapes) == math.ceil(N_PAIRS / batch_size)
    assert [n for n, _ in fw.shapes] == [min(batch_size, N_PAIRS - i) for i in range(0, N_PAIRS, batch_size)]
    widths = [t for _, t in fw.shapes]
    assert widths == sorted(widths, reverse=True)  # longest first: each batch pads only to its own longest text
    assert [len(g) for g in got] == [len(r["responses"]) for r in ROWS] and got[3] == [0.5]
    for row, g in zip(ROWS, got, strict=True):
        assert g == pytest.approx(naive_winrates(model, tok, row), abs=1e-5)
        per_list = winrate_labels(pairwise_matrix(model, tok, row["prompt"], row["responses"])).tolist()
        assert g == pytest.approx(per_list, abs=1e-5)


def test_pairwise_matrix_rebuilt_per_list_is_debiased(rm):
    model, tok = rm
    P = pairwise_matrix(model, tok, ROWS[2]["prompt"], ROWS[2]["responses"], batch_size=7)  # [5, 5]
    assert P.shape == (5, 5) and torch.allclose(P + P.T, torch.ones(5, 5), atol=1e-6)
    assert torch.all(P.diagonal() == 0.5)


@pytest.mark.parametrize("batch_size", [1, 4, N_TEXTS, 64])
def test_pointwise_batched_across_lists_restores_order(rm, batch_size):
    model, tok = rm
    scorer = PointwiseScorer(model, tok, max_tokens=1024, max_batch_size=batch_size)
    with Forwards(model) as fw:
        got = scorer(ROWS)
    assert len(fw.shapes) == math.ceil(N_TEXTS / batch_size)
    widths = [t for _, t in fw.shapes]
    assert widths == sorted(widths, reverse=True)
    want = [[alone(model, tok, pointwise_text(r["prompt"], y, tok)) for y in r["responses"]] for r in ROWS]
    assert [len(g) for g in got] == [len(w) for w in want]
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w, abs=1e-5)


def test_score_config_max_batch_size_reaches_the_scorer():
    assert ScoreConfig(name="pointwise", model="builtin:tiny-reward").max_batch_size == 32
    with pytest.raises(ValueError, match="max_batch_size"):
        ScoreConfig(name="pointwise", model="builtin:tiny-reward", max_batch_size=0)
    scorer = build_scorer(ScoreConfig(name="pairwise", model="builtin:tiny-reward", max_batch_size=3))
    assert scorer.max_batch_size == 3
    with Forwards(scorer.model) as fw:
        scorer(ROWS[:2])
    assert len(fw.shapes) == math.ceil((6 + 2) / 3)
