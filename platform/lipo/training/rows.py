"""Driver-side rows of the language-model tasks: read + validate the files, tokenise, count every drop.

Each builder returns `(rows, metrics, summary)`; rows are plain dicts of token ids that workers batch with the
task's `collate`. Tokenising here, once, means the drop counts are known (and logged) before training starts.
The reward model's rows are built by its own task (`lipo.training.reward`).
"""

from __future__ import annotations

from lipo.data.demos import read_demonstrations
from lipo.data.readers import read_lists
from lipo.data.records import prompt_of
from lipo.data.tokenize import TokenizeSpec, encode_prompt, encode_response, tokenize_lists
from lipo.training.config import SFTConfig, TrainConfig


def _spec(cfg) -> TokenizeSpec:
    return TokenizeSpec(cfg.data.max_prompt_tokens, cfg.data.max_response_tokens)


def listwise_rows(cfg: TrainConfig, tokenizer) -> tuple[list[dict], dict, str]:
    table, report = read_lists(cfg.data.train, on_invalid=cfg.data.on_invalid)
    rows, stats = tokenize_lists(table.to_pylist(), tokenizer, _spec(cfg))
    return rows, {**report.as_metrics(), **stats.as_metrics()}, f"{report.summary()}; tokenised: {stats.summary()}"


def sft_rows(cfg: SFTConfig, tokenizer) -> tuple[list[dict], dict, str]:
    """Demonstrations as one-response lists, truncated by the same rules as LiPO lists."""
    table, report = read_demonstrations(cfg.data.train, on_invalid=cfg.data.on_invalid)
    spec, rows, truncated = _spec(cfg), [], 0
    for row in table.to_pylist():
        p = encode_prompt(prompt_of(row), tokenizer)[-spec.max_prompt_tokens:]
        r = encode_response(row["response"], tokenizer)
        truncated += len(r) > spec.max_response_tokens
        rows.append({"prompt_ids": p, "response_ids": [r[: spec.max_response_tokens]], "labels": [1.0],
                     "ref_logps": None})
    metrics = {**report.as_metrics(), "data/response_truncated": float(truncated)}
    return rows, metrics, f"{report.summary()}; {truncated} responses truncated"
