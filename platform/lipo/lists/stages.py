"""The actor stages of build-lists: generate -> reference log-probs -> score + label, one Ray Data actor pool each.

Every stage is a callable class: `__init__` loads its model once per actor, `__call__` takes one block (one shard of
prompts, as a `WORK_SCHEMA` Arrow table) and returns it with its columns filled. Rows are never removed: a list that
must go is marked with a `drop` reason and passes through untouched, so the writer (`lipo.lists.shards`) can check
that its block is one whole shard and count every drop. Inside an actor, the rows are cut into micro-batches of `resources.<stage>.batch_size`
prompts per model call; because a block is always one whole shard, which prompts share a model batch (and hence
the floating-point padding pattern) is fixed by the config, so reruns and resumes reproduce the same numbers.

Why reference log-probs come before scoring: `tokenize_list` (the tokenisation training uses) drops responses that
are empty after truncation or duplicate another response's tokens. Applying those drops first means the scorer and
labeler see exactly the lists training will see, and the stored `labels` and `ref_logps` stay aligned 1:1 with
`responses` when training tokenises them again (it then drops nothing).

The stages can be run without Ray for tests: `ScoreStage(cfg.model_dump(mode="json"))(table)`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import torch

from lipo.data.records import LIST_SCHEMA, prompt_of
from lipo.data.tokenize import TokenizeSpec, tokenize_list
from lipo.labels import LabelError, labeler
from lipo.lists.config import BuildListsConfig
from lipo.lists.scorers import build_scorer
from lipo.models.generate import SamplingParams, sample
from lipo.models.loading import load_causal_lm, load_tokenizer
from lipo.models.packed_logps import score_lists

_FLOATS = pa.list_(pa.float64())
WORK_SCHEMA = pa.schema([
    ("shard", pa.int64()),
    ("id", pa.string()),
    ("prompt", pa.string()),
    LIST_SCHEMA.field("prompt_messages"),
    ("reference", pa.string()),
    ("seed", pa.int64()),
    ("responses", pa.list_(pa.string())),
    ("given", _FLOATS),  # the existing scorer's input numbers, aligned with responses
    ("rewards", _FLOATS),
    ("labels", _FLOATS),
    ("ref_logps", _FLOATS),
    ("drop", pa.string()),  # null while the list is kept; else why it was dropped
    ("events", pa.list_(pa.string())),  # countable facts: prompt_truncated, duplicate_candidate, ...
])

# Events that remove one candidate from a list (the rest, e.g. *_truncated, keep it); the manifest counts both.
CANDIDATE_DROPS = ("duplicate_candidate", "dropped_empty_response", "dropped_duplicate_response")


def work_table(shard_index: int, prompts: pa.Table) -> pa.Table:
    """One shard's prompt rows (`lipo.lists.prompts`) as the pipeline's input block."""
    rows = []
    for r in prompts.to_pylist():
        rows.append({**{k: r.get(k) for k in ("id", "prompt", "prompt_messages", "reference", "seed", "responses",
                                                "given")},
                     "shard": shard_index, "events": ["prompt_truncated"] if r.get("prompt_truncated") else []})
    return pa.Table.from_pylist(rows, schema=WORK_SCHEMA)


def _live(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["drop"] is None]


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _device(num_gpus: float) -> str:
    return "cuda" if num_gpus > 0 else "cpu"


class GenerateStage:
    """Samples K candidates per prompt from the SFT policy (`lipo.models.generate.sample`, seeded per prompt)."""

    def __init__(self, cfg: dict[str, Any]):
        self.cfg = BuildListsConfig.model_validate(cfg)
        g, res = self.cfg.generate, self.cfg.resources.generate
        device = _device(res.num_gpus)
        self.model = load_causal_lm(g.model, g.dtype, cuda=device == "cuda").to(device)
        self.tokenizer = load_tokenizer(g.model)
        self.params = SamplingParams(g.temperature, g.top_k, g.top_p, g.max_new_tokens, tuple(g.stop))
        self.batch_size = res.batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        g = self.cfg.generate
        rows = batch.to_pylist()
        for chunk in _chunks(_live(rows), self.batch_size):
            texts = sample(self.model, self.tokenizer, [prompt_of(r) for r in chunk], g.num_candidates,
                           [r["seed"] for r in chunk], self.params, self.cfg.input.max_prompt_tokens)  # [B][K]
            for row, candidates in zip(chunk, texts, strict=True):
                add_candidates(row, candidates, g.include_reference, g.dedup)
        return pa.Table.from_pylist(rows, schema=WORK_SCHEMA)


def add_candidates(row: dict[str, Any], candidates: list[str], include_reference: bool, dedup: bool) -> None:
    """Set `row`'s responses: the samples, plus its reference when asked, exact duplicates dropped when asked."""
    if include_reference and row.get("reference"):
        candidates = candidates + [row["reference"]]
    if dedup:
        unique = list(dict.fromkeys(candidates))  # keeps the first copy, in sampling order
        row["events"] = row["events"] + ["duplicate_candidate"] * (len(candidates) - len(unique))
        candidates = unique
    row["responses"] = candidates
    if len(candidates) < 2:
        row["drop"] = "generate: fewer than 2 distinct candidates"


