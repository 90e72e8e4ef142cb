"""Reward scoring in build-lists: the old per-list path vs scoring batched across lists, pointwise and pairwise.

Run: /work/venv/bin/python benchmarks/reward_scoring.py        (under a minute of CPU with the defaults)
Writes benchmarks/results/reward_scoring.json and reward_scoring.md. Other benchmarks call `measure(...)` for the
numbers (a dict) without writing anything.

Workload: `lists` prompts of k responses each, prompts of 32-160 and responses of 8-96 random lowercase bytes
(unequal lengths, as sampling gives), scored in micro-batches of `micro_batch` prompts (resources.score.batch_size).
- old: a private copy of the scorers before batching across lists: pointwise runs one classifier call over all
  texts of the micro-batch, unsorted; pairwise calls `pairwise_matrix` once per list (its ordered pairs in unsorted
  chunks of 16), each text tokenised on its own.
- new: `lipo.lists.scorers.PointwiseScorer` / `PairwiseScorer`: every text of the micro-batch tokenised once, sorted
  by length and run in forwards of `max_batch_size` sequences across lists (`lipo.models.reward.classify`).
  The default 16 equals the old pairwise chunk, so the pairwise difference is sorting and filling alone; on this
  one-thread CPU, larger forwards are not faster per token (cache), unlike a GPU, where they are the main gain.
Model: random-init Llama sequence classifier (`lipo.models.tiny.tiny_reward_model`), vocab 32,000 (the byte
tokenizer uses the first 259 ids; the vocabulary only sizes the embedding lookup), width 128, 2 layers, fp32, sdpa.
Times are CPU seconds of one torch thread (see `_common`), medians of alternating runs; lists/s = lists / time.
Also reported per path: forwards, and padded tokens / real tokens (one untimed pass with a forward hook).
"""

from __future__ import annotations

import random
import string
import sys
from typing import Any

import torch

from _common import alternate, md_table, median, write_results
from lipo.data.records import prompt_of
from lipo.lists.scorers import PairwiseScorer, PointwiseScorer
from lipo.models.reward import pair_text, pointwise_text
from lipo.models.templates import DEFAULT_PAIR_TEMPLATE
from lipo.models.tiny import byte_tokenizer, tiny_reward_model

MAX_TOKENS = 1024


# --- the old per-list path, kept here as the baseline -------------------------------------------------------------
@torch.no_grad()
def _old_classify(model, tokenizer, texts: list[str], max_tokens: int, batch_size: int) -> torch.Tensor:
    out = []
    for i in range(0, len(texts), batch_size):  # input order, no sorting; one tokenizer call per text
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"][-max_tokens:] for t in texts[i:i + batch_size]]
        width = max(len(x) for x in ids)
        batch = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
        attn = torch.zeros((len(ids), width), dtype=torch.long)
        for j, x in enumerate(ids):
            batch[j, :len(x)] = torch.tensor(x)
            attn[j, :len(x)] = 1
        out.append(model(input_ids=batch, attention_mask=attn).logits[:, 0].float())
    return torch.cat(out)


def _old_pairwise_matrix(model, tokenizer, prompt: Any, responses: list[str], max_tokens: int) -> torch.Tensor:
    k = len(responses)
    pairs = [(i, j) for i in range(k) for j in range(k) if i != j]
    raw = torch.full((k, k), 0.5)
    texts = [pair_text(prompt, responses[i], responses[j], DEFAULT_PAIR_TEMPLATE) for i, j in pairs]
    for (i, j), p in zip(pairs, torch.sigmoid(_old_classify(model, tokenizer, texts, max_tokens, 16))):
        raw[i, j] = p
    return (raw + 1.0 - raw.T) / 2


def _old_pointwise(model, tok, rows: list[dict]) -> list[list[float]]:
    texts = [pointwise_text(prompt_of(r), y, tok) for r in rows for y in r["responses"]]
    flat = _old_classify(model, tok, texts, MAX_TOKENS, max(1, len(texts))).tolist()
    out, i = [], 0
    for r in rows:
        out.append(flat[i:i + len(r["responses"])])
        i += len(r["responses"])
    return out


def _old_pairwise(model, tok, rows: list[dict]) -> list[list[float]]:
    return [_old_pairwise_matrix(model, tok, prompt_of(r), r["responses"], MAX_TOKENS).mean(-1).tolist()
            for r in rows]
# -------------------------------------------------------------------------------------------------------------------


