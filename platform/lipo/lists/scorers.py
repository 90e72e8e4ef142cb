"""The four scorers of build-lists: one raw score per candidate response, for a batch of lists.

A scorer is anything that maps rows (each with a prompt, `responses`, and optionally `reference` / `given`) to one
list of floats per row, aligned with `responses`; `build_scorer` picks the factory by name from `SCORERS`:

- `pointwise`: a sequence-classification reward model reads prompt + response (through its chat template when it has
  one) and returns one scalar (`lipo.models.reward.pointwise_text` / `classify`).
- `pairwise`: the paper's pairwise ranking model reads every ordered pair (y_i, y_j) through `score.pair_template`;
  both orders are averaged to remove position bias, and the score of y_k is its win rate
  psi_k = (1/K) sum_i P(y_k beats y_i), counting (k, k) as 0.5 (`lipo.models.reward.pairwise_matrices`).
- `function`: a Python callable `module:func`, called as `func(prompt, response, **score.function_kwargs)` (plus
  `reference=` with `score.pass_reference`), for verifiable rewards. It must return a real number.
- `existing`: the numbers already in the input column `score.field` (labels or ratings).

The two model scorers batch across lists: every text of the micro-batch (sum_b K_b for pointwise, sum_b K_b (K_b - 1)
ordered pairs for pairwise) is tokenised once, sorted by token length, and run in forwards of `score.max_batch_size`
sequences, whatever list each comes from; the scores come back in the rows' order.

    scorer = build_scorer(cfg.score, device="cpu")
    scores = scorer(rows)   # [[s_1, ..., s_K] per row]; the caller sizes `rows` (resources.score.batch_size)

Tests: `python -m pytest -q tests/lipo/lists/test_scorers.py`; throughput: `python benchmarks/reward_scoring.py`.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Any, Protocol

from lipo.data.records import prompt_of
from lipo.errors import LipoError
from lipo.lists.config import ScoreConfig, ScorerName
from lipo.models.reward import classify, pairwise_matrices, pointwise_text, winrate_labels
from lipo.models.reward_loading import load_reward_model
from lipo.models.templates import DEFAULT_PAIR_TEMPLATE


class Scorer(Protocol):
    def __call__(self, rows: list[dict[str, Any]]) -> list[list[float]]: ...


def resolve_function(path: str, key: str = "score.function") -> Callable[..., Any]:
    """The callable at `module:func`; a LipoError naming the key if it cannot be imported."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise LipoError(f"{key}: cannot import module '{module_name}' of '{path}' ({exc})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise LipoError(f"{key}: module '{module_name}' has no callable '{attr}'")
    return fn


def reference_similarity(prompt: Any, response: str, reference: str | None = None) -> float:
    """A ready-made verifiable reward for the function scorer: similarity in [0, 1] of the response to the
    reference answer (difflib's ratio on stripped text; 1.0 = exact match). Use with `score.pass_reference: true`."""
    if reference is None:
        raise ValueError("reference_similarity needs the prompt's `reference` (set score.pass_reference: true)")
    return difflib.SequenceMatcher(None, response.strip(), reference.strip()).ratio()


def split_by_list(flat: list[float], rows: list[dict[str, Any]]) -> list[list[float]]:
    """[sum K] scores back to one [K] list per row, in the rows' order."""
    out, at = [], 0
    for r in rows:
        out.append(flat[at:at + len(r["responses"])])
        at += len(r["responses"])
    return out


class PointwiseScorer:
    def __init__(self, model, tokenizer, max_tokens: int, max_batch_size: int = 32):
        self.model, self.tokenizer, self.max_tokens, self.max_batch_size = model, tokenizer, max_tokens, max_batch_size

    def __call__(self, rows: list[dict[str, Any]]) -> list[list[float]]:
        # every (prompt, response) of the micro-batch, in forwards of max_batch_size, then split back per list
        texts = [pointwise_text(prompt_of(r), y, self.tokenizer) for r in rows for y in r["responses"]]
        flat = classify(self.model, self.tokenizer, texts, self.max_tokens, self.max_batch_size).tolist()  # [sum K]
        return split_by_list(flat, rows)


class PairwiseScorer:
    def __init__(self, model, tokenizer, template: str, max_tokens: int, max_batch_size: int = 32):
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.max_tokens, self.max_batch_size = max_tokens, max_batch_size

    def __call__(self, rows: list[dict[str, Any]]) -> list[list[float]]:
        Ps = pairwise_matrices(self.model, self.tokenizer, [(prompt_of(r), r["responses"]) for r in rows],
                               self.template, self.max_tokens, self.max_batch_size)  # [K, K] per row, debiased
        return [winrate_labels(P).tolist() for P in Ps]  # [K] per row


class FunctionScorer:
    def __init__(self, path: str, kwargs: dict[str, Any], pass_reference: bool):
        self.path, self.fn, self.kwargs, self.pass_reference = path, resolve_function(path), kwargs, pass_reference

    def _one(self, row: dict[str, Any], response: str) -> float:
        extra = {"reference": row.get("reference")} if self.pass_reference else {}
        try:
            value = self.fn(prompt_of(row), response, **self.kwargs, **extra)
        except Exception as exc:  # the user's function failed: name it and the row, keep its message
            raise LipoError(f"score.function {self.path} raised {type(exc).__name__} on id '{row['id']}': "
                            f"{exc}".splitlines()[0]) from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise LipoError(f"score.function {self.path} returned {type(value).__name__} on id '{row['id']}'; "
                            "it must return a number")
        return float(value)

    def __call__(self, rows: list[dict[str, Any]]) -> list[list[float]]:
        return [[self._one(r, y) for y in r["responses"]] for r in rows]


class ExistingScorer:
    def __call__(self, rows: list[dict[str, Any]]) -> list[list[float]]:
        return [list(r["given"]) for r in rows]


def _pointwise(cfg: ScoreConfig, device: str) -> Scorer:
    model, tok = load_reward_model(cfg.model, cfg.dtype)
    return PointwiseScorer(model.to(device), tok, cfg.max_tokens, cfg.max_batch_size)


def _pairwise(cfg: ScoreConfig, device: str) -> Scorer:
    model, tok = load_reward_model(cfg.model, cfg.dtype)
    return PairwiseScorer(model.to(device), tok, cfg.pair_template or DEFAULT_PAIR_TEMPLATE, cfg.max_tokens,
                          cfg.max_batch_size)


def _function(cfg: ScoreConfig, device: str) -> Scorer:
    return FunctionScorer(cfg.function, cfg.function_kwargs, cfg.pass_reference)


def _existing(cfg: ScoreConfig, device: str) -> Scorer:
    return ExistingScorer()


# `score.name` -> the scorer's factory; looked up once per actor (`build_scorer`), never per batch.
SCORERS: dict[ScorerName, Callable[[ScoreConfig, str], Scorer]] = {
    "pointwise": _pointwise, "pairwise": _pairwise, "function": _function, "existing": _existing}


def build_scorer(cfg: ScoreConfig, device: str = "cpu") -> Scorer:
    """The scorer `cfg.name` names, with its model loaded onto `device`."""
    return SCORERS[cfg.name](cfg, device)
