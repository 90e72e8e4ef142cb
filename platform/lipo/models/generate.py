"""Seeded, batched sampling from a causal LM, on the model's device: the one sampler behind build-lists, Serve and
evaluation.

    texts = sample(model, tok, ["Reverse: abc"], n=4, seeds=[17], params=SamplingParams(temperature=1.0))

How it stays fast and reproducible:
- **Counter-based randomness.** Row i at step t draws one uniform u = hash(seed_i, t) (a 32-bit integer mix,
  `row_uniforms`) and picks its token by inverting the CDF of its filtered distribution. A row's sample depends
  only on its seed and its own logits, never on the other rows of the batch, the global RNG or the device; and
  every step is a handful of batched tensor ops on the device, with no per-row Python and no logits copied to the
  host. (A `torch.Generator` per row would force a loop over rows.) The randomness is batch-free everywhere; the
  logits are exactly batch-free on CPU in fp32 (tested), while GPU kernels may pick other reduction orders for
  another batch shape, and a bf16 logit that moves across a CDF boundary changes that token.
- **One prefill per distinct prompt.** Rows with the same prompt ids (the K samples of one prompt) are prefilled
  once; the KV cache is then expanded to the rows (`Cache.batch_select_indices`). Only caches made of attention
  key/value layers (full or sliding-window) are expanded; a model with recurrent or convolution state layers
  (linear-attention hybrids) prefills every row. The prefill computes logits at the last position only
  (`logits_to_keep=1`).
- **Few host syncs.** Tokens stay on the device until the end; "are all rows done?" is asked every
  `STOP_CHECK_EVERY` steps on a GPU (each ask stalls the launch queue), every step on the CPU (free there).
- **Optional per-step callback** (`on_step`, for streaming): `on_step(t, nxt)` runs after step t's draw and before
  the next forward, with the [N] ids on the device; returning True ends every row there (its readers are gone).
  When None (build-lists, evaluation, whole answers) nothing changes. When given, the callback usually copies `nxt`
  to the host (one sync per step: the price of streaming), so the "all rows done?" check then runs every step as
  well, adding no further stall.
- **Deadlines** (`deadlines`, optional: one absolute `time.time()` per row, for Serve's request timeout): checked on
  the host before each decode forward, with no device sync (the next deadline is a float compare); a row past its
  deadline ends there as if it drew EOS, and once every row has ended (or passed its deadline) the pass stops, so a
  request the ingress answered with a 408 stops costing forwards within one step. A single forward (the prefill, a
  decode step) is never interrupted.
- **Seeds are int64.** Row seeds live in an int64 tensor; `sample_seed(seed, j)` (= seed * 1000 + j, choice j of
  a prompt seeded `seed`) is the one mapping build-lists, evaluation and Serve use, and `sample_ids` refuses a row
  seed outside int64 with a ValueError naming the row instead of an overflow deep in torch.
- **Both cache APIs.** transformers < 5.24 takes `past_key_values=`, later releases `cache=`; the keyword is read
  from the model's signature once per call. The cache object is made here and updated in place, so no output field
  is read.

Run its tests: `pytest tests/lipo/models/test_generate.py`; its speed against `model.generate`:
`python benchmarks/generation.py`.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

import torch

from lipo.data.tokenize import encode_prompt
from lipo.models.attention import unwrap

STOP_CHECK_EVERY = 8  # GPU steps between "all rows done?" syncs; up to 7 wasted steps once every row has ended
_M32 = 0xFFFFFFFF
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1  # row seeds are int64 on the device
SEEDS_PER_PROMPT = 1000  # choice j < 1000 of a prompt seeded s draws with row seed s * 1000 + j


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()


def sample_seed(seed: int, j: int) -> int:
    """The row seed of choice j of a prompt whose seed is `seed` (build-lists: the list's seed; Serve: request seed
    + prompt index). Within int64 for |seed| <= (2^63 - 1000) / 1000, about 9.2e15."""
    return seed * SEEDS_PER_PROMPT + j


def context_length(model) -> int | None:
    """The longest sequence (prompt + completion) the model's config allows, or None when it names none."""
    config = unwrap(model).config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for int64 x in [0, 2^32), in 16-bit halves of c so no product leaves int64's range."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (xor-shift-multiply; constants from Wellons' "lowbias32")."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def row_uniforms(seeds: torch.Tensor, step: int) -> torch.Tensor:
    """One uniform in (0, 1) per row from (seed, step) alone: [N] int64 -> [N] float32, on the seeds' device."""
    h = _mix32((seeds & _M32) ^ 0x9E3779B9)
    h = _mix32(h ^ ((seeds >> 32) & _M32))
    h = _mix32(h ^ (step & _M32))
    return ((h >> 9).float() + 0.5) / float(1 << 23)  # 23 bits: exact in fp32, never 0 or 1


