"""The four scorers of build-lists: one raw score per candidate response, for a batch of lists.

A scorer is anything that maps rows (each with a prompt, `responses`, and optionally `reference` / `given`) to one
list of floats per row, aligned with `responses`; `build_scorer` picks the factory by name from `SCORERS`:

- `pointwise`: a sequence-classification reward model reads prompt + response (through its chat template when it has
  one) and returns one scalar (`lipo.models.reward.pointwise_text` / `classify`).
- `pairwise`: the paper's pairwise ranking model reads every ordered pair (y_i, y_j) through `score.pair_template`;
  both orders are averaged to remove position bias, and the score of y_k is its win rate
  psi_k = (1/K) sum_i P(y_k beats y_i), counting (k, k) as 0.5 (`lipo.models.reward.pairwise_matrix`).
- `function`: a Python callable `module:func`, called as `func(prompt, response, **score.function_kwargs)` (plus
  `reference=` with `score.pass_reference`), for verifiable rewards. It must return a real number.
- `existing`: the numbers already in the input column `score.field` (labels or ratings).

    scorer = build_scorer(cfg.score, device="cpu")
    scores = scorer(rows)   # [[s_1, ..., s_K] per row]; the caller sizes `rows` (resources.score.batch_size)
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Any, Protocol

from lipo.data.records import prompt_of
from lipo.errors import LipoError
from lipo.lists.config import ScoreConfig, ScorerName
from lipo.models.reward import classify, pairwise_matrix, pointwise_text, winrate_labels
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


class PointwiseScorer:
    def __init__(self, model, tokenizer, max_tokens: int):
        self.model, self.tokenizer, self.max_tokens = model, tokenizer, max_tokens

    def __call__(self, rows: list[dict[str, Any]]) -> list[list[float]]:
        # one classifier pass over every (prompt, response) of the micro-batch, then split back per list
        texts = [pointwise_text(prompt_of(r), y, self.tokenizer) for r in rows for y in r["responses"]]
        flat = classify(self.model, self.tokenizer, texts, self.max_tokens, max(1, len(texts))).tolist()  # [sum K]
        out, i = [], 0
        for r in rows:
            out.append(flat[i:i + len(r["responses"])])
            i += len(r["responses"])
        return out


class PairwiseScorer:
    def __init__(self, model, tokenizer, template: str, max_tokens: int):
        self.model, self.tokenizer, self.template, self.max_tokens = model, tokenizer, template, max_tokens

    def __call__(self, rows: list[dict[str, Any]]) -> list[list[float]]:
        out = []
        for r in rows:
            P = pairwise_matrix(self.model, self.tokenizer, prompt_of(r), r["responses"], self.template,
                                self.max_tokens)  # [K, K], P[i, j] = P(y_i beats y_j), debiased
            out.append(winrate_labels(P).tolist())  # [K]
        return out


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
    return PointwiseScorer(model.to(device), tok, cfg.max_tokens)


def _pairwise(cfg: ScoreConfig, device: str) -> Scorer:
    model, tok = load_reward_model(cfg.model, cfg.dtype)
    return PairwiseScorer(model.to(device), tok, cfg.pair_template or DEFAULT_PAIR_TEMPLATE, cfg.max_tokens)


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
