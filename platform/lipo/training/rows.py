"""Driver-side rows for each training task: read + validate the files, tokenise, count every drop.

Each builder returns `(rows, metrics, summary)`; rows are plain dicts of token ids that workers batch with the
task's `collate`. Tokenising here, once, means the drop counts are known (and logged) before training starts.
"""

from __future__ import annotations

import hashlib

from lipo.data.demos import read_demonstrations
from lipo.data.readers import read_lists
from lipo.data.records import prompt_of
from lipo.data.tokenize import TokenizeSpec, encode_prompt, encode_response, tokenize_lists
from lipo.models.reward import pair_text, pointwise_text


def _spec(cfg) -> TokenizeSpec:
    return TokenizeSpec(cfg.data.max_prompt_tokens, cfg.data.max_response_tokens)


def listwise_rows(cfg, tokenizer) -> tuple[list[dict], dict, str]:
    table, report = read_lists(cfg.data.train, on_invalid=cfg.data.on_invalid)
    rows, stats = tokenize_lists(table.to_pylist(), tokenizer, _spec(cfg))
    return rows, {**report.as_metrics(), **stats.as_metrics()}, f"{report.summary()}; tokenised: {stats.summary()}"


def sft_rows(cfg, tokenizer) -> tuple[list[dict], dict, str]:
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


def held_out(list_id: str, fraction: float) -> bool:
    """Deterministic train/held-out split by id, independent of file order."""
    return int(hashlib.sha1(list_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def split_lists(cfg) -> tuple[list[dict], list[dict], object]:
    table, report = read_lists(cfg.data.train, on_invalid=cfg.data.on_invalid)
    rows = table.to_pylist()
    test = [r for r in rows if held_out(r["id"], cfg.reward.eval_fraction)]
    train = [r for r in rows if not held_out(r["id"], cfg.reward.eval_fraction)]
    return train, test, report


def reward_rows(cfg, tokenizer) -> tuple[list[dict], dict, str]:
    """Pointwise: one text per response + labels. Pairwise: both orders of every pair with unequal labels."""
    train, test, report = split_lists(cfg)
    enc = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"][-cfg.reward.max_tokens:]  # noqa: E731
    rows, no_pairs = [], 0
    for r in train:
        prompt, resp, lab = prompt_of(r), r["responses"], r["labels"]
        if len(set(lab)) < 2:
            no_pairs += 1  # all labels tied: nothing to learn from this list
            continue
        if cfg.reward.kind == "pointwise":
            rows.append({"text_ids": [enc(pointwise_text(prompt, x, tokenizer)) for x in resp], "labels": lab})
        else:
            pairs = [(i, j) for i in range(len(resp)) for j in range(len(resp)) if lab[i] != lab[j]]
            rows.append({"pair_ids": [enc(pair_text(prompt, resp[i], resp[j], cfg.reward.pair_template))
                                      for i, j in pairs],
                         "targets": [1.0 if lab[i] > lab[j] else 0.0 for i, j in pairs]})
    metrics = {**report.as_metrics(), "data/heldout_lists": float(len(test)),
               "data/dropped_lists_without_pairs": float(no_pairs)}
    return rows, metrics, f"{report.summary()}; {len(test)} held out; {no_pairs} lists without pairs dropped"


ROWS = {"lipo": listwise_rows, "sft": sft_rows, "reward_pointwise": reward_rows, "reward_pairwise": reward_rows}
