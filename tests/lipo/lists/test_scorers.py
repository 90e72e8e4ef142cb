"""Scorers: the pairwise win-rate labels against a hand-computed example, and the function / existing scorers."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from lipo.errors import LipoError
from lipo.labels import labeler
from lipo.lists.config import ScoreConfig
from lipo.lists.scorers import ExistingScorer, FunctionScorer, PairwiseScorer, build_scorer, reference_similarity
from lipo.models.tiny import byte_tokenizer

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
