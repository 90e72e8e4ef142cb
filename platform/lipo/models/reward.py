"""Reward models: pointwise scalars and the paper's pairwise ranking model, plus win-rate labels from pairs.

A *pointwise* reward model is a sequence classifier with one output, read at the last token of `prompt + response`.
The *pairwise* ranking model (LiPO, section 4) reads one text holding the prompt and two responses and outputs the
log-odds that the first beats the second; `pair_template` sets that text. Position bias is removed by averaging both
orders: P(a > b) = (P(a, b) + 1 - P(b, a)) / 2, so P(a > b) + P(b > a) = 1 exactly.

    r = pointwise_rewards(rm, tok, "2+2=", ["4", "5"])                # [2]
    P = pairwise_matrix(prm, tok, "2+2=", ["4", "5", "22"])           # [3, 3], P[i, j] = P(y_i beats y_j)
    psi = winrate_labels(P)                                           # psi_k = mean_i P[k, i], with P[k, k] = 0.5
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


@torch.no_grad()
def classify(model, tokenizer, texts: list[str], max_tokens: int = 1024, batch_size: int = 16) -> torch.Tensor:
    """[N] first logit of a sequence classifier; inputs keep their END when too long (the response matters)."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(texts), batch_size):
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"][-max_tokens:] for t in texts[i:i + batch_size]]
        width = max(len(x) for x in ids)
        pad = tokenizer.pad_token_id
        batch = torch.full((len(ids), width), pad, dtype=torch.long)
        attn = torch.zeros((len(ids), width), dtype=torch.long)
        for j, x in enumerate(ids):  # right padding: the classifier reads the last non-pad token
            batch[j, :len(x)] = torch.tensor(x)
            attn[j, :len(x)] = 1
        logits = model(input_ids=batch.to(device), attention_mask=attn.to(device)).logits  # [n, 1]
        out.append(logits[:, 0].float().cpu())
    return torch.cat(out)


def pointwise_rewards(model, tokenizer, prompt: Any, responses: list[str], max_tokens: int = 1024) -> torch.Tensor:
    return classify(model, tokenizer, [pointwise_text(prompt, r, tokenizer) for r in responses], max_tokens)


def pair_text(prompt: Any, a: str, b: str, template: str = DEFAULT_PAIR_TEMPLATE) -> str:
    return template.format(prompt=prompt_text(prompt), a=a, b=b)


def pairwise_matrix(model, tokenizer, prompt: Any, responses: list[str], template: str = DEFAULT_PAIR_TEMPLATE,
                    max_tokens: int = 1024) -> torch.Tensor:
    """[K, K] position-debiased P(y_i beats y_j); the diagonal is 0.5."""
    k = len(responses)
    pairs = [(i, j) for i in range(k) for j in range(k) if i != j]
    raw = torch.full((k, k), 0.5)
    if pairs:
        probs = torch.sigmoid(classify(model, tokenizer, [pair_text(prompt, responses[i], responses[j], template)
                                                          for i, j in pairs], max_tokens))
        for (i, j), p in zip(pairs, probs):
            raw[i, j] = p
    return (raw + 1.0 - raw.T) / 2  # averages the two orders; keeps the diagonal at 0.5


def winrate_labels(P: torch.Tensor) -> torch.Tensor:
    """psi_k = mean over the list of P(y_k beats y_i), counting (k, k) as 0.5 (LiPO, section 4)."""
    return P.mean(dim=-1)
