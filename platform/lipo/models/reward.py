"""Reward models: pointwise scalars and the paper's pairwise ranking model, plus win-rate labels from pairs.

A *pointwise* reward model is a sequence classifier with one output, read at the last token of `prompt + response`.
The *pairwise* ranking model (LiPO, section 4) reads one text holding the prompt and two responses and outputs the
log-odds that the first beats the second; `pair_template` sets that text. Position bias is removed by averaging both
orders: P(a > b) = (P(a, b) + 1 - P(b, a)) / 2, so P(a > b) + P(b > a) = 1 exactly.

    r = pointwise_rewards(rm, tok, "2+2=", ["4", "5"])                # [2]
    P = pairwise_matrix(prm, tok, "2+2=", ["4", "5", "22"])           # [3, 3], P[i, j] = P(y_i beats y_j)
    Ps = pairwise_matrices(prm, tok, [("2+2=", ["4", "5"]), ("1+1=", ["2", "11", "3"])], batch_size=32)
    psi = winrate_labels(P)                                           # psi_k = mean_i P[k, i], with P[k, k] = 0.5

Batching: `classify` tokenises every text once, sorts the sequences by token length (less padding), fills each
forward with `batch_size` sequences whatever list they come from, and returns the logits in the input order; so N
texts take ceil(N / batch_size) forwards. `pairwise_matrices` scores all ordered pairs of many lists that way.

Tests: `python -m pytest -q tests/lipo/lists/test_scorers.py tests/lipo/models/test_reward.py`.
"""

from __future__ import annotations

from typing import Any

import torch

from lipo.data.tokenize import prompt_messages
from lipo.models.templates import DEFAULT_PAIR_TEMPLATE


def prompt_text(prompt: Any) -> str:
    return "\n".join(m["content"] for m in prompt_messages(prompt))


def pointwise_text(prompt: Any, response: str, tokenizer) -> str:
    """`prompt + response` as the reward model reads it: through its chat template when it has one."""
    if getattr(tokenizer, "chat_template", None):
        msgs = prompt_messages(prompt) + [{"role": "assistant", "content": response}]
        return tokenizer.apply_chat_template(msgs, tokenize=False)
    return prompt_text(prompt) + response


def tail_ids(tokenizer, texts: list[str], max_tokens: int) -> list[list[int]]:
    """Token ids of each text (one tokenizer call for all), keeping the END of a text longer than max_tokens."""
    if not texts:
        return []
    return [ids[-max_tokens:] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices into `lengths`, longest first (a too-big batch fails at once), cut into runs of batch_size."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def pad_right(ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, T] input ids and attention mask, right-padded: the classifier reads the last non-pad token."""
    width = max(len(x) for x in ids)
    batch = torch.full((len(ids), width), pad_id, dtype=torch.long)  # [n, T]
    attn = torch.zeros((len(ids), width), dtype=torch.long)  # [n, T]
    for j, x in enumerate(ids):
        batch[j, :len(x)] = torch.tensor(x)
        attn[j, :len(x)] = 1
    return batch, attn


@torch.no_grad()
def classify_ids(model, ids: list[list[int]], pad_id: int, batch_size: int = 16) -> torch.Tensor:
    """[N] first logit of a sequence classifier for tokenised inputs, in their order; ceil(N / batch_size)
    forwards over length-sorted batches."""
    device = next(model.parameters()).device
    out = torch.empty(len(ids), dtype=torch.float32)  # [N]
    for idx in length_batches([len(x) for x in ids], max(1, batch_size)):
        batch, attn = pad_right([ids[i] for i in idx], pad_id)
        logits = model(input_ids=batch.to(device), attention_mask=attn.to(device)).logits  # [n, 1]
        out[idx] = logits[:, 0].float().cpu()
    return out


def classify(model, tokenizer, texts: list[str], max_tokens: int = 1024, batch_size: int = 16) -> torch.Tensor:
    """[N] first logit of a sequence classifier; inputs keep their END when too long (the response matters)."""
    return classify_ids(model, tail_ids(tokenizer, texts, max_tokens), tokenizer.pad_token_id, batch_size)


def pointwise_rewards(model, tokenizer, prompt: Any, responses: list[str], max_tokens: int = 1024) -> torch.Tensor:
    return classify(model, tokenizer, [pointwise_text(prompt, r, tokenizer) for r in responses], max_tokens)


def pair_text(prompt: Any, a: str, b: str, template: str = DEFAULT_PAIR_TEMPLATE) -> str:
    return template.format(prompt=prompt_text(prompt), a=a, b=b)


def ordered_pairs(k: int) -> list[tuple[int, int]]:
    """Every (i, j) with i != j, row by row: the pairs one list of k responses is judged on."""
    return [(i, j) for i in range(k) for j in range(k) if i != j]


def debiased(raw: torch.Tensor) -> torch.Tensor:
    """[K, K] P(y_i beats y_j) from raw first-beats-second probabilities (diagonal 0.5): both orders averaged."""
    return (raw + 1.0 - raw.T) / 2  # keeps the diagonal at 0.5


def pairwise_matrices(model, tokenizer, lists: list[tuple[Any, list[str]]], template: str = DEFAULT_PAIR_TEMPLATE,
                      max_tokens: int = 1024, batch_size: int = 16) -> list[torch.Tensor]:
    """One [K, K] position-debiased P(y_i beats y_j) per (prompt, responses) list; K may differ between lists.

    The ordered pairs of all lists are scored together: sum_b K_b (K_b - 1) texts in ceil(that / batch_size)
    forwards, so a forward may span lists."""
    texts = [pair_text(prompt, rs[i], rs[j], template) for prompt, rs in lists for i, j in ordered_pairs(len(rs))]
    probs = torch.sigmoid(classify(model, tokenizer, texts, max_tokens, batch_size))  # [sum K_b (K_b - 1)]
    out, at = [], 0
    for _, rs in lists:
        k = len(rs)
        raw = torch.full((k, k), 0.5)  # [K, K]
        n = k * (k - 1)
        raw[~torch.eye(k, dtype=torch.bool)] = probs[at:at + n]  # row-major off-diagonal = ordered_pairs(k)
        out.append(debiased(raw))
        at += n
    return out


def pairwise_matrix(model, tokenizer, prompt: Any, responses: list[str], template: str = DEFAULT_PAIR_TEMPLATE,
                    max_tokens: int = 1024, batch_size: int = 16) -> torch.Tensor:
    """[K, K] position-debiased P(y_i beats y_j); the diagonal is 0.5."""
    return pairwise_matrices(model, tokenizer, [(prompt, responses)], template, max_tokens, batch_size)[0]


def winrate_labels(P: torch.Tensor) -> torch.Tensor:
    """psi_k = mean over the list of P(y_k beats y_i), counting (k, k) as 0.5 (LiPO, section 4)."""
    return P.mean(dim=-1)