def random_rows(lists: int, k: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        return "".join(rng.choice(string.ascii_lowercase + " ") for _ in range(rng.randint(lo, hi)))

    return [{"id": f"p{b}", "prompt": text(32, 160), "prompt_messages": None,
             "responses": [text(8, 96) for _ in range(k)]} for b in range(lists)]


def chunks(rows: list[dict], n: int) -> list[list[dict]]:
    return [rows[i:i + n] for i in range(0, len(rows), n)]


def token_counts(model, fn) -> dict:
    """Forwards, padded and real input tokens of one pass of fn (a forward hook on the model)."""
    seen = {"forwards": 0, "padded_tokens": 0, "real_tokens": 0}

    def hook(mod, args, kwargs, out):
        seen["forwards"] += 1
        seen["padded_tokens"] += kwargs["input_ids"].numel()
        seen["real_tokens"] += int(kwargs["attention_mask"].sum())

    handle = model.register_forward_hook(hook, with_kwargs=True)
    try:
        fn()
    finally:
        handle.remove()
    return {**seen, "pad_overhead": seen["padded_tokens"] / seen["real_tokens"]}


def measure(lists: int = 8, k: int = 8, micro_batch: int = 8, max_batch_size: int = 16, reps: int = 3,
            vocab: int = 32000, width: int = 128, layers: int = 2, seed: int = 0) -> dict:
    """lists/s of the old per-list path and the batched one, pointwise and pairwise, on one tiny reward model."""
    tok = byte_tokenizer()
    model = tiny_reward_model(vocab, seed=seed, width=width, layers=layers)
    batches = chunks(random_rows(lists, k, seed), micro_batch)
    new = {"pointwise": PointwiseScorer(model, tok, MAX_TOKENS, max_batch_size),
           "pairwise": PairwiseScorer(model, tok, DEFAULT_PAIR_TEMPLATE, MAX_TOKENS, max_batch_size)}
    old = {"pointwise": lambda rows: _old_pointwise(model, tok, rows),
           "pairwise": lambda rows: _old_pairwise(model, tok, rows)}
    result = {"lists": lists, "k": k, "micro_batch": micro_batch, "max_batch_size": max_batch_size, "reps": reps,
              "model": {"vocab": vocab, "width": width, "layers": layers, "dtype": "float32"}}
    for kind in ("pointwise", "pairwise"):
        paths = {"old": lambda f=old[kind]: [s for b in batches for s in f(b)],
                 "new": lambda f=new[kind]: [s for b in batches for s in f(b)]}
        got, counts = {}, {}
        for name, fn in paths.items():  # one untimed pass each: outputs, forwards and tokens; warms both up
            counts[name] = token_counts(model, lambda fn=fn, name=name: got.__setitem__(name, fn()))
        diff = max(abs(a - b) for ro, rn in zip(got["old"], got["new"], strict=True) for a, b in zip(ro, rn))
        times = alternate(paths, reps=reps, warmup=0)
        entry = {"max_abs_diff": diff}
        for name in paths:
            t = median(times[name]["cpu"])
            entry[name] = {"cpu_seconds_median": t, "cpu_seconds_all": times[name]["cpu"],
                           "wall_seconds_all": times[name]["wall"], "lists_per_s": lists / t, **counts[name]}
        entry["ratio"] = entry["new"]["lists_per_s"] / entry["old"]["lists_per_s"]
        result[kind] = entry
    return result


HEADERS = ["scorer", "lists/s old", "lists/s new", "new/old", "forwards old", "forwards new", "pad overhead old",
           "pad overhead new", "max |new - old|"]


def main() -> None:
    r = measure()
    rows = [[kind, f"{r[kind]['old']['lists_per_s']:.2f}", f"{r[kind]['new']['lists_per_s']:.2f}",
             f"{r[kind]['ratio']:.2f}x", r[kind]["old"]["forwards"], r[kind]["new"]["forwards"],
             f"{r[kind]['old']['pad_overhead']:.2f}", f"{r[kind]['new']['pad_overhead']:.2f}",
             f"{r[kind]['max_abs_diff']:.1e}"] for kind in ("pointwise", "pairwise")]
    m = r["model"]
    md = (f"Reward scoring of {r['lists']} lists of K={r['k']} (prompts 32-160 bytes, responses 8-96), micro-batches "
          f"of {r['micro_batch']} prompts; new path: forwards of max_batch_size={r['max_batch_size']} sequences, "
          f"length-sorted, across lists. Tiny Llama reward model (vocab {m['vocab']:,}, width {m['width']}, "
          f"{m['layers']} layers, fp32). Medians of {r['reps']} alternating runs, CPU time of one torch thread. "
          f"Pad overhead = padded / real input tokens.\n\n" + md_table(HEADERS, rows) + "\n")
    print(md)
    write_results("reward_scoring", r, md)


if __name__ == "__main__":
    sys.exit(main())
