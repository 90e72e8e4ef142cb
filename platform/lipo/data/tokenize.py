"""Tokenisation and truncation of list records, shared by training, build-lists (reference log-probs) and eval.

Rules (one place, so precomputed and on-the-fly log-probs see the same tokens):
- The prompt goes through the tokenizer's chat template when it has one (a plain string becomes one user message);
  otherwise it is encoded as text after the BOS token. `max_prompt_tokens` keeps the END of the prompt, where the
  question usually is.
- Each response is encoded without special tokens and closed with EOS, so the policy learns to stop.
  `max_response_tokens` keeps its START.
- A response with no tokens left, or whose tokens equal an earlier response of its list, is dropped (with its label,
  reward and reference log-prob); the first copy of a duplicate is kept. A list left with fewer than 2 responses is
  dropped. Every drop and truncation is counted in `TokenizeStats`.

    tl, stats = tokenize_list(row, tokenizer, TokenizeSpec(max_prompt_tokens=512, max_response_tokens=256))
    tl["keep"]   # indices into row["responses"] of the responses that survived, in order, e.g. [0, 2]

Training reads `prompt_ids`, `response_ids`, `labels`, `ref_logps` and `id`; build-lists
(`lipo.lists.stages.tokenize_row`) reads `keep` to apply the same drops to its own columns.
Tests: tests/lipo/data/test_tokenize.py.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from lipo.data.records import prompt_of


@dataclass(frozen=True)
class TokenizeSpec:
    max_prompt_tokens: int = 512
    max_response_tokens: int = 256


@dataclass
class TokenizeStats:
    """Counts of what tokenisation truncated or dropped; summed across batches and logged to MLflow."""

    counts: Counter = field(default_factory=Counter)

    def add(self, other: "TokenizeStats") -> None:
        self.counts.update(other.counts)

    def as_metrics(self, prefix: str = "data/") -> dict[str, float]:
        keys = ("lists_in", "lists_kept", "prompt_truncated", "response_truncated", "dropped_empty_response",
                "dropped_duplicate_response", "dropped_list_too_few_responses")
        return {f"{prefix}{k}": float(self.counts.get(k, 0)) for k in keys}

    def summary(self) -> str:
        m = self.as_metrics(prefix="")
        return ", ".join(f"{k}={int(v)}" for k, v in m.items())


def prompt_messages(prompt: Any) -> list[dict[str, str]]:
    """Chat messages for a prompt given as text (one user turn) or as a list of role/content messages."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def _prompt_text(prompt: Any, tokenizer) -> tuple[str, list[int]]:
    """(text to encode, ids to put before it): the chat template's text, or the plain text after BOS."""
    messages = prompt_messages(prompt)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), []
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return "\n".join(m["content"] for m in messages), bos


def _encode_many(texts: list[str], tokenizer) -> list[list[int]]:
    # One call for many texts: the per-call overhead of a Hugging Face tokenizer dominates short texts.
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []


def encode_prompts(prompts: list[Any], tokenizer) -> list[list[int]]:
    """Full (untruncated) prompt token ids, through the chat template when the tokenizer has one."""
    texts, heads = zip(*(_prompt_text(p, tokenizer) for p in prompts)) if prompts else ((), ())
    return [head + ids for head, ids in zip(heads, _encode_many(list(texts), tokenizer))]


def encode_prompt(prompt: Any, tokenizer) -> list[int]:
    return encode_prompts([prompt], tokenizer)[0]


def encode_response(response: str, tokenizer) -> list[int]:
    return list(tokenizer(response, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]


def tokenize_list(row: dict, tokenizer, spec: TokenizeSpec) -> tuple[dict | None, TokenizeStats]:
    """One list record -> token ids, or None if the list must be dropped; plus what happened, counted.

    The result holds `id`, `prompt_ids`, `response_ids` [K'], `keep` [K'] (the kept responses' indices in
    `row["responses"]`), and `labels` / `ref_logps` [K'] restricted to the kept responses (None when the row has none).
    """
    stats = TokenizeStats()
    out = _assemble(row, encode_prompt(prompt_of(row), tokenizer),
                    _encode_many(list(row["responses"]), tokenizer), tokenizer.eos_token_id, spec, stats)
    return out, stats


def _assemble(row: dict, prompt_ids: list[int], responses: list[list[int]], eos: int, spec: TokenizeSpec,
              stats: TokenizeStats) -> dict | None:
    """Truncate and drop by the rules above, given the row's encoded prompt and responses (without EOS)."""
    stats.counts["lists_in"] += 1
    if len(prompt_ids) > spec.max_prompt_tokens:
        stats.counts["prompt_truncated"] += 1
        prompt_ids = prompt_ids[-spec.max_prompt_tokens:]
    keep: list[int] = []
    seen: set[tuple[int, ...]] = set()
    response_ids: list[list[int]] = []
    for i, raw in enumerate(responses):
        ids = raw + [eos]
        if len(ids) > spec.max_response_tokens:
            stats.counts["response_truncated"] += 1
            ids = ids[: spec.max_response_tokens]
        if not [t for t in ids if t != eos]:
            stats.counts["dropped_empty_response"] += 1
            continue
        if tuple(ids) in seen:
            stats.counts["dropped_duplicate_response"] += 1
            continue
        seen.add(tuple(ids))
        keep.append(i)
        response_ids.append(ids)
    if len(keep) < 2:
        stats.counts["dropped_list_too_few_responses"] += 1
        return None
    stats.counts["lists_kept"] += 1
    labels, ref = row.get("labels"), row.get("ref_logps")
    return {
        "id": row.get("id"),
        "prompt_ids": prompt_ids,
        "response_ids": response_ids,
        "keep": keep,
        "labels": [float(labels[i]) for i in keep] if labels is not None else None,
        "ref_logps": [float(ref[i]) for i in keep] if ref is not None else None,
    }


def tokenize_lists(rows: list[dict], tokenizer, spec: TokenizeSpec) -> tuple[list[dict], TokenizeStats]:
    """Tokenise many rows, keeping the survivors in order; every prompt and every response of the chunk is encoded
    in one tokenizer call each (the same ids as `tokenize_list`, row by row)."""
    total = TokenizeStats()
    prompts = encode_prompts([prompt_of(r) for r in rows], tokenizer)
    flat = _encode_many([x for r in rows for x in r["responses"]], tokenizer)
    kept, start = [], 0
    for row, prompt_ids in zip(rows, prompts):
        k = len(row["responses"])
        tl = _assemble(row, prompt_ids, flat[start:start + k], tokenizer.eos_token_id, spec, total)
        start += k
        if tl is not None:
            kept.append(tl)
    return kept, total
