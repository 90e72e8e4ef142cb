"""Candidate sampling: lipo's sampler against Hugging Face `model.generate` on the same rows, and reward scoring.

Run: .venv/bin/python benchmarks/generation.py        (about 3 CPU-minutes; longer in wall time on a busy box)
Writes benchmarks/results/generation.json and .md (and reward_scoring.json/.md through benchmarks/reward_scoring.py).

Workload (the build-lists shape): P prompts x K=8 samples, each prompt PROMPT tokens, NEW tokens sampled per row at
temperature 1.0 (top-p 1.0, then 0.9), on a random-init Llama with a 32,000-token vocabulary (width 256, 4 layers,
fp32, sdpa, one torch thread; see `_common`). Three samplers, alternated in one process:
- `generate`: `model.generate(do_sample=True)` on the P*K rows (every row prefills its prompt), the tool a user
  would otherwise pick; EOS is disabled for it (`eos_token_id=None`) as for the others, so all emit NEW tokens;
- `lipo`: `lipo.models.generate.sample_ids` on the same rows (one prefill per prompt, batched on-device sampling);
- `lipo before`: the sampler as it was before issue 14 (a private copy below): host-side per-row multinomial with
  one `torch.Generator` per row, and a prefill per row.
Reported: sampled tokens/s (CPU time) and the ratio to `generate` (target >= 1.0x). The GPU suite
(`benchmarks/gpu_check.sh`, part `generation`) measures the same three on the 0.48B Llama in bf16 on an H200.
"""

from __future__ import annotations

import sys

import torch

from lipo.models.generate import SamplingParams, _forward_keywords, filter_logits, sample_ids
from lipo.models.tiny import tiny_llama

VOCAB, WIDTH, LAYERS = 32_000, 256, 4
K, PROMPTS, PROMPT, NEW = 8, 4, 128, 64
NO_EOS = -1  # an id no model emits: every sampler runs all NEW steps, so the work is equal


def rows_for(prompts: int, k: int, prompt_len: int, vocab: int, seed: int = 0) -> tuple[list[list[int]], list[int]]:
    """prompts * k rows (each prompt's k rows adjacent, as build-lists sends them) and their per-row seeds."""
    g = torch.Generator().manual_seed(seed)
    ps = [torch.randint(3, vocab, (prompt_len,), generator=g).tolist() for _ in range(prompts)]
    return [p for p in ps for _ in range(k)], [i * 1000 + j for i in range(prompts) for j in range(k)]


def hf_generate(model, rows: list[list[int]], p: SamplingParams) -> torch.Tensor:
    """`model.generate` on the rows as they are (equal lengths: no padding); [N, NEW] sampled ids."""
    ids = torch.tensor(rows, device=next(model.parameters()).device)  # [N, T]
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=p.temperature,
                         top_k=p.top_k or None, top_p=p.top_p, max_new_tokens=p.max_new_tokens,
                         min_new_tokens=p.max_new_tokens, pad_token_id=0, eos_token_id=None)
    return out[:, ids.shape[1]:]


