"""Seeded, batched sampling from a causal LM: the one sampler behind build-lists, Serve and evaluation.

Each prompt owns a `torch.Generator` seeded from its own seed, so its samples do not depend on which other prompts
share the batch or on the global RNG. Prompts are left-padded and decoded together with a KV cache.

    texts = sample(model, tok, ["Reverse: abc"], n=4, seeds=[17], params=SamplingParams(temperature=1.0))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lipo.data.tokenize import encode_prompt


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()


def _filter_logits(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """Temperature, top-k and top-p (nucleus) filtering of [N, V] logits."""
    logits = logits / max(p.temperature, 1e-6)
    if p.top_k > 0:
        kth = torch.topk(logits, min(p.top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # [N, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop = cum - torch.softmax(sorted_logits, dim=-1) > p.top_p  # keep the token that crosses top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return logits


def truncate_at_stop(text: str, stop: tuple[str, ...]) -> str:
    cut = min((text.find(s) for s in stop if s and s in text), default=-1)
    return text[:cut] if cut >= 0 else text


@torch.no_grad()
def sample_ids(model, prompt_ids: list[list[int]], seeds: list[int], p: SamplingParams, pad_id: int,
               eos_id: int) -> list[list[int]]:
    """One completion (token ids, EOS excluded) per prompt row, each row with its own generator."""
    device = next(model.parameters()).device
    n, width = len(prompt_ids), max(len(x) for x in prompt_ids)
    ids = torch.full((n, width), pad_id, dtype=torch.long, device=device)
    attn = torch.zeros((n, width), dtype=torch.long, device=device)
    for i, row in enumerate(prompt_ids):  # left padding: the next token is always at the last column
        ids[i, width - len(row):] = torch.tensor(row, device=device)
        attn[i, width - len(row):] = 1
    gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    out: list[list[int]] = [[] for _ in range(n)]
    done = torch.zeros(n, dtype=torch.bool)
    past, step_ids = None, ids
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    for _ in range(p.max_new_tokens):
        res = model(input_ids=step_ids, attention_mask=attn, position_ids=positions, cache=past,
                    use_cache=True)
        past, logits = res.cache, res.logits[:, -1, :].float().cpu()  # [N, V]
        if p.temperature == 0:
            nxt = logits.argmax(-1)
        else:
            probs = torch.softmax(_filter_logits(logits, p), dim=-1)
            nxt = torch.stack([torch.multinomial(probs[i], 1, generator=gens[i])[0] for i in range(n)])
        for i in range(n):
            if not done[i]:
                if int(nxt[i]) == eos_id:
                    done[i] = True
                else:
                    out[i].append(int(nxt[i]))
        if bool(done.all()):
            break
        step_ids = nxt.to(device).unsqueeze(-1)
        attn = torch.cat([attn, torch.ones((n, 1), dtype=attn.dtype, device=device)], dim=-1)
        positions = positions[:, -1:] + 1
    return out


def sample(model, tokenizer, prompts: list[Any], n: int, seeds: list[int], params: SamplingParams,
           max_prompt_tokens: int = 512) -> list[list[str]]:
    """`n` completions for each prompt (text or chat messages); completion j of prompt i uses seed seeds[i]+j."""
    encoded = [encode_prompt(pr, tokenizer)[-max_prompt_tokens:] for pr in prompts]
    rows = [e for e in encoded for _ in range(n)]
    row_seeds = [s * 1000 + j for s in seeds for j in range(n)]
    ids = sample_ids(model, rows, row_seeds, params, tokenizer.pad_token_id, tokenizer.eos_token_id)
    texts = [truncate_at_stop(tokenizer.decode(x, skip_special_tokens=True), params.stop) for x in ids]
    return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]
