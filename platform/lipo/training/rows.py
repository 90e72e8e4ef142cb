"""What the language-model tasks read and how they tokenise it, one chunk of validated rows at a time.

    to_row, schema = LISTS                       # the validator and Arrow schema of one input row
    rows, counts = listwise_tokens(cfg, chunk, tokenizer)   # token-id dicts, and counts keyed by metric name

These run inside the distributed tokenisation (`lipo.training.token_cache`), on one read unit's rows at a time, so
no process ever holds the whole data set. Counts are keyed by their MLflow metric name (`data/prompt_truncated`)
and summed over the units by the driver. The reward model's tokeniser is its task's (`lipo.training.reward`).
"""

from __future__ import annotations

from collections import Counter

from lipo.data.demos import DEMO_SCHEMA, demo_row
from lipo.data.readers import list_row
from lipo.data.records import LIST_SCHEMA, prompt_of
from lipo.data.tokenize import TokenizeSpec, encode_prompt, encode_response, tokenize_lists
from lipo.training.config import SFTConfig, TrainConfig

LISTS = (list_row, LIST_SCHEMA)
DEMONSTRATIONS = (demo_row, DEMO_SCHEMA)


def _spec(cfg) -> TokenizeSpec:
    return TokenizeSpec(cfg.data.max_prompt_tokens, cfg.data.max_response_tokens)


def listwise_tokens(cfg: TrainConfig, rows: list[dict], tokenizer) -> tuple[list[dict], Counter]:
    kept, stats = tokenize_lists(rows, tokenizer, _spec(cfg))
    for r in kept:
        del r["keep"]  # build-lists' bookkeeping; training reads the other fields
    return kept, Counter(stats.as_metrics())


def sft_tokens(cfg: SFTConfig, rows: list[dict], tokenizer) -> tuple[list[dict], Counter]:
    """Demonstrations as one-response lists, truncated by the same rules as LiPO lists."""
    spec, out, truncated = _spec(cfg), [], 0
    for row in rows:
        p = encode_prompt(prompt_of(row), tokenizer)[-spec.max_prompt_tokens:]
        r = encode_response(row["response"], tokenizer)
        truncated += len(r) > spec.max_response_tokens
        out.append({"id": row["id"], "prompt_ids": p, "response_ids": [r[: spec.max_response_tokens]], "labels": [1.0],
                    "ref_logps": None})
    return out, Counter({"data/response_truncated": float(truncated)})