def filter_logits(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """Temperature, top-k and top-p (nucleus) filtering of [N, V] logits; filtered tokens get -inf. Top-p keeps the
    tokens, most probable first, while the mass before them does not exceed top_p: the token that crosses top_p
    stays, and the most probable token always does."""
    logits = logits / max(p.temperature, 1e-6)
    if p.top_k > 0:
        kth = torch.topk(logits, min(p.top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # [N, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)  # [N, V]
        probs = torch.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(-1) - probs > p.top_p  # mass before this token already reaches top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return logits


def draw(logits: torch.Tensor, p: SamplingParams, seeds: torch.Tensor, step: int) -> torch.Tensor:
    """The next token of each row: [N, V] logits -> [N] ids; argmax when temperature is 0, else the inverse CDF of
    the filtered distribution at the row's uniform: the first token whose CDF reaches u (u > 0, so a token of zero
    probability is skipped). Where a parallel GPU cumsum is not exactly monotone, the search could land on a filtered
    token; that row takes its most probable token instead (odds of order 2^-24 per draw)."""
    if p.temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(filter_logits(logits.float(), p), dim=-1)  # [N, V]
    cdf = probs.cumsum(-1)  # [N, V]
    u = row_uniforms(seeds, step).unsqueeze(-1) * cdf[:, -1:]  # [N, 1]
    idx = torch.searchsorted(cdf, u).clamp(max=logits.shape[-1] - 1)  # [N, 1]: first index with cdf >= u
    ok = probs.gather(-1, idx) > 0  # [N, 1]
    return torch.where(ok, idx, probs.argmax(-1, keepdim=True)).squeeze(-1)


def truncate_at_stop(text: str, stop: tuple[str, ...]) -> str:
    cut = min((text.find(s) for s in stop if s and s in text), default=-1)
    return text[:cut] if cut >= 0 else text


def _forward_keywords(model) -> tuple[str, bool]:
    """The cache keyword the model's forward takes (`cache` from transformers 5.24, `past_key_values` before), and
    whether it takes `logits_to_keep`."""
    params = inspect.signature(unwrap(model).forward).parameters
    return ("cache" if "cache" in params else "past_key_values"), "logits_to_keep" in params


def _left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask ([U, W] each): the next token is always at the last column."""
    width = max(len(x) for x in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        attn[i, width - len(row):] = 1
    return ids.to(device), attn.to(device)


def _expandable(cache) -> bool:
    """Whether every layer of the cache holds only attention keys/values, so rows can be selected by indexing them
    (linear-attention and convolution layers carry states that `batch_select_indices` does not copy)."""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    return all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in getattr(cache, "layers", [None]))


def _prefill(model, prompt_ids: list[list[int]], pad_id: int, device, keywords: tuple[str, bool]):
    """Prefill each distinct prompt once and expand the cache to the rows: the cache, the rows' last logits [N, V],
    their attention mask [N, W] and next positions [N, 1]."""
    from transformers import DynamicCache

    cache_kw, keep_kw = keywords
    cache = DynamicCache(config=unwrap(model).config)
    share = _expandable(cache)
    unique: dict[tuple[int, ...], int] = {}
    row_of = [unique.setdefault(tuple(r) if share else (i,), len(unique)) for i, r in enumerate(prompt_ids)]
    firsts = {u: r for r, u in reversed(list(enumerate(row_of)))}  # distinct prompt -> its first row
    ids, attn = _left_pad([prompt_ids[firsts[u]] for u in range(len(unique))], pad_id, device)  # [U, W]
    extra = {"logits_to_keep": 1} if keep_kw else {}
    positions = (attn.cumsum(-1) - 1).clamp(min=0)  # [U, W]
    logits = model(input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=True,
                   **{cache_kw: cache}, **extra).logits[:, -1, :]  # [U, V]
    if len(unique) < len(prompt_ids):
        index = torch.tensor(row_of, dtype=torch.long, device=device)  # [N]
        cache.batch_select_indices(index)
        logits, attn, positions = logits[index], attn[index], positions[index]
    return cache, logits, attn, positions[:, -1:] + 1


def _check_every(device: torch.device) -> int:
    return STOP_CHECK_EVERY if device.type == "cuda" else 1


class _Deadlines:
    """Rows' absolute deadlines (`time.time()`), checked on the host: `late(t)` is None until some row's deadline
    passes, then (once per newly late set) the [N] bool mask of every late row, on the device; `cut` ends each late
    row's tokens after the step that found it late."""

    def __init__(self, deadlines: list[float | None] | None, n: int, device):
        self.at = [math.inf if d is None else float(d) for d in (deadlines or [None] * n)]
        if len(self.at) != n:
            raise ValueError(f"sample_ids: {len(self.at)} deadlines for {n} rows")
        self.device, self.next, self.all = device, min(self.at, default=math.inf), False
        self.ends: list[int | None] = [None] * n  # tokens kept by each late row

    def late(self, t: int) -> torch.Tensor | None:
        now = time.time()
        if now < self.next:  # the common case: one float compare per step
            return None
        self.next = min((d for d in self.at if d > now), default=math.inf)
        mask = [d <= now for d in self.at]
        self.ends = [e if e is not None or not m else t + 1 for e, m in zip(self.ends, mask)]
        self.all = all(mask)
        return torch.tensor(mask, dtype=torch.bool, device=self.device)  # [N]

    def cut(self, rows: list[list[int]]) -> list[list[int]]:
        return [row if end is None else row[:end] for row, end in zip(rows, self.ends)]


def _check_seeds(seeds: list[int]) -> list[int]:
    out = [int(s) for s in seeds]
    for i, s in enumerate(out):
        if not SEED_MIN <= s <= SEED_MAX:
            raise ValueError(f"sample_ids: seeds[{i}] = {s} is outside the sampler's int64 range")
    return out


@torch.no_grad()
def sample_ids(model, prompt_ids: list[list[int]], seeds: list[int], p: SamplingParams, pad_id: int,
               eos_id: int, on_step: Callable[[int, torch.Tensor], bool | None] | None = None,
               deadlines: list[float | None] | None = None) -> list[list[int]]:
    """One completion (token ids, EOS excluded) per prompt row; row i's draws depend only on seeds[i] and its own
    prompt. Rows may repeat a prompt: each distinct prompt is prefilled once. `on_step(t, nxt)` (optional) sees each
    step's ids ([N], on the device; rows past their EOS keep drawing and are cut afterwards) as soon as they are
    drawn; it does not change the result, unless it returns True: then every row ends at that step (a stream whose
    readers have all gone). `deadlines[i]` (optional, `time.time()` seconds, None: none) ends row i at the first
    step after it (its completion is then cut short, without EOS); the pass stops once every row has ended."""
    device = next(model.parameters()).device
    n = len(prompt_ids)
    row_seeds = torch.tensor(_check_seeds(seeds), dtype=torch.long, device=device)  # [N]
    late = _Deadlines(deadlines, n, device)
    keywords = _forward_keywords(model)
    cache, logits, attn, positions = _prefill(model, prompt_ids, pad_id, device, keywords)  # [N, V], [N, W], [N, 1]
    cache_kw = keywords[0]
    check_every = 1 if on_step is not None else _check_every(device)  # the callback syncs anyway
    done = torch.zeros(n, dtype=torch.bool, device=device)
    steps: list[torch.Tensor] = []  # [N] per step
    for t in range(p.max_new_tokens):
        nxt = draw(logits, p, row_seeds, t)  # [N]
        steps.append(nxt)
        if on_step is not None and on_step(t, nxt):
            break
        done |= nxt == eos_id
        if (mask := late.late(t)) is not None:  # some row's request timed out: it ends here, like an EOS
            done |= mask
            if late.all:
                break
        if t + 1 == p.max_new_tokens or ((t + 1) % check_every == 0 and bool(done.all())):
            break
        attn = torch.cat([attn, attn.new_ones((n, 1))], dim=-1)  # [N, W + t + 1]
        logits = model(input_ids=nxt.unsqueeze(-1), attention_mask=attn, position_ids=positions, use_cache=True,
                       **{cache_kw: cache}).logits[:, -1, :]  # [N, V]
        positions = positions + 1
    tokens = torch.stack(steps, dim=1).tolist() if steps else [[] for _ in range(n)]  # [N, T]: one host copy
    return late.cut([row[:row.index(eos_id)] if eos_id in row else row for row in tokens])


def sample(model, tokenizer, prompts: list[Any], n: int, seeds: list[int], params: SamplingParams,
           max_prompt_tokens: int = 512) -> list[list[str]]:
    """`n` completions for each prompt (text or chat messages); completion j of prompt i uses row seed
    `sample_seed(seeds[i], j)`."""
    encoded = [encode_prompt(pr, tokenizer)[-max_prompt_tokens:] for pr in prompts]
    rows = [e for e in encoded for _ in range(n)]
    row_seeds = [sample_seed(s, j) for s in seeds for j in range(n)]
    ids = sample_ids(model, rows, row_seeds, params, tokenizer.pad_token_id, tokenizer.eos_token_id)
    texts = [truncate_at_stop(tokenizer.decode(x, skip_special_tokens=True), params.stop) for x in ids]
    return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]