@torch.no_grad()
def lipo_before(model, prompt_ids: list[list[int]], seeds: list[int], p: SamplingParams, pad_id: int,
                eos_id: int) -> list[list[int]]:
    """The sampler before issue 14, kept here as a baseline: logits to the host each step, one generator per row."""
    device = next(model.parameters()).device
    n, width = len(prompt_ids), max(len(x) for x in prompt_ids)
    ids = torch.full((n, width), pad_id, dtype=torch.long, device=device)
    attn = torch.zeros((n, width), dtype=torch.long, device=device)
    for i, row in enumerate(prompt_ids):
        ids[i, width - len(row):] = torch.tensor(row, device=device)
        attn[i, width - len(row):] = 1
    gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    out: list[list[int]] = [[] for _ in range(n)]
    from transformers import DynamicCache

    past, step_ids, cache_kw = DynamicCache(config=model.config), ids, _forward_keywords(model)[0]  # updated in place
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    for _ in range(p.max_new_tokens):
        res = model(input_ids=step_ids, attention_mask=attn, position_ids=positions, use_cache=True,
                    **{cache_kw: past})
        logits = res.logits[:, -1, :].float().cpu()  # [N, V]
        probs = torch.softmax(filter_logits(logits, p), dim=-1)
        nxt = torch.stack([torch.multinomial(probs[i], 1, generator=gens[i])[0] for i in range(n)])
        for i in range(n):
            out[i].append(int(nxt[i]))
        step_ids = nxt.to(device).unsqueeze(-1)
        attn = torch.cat([attn, torch.ones((n, 1), dtype=attn.dtype, device=device)], dim=-1)
        positions = positions[:, -1:] + 1
    return out


def samplers(model, rows, seeds, p: SamplingParams) -> dict:
    return {"generate": lambda: hf_generate(model, rows, p),
            "lipo": lambda: sample_ids(model, rows, seeds, p, 0, NO_EOS),
            "lipo before": lambda: lipo_before(model, rows, seeds, p, 0, NO_EOS)}


def main() -> int:
    # here, not at the top: _common pins torch to one CPU thread, and the GPU suite imports this module's samplers
    from _common import alternate, md_table, median, write_results

    model = tiny_llama(VOCAB, seed=0, width=WIDTH, layers=LAYERS)
    model.generation_config.eos_token_id = None  # equal work: see NO_EOS
    rows, seeds = rows_for(PROMPTS, K, PROMPT, VOCAB)
    settings, table = [], []
    for top_p in (1.0, 0.9):
        p = SamplingParams(temperature=1.0, top_p=top_p, max_new_tokens=NEW)
        assert all(len(r) == NEW for r in sample_ids(model, rows, seeds, p, 0, NO_EOS))
        times = alternate(samplers(model, rows, seeds, p), reps=3)
        tokens = len(rows) * NEW
        tps = {name: tokens / median(t["cpu"]) for name, t in times.items()}
        s = {"top_p": top_p, "rows": len(rows), "tokens": tokens, "tokens_per_s": tps,
             "wall_s": {name: median(t["wall"]) for name, t in times.items()},
             "ratio_vs_generate": tps["lipo"] / tps["generate"],
             "before_vs_generate": tps["lipo before"] / tps["generate"]}
        settings.append(s)
        table.append([top_p, f"{tps['generate']:.0f}", f"{tps['lipo']:.0f}", f"{tps['lipo before']:.0f}",
                      f"{s['ratio_vs_generate']:.2f}x", f"{s['before_vs_generate']:.2f}x"])
        print(table[-1], flush=True)
    worst = min(s["ratio_vs_generate"] for s in settings)
    md = (f"{PROMPTS} prompts x K={K} samples = {len(rows)} rows, {PROMPT}-token prompts, {NEW} new tokens at "
          f"temperature 1.0; random-init Llama, vocabulary {VOCAB:,}, width {WIDTH}, {LAYERS} layers, fp32, one CPU "
          f"thread. Sampled tokens per CPU-second, medians of 3 alternated runs.\n\n"
          + md_table(["top_p", "generate tok/s", "lipo tok/s", "lipo before tok/s", "lipo / generate",
                      "before / generate"], table)
          + f"\n\nWorst lipo / generate: {worst:.2f}x (target >= 1.0x).\n")
    write_results("generation", {"model": {"vocab": VOCAB, "width": WIDTH, "layers": LAYERS, "dtype": "float32"},
                                 "k": K, "prompts": PROMPTS, "prompt_tokens": PROMPT, "new_tokens": NEW,
                                 "settings": settings, "target": {"min_ratio": 1.0, "worst": worst,
                                                                  "met": worst >= 1.0}}, md)
    return 0 if worst >= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