class ReferenceStage:
    """Applies training's tokenisation drops, then computes `ref_logps` with the frozen reference model."""

    def __init__(self, cfg: dict[str, Any]):
        self.cfg = BuildListsConfig.model_validate(cfg)
        ref, res = self.cfg.reference, self.cfg.resources.reference
        spec = self.cfg.reference_model
        self.device = _device(res.num_gpus)
        self.model = load_causal_lm(spec, ref.dtype, ref.attn_implementation,
                                    cuda=self.device == "cuda").to(self.device).eval()
        self.tokenizer = load_tokenizer(spec)
        self.spec = TokenizeSpec(self.cfg.input.max_prompt_tokens, ref.max_response_tokens)
        self.batch_size, self.packing = res.batch_size, ref.packing

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        items = [(r, it) for r in _live(rows) if (it := tokenize_row(r, self.tokenizer, self.spec)) is not None]
        for chunk in _chunks(items, self.batch_size):
            with torch.no_grad():
                logps = score_lists(self.model, [it for _, it in chunk], self.tokenizer.pad_token_id,
                                    packing=self.packing).float().cpu()  # [B, K]
            for b, (row, it) in enumerate(chunk):
                row["ref_logps"] = logps[b, :len(it["response_ids"])].tolist()
        return pa.Table.from_pylist(rows, schema=WORK_SCHEMA)


def tokenize_row(row: dict[str, Any], tokenizer, spec: TokenizeSpec) -> dict | None:
    """Tokenise `row` exactly as training will, drop what training would drop (in place), return the token ids.

    `tokenize_list` (training's rules, not restated here) says which responses it kept; the same drops are applied
    to the row's `responses` and `given` columns.
    """
    item = {"prompt": row["prompt"], "prompt_messages": row["prompt_messages"], "responses": row["responses"]}
    tl, stats = tokenize_list(item, tokenizer, spec)
    for name in ("response_truncated", "dropped_empty_response", "dropped_duplicate_response"):
        row["events"] = row["events"] + [name] * stats.counts.get(name, 0)
    if tl is None:
        row["drop"] = "reference: fewer than 2 responses left after tokenisation"
        return None
    keep = tl["keep"]
    row["responses"] = [row["responses"][i] for i in keep]
    if row.get("given") is not None:
        row["given"] = [row["given"][i] for i in keep]
    # the batch builders behind score_lists read a `labels` field; its values play no part in the log-probs
    return {"prompt_ids": tl["prompt_ids"], "response_ids": tl["response_ids"], "labels": [0.0] * len(keep)}


class ScoreStage:
    """Scores every candidate (`lipo.lists.scorers`) and turns the scores into labels (`lipo.labels`)."""

    def __init__(self, cfg: dict[str, Any]):
        self.cfg = BuildListsConfig.model_validate(cfg)
        res = self.cfg.resources.score
        self.scorer = build_scorer(self.cfg.score, _device(res.num_gpus))
        self.label = labeler(self.cfg.label.method, self.cfg.label.temperature)  # resolved once, called per list
        self.batch_size = res.batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        for chunk in _chunks(_live(rows), self.batch_size):
            for row, scores in zip(chunk, self.scorer(chunk), strict=True):  # scores: [K] per row
                row["rewards"] = [float(s) for s in scores]
                try:
                    row["labels"] = self.label(row["rewards"])
                except LabelError as exc:
                    row["drop"] = str(exc)
        return pa.Table.from_pylist(rows, schema=WORK_SCHEMA)
