"""Shared-prefix packing: one row `[prompt, response_1, ..., response_K]` per list instead of K padded rows.

A list's K responses share one prompt. `collate_lists` repeats the prompt in each of K rows; here the prompt is
laid down once and every response follows it in the same row. A 4-D attention mask keeps the responses independent:
prompt tokens attend causally within their prompt, and a response token attends to its own prompt and causally to
its own earlier tokens, never to another response or another list. Each response's position ids restart at
len(prompt), so every token sees exactly the context (and RoPE/learned positions) it has in the unpacked row, and
the summed log-probs agree with `sequence_logps` up to float rounding.

With `token_budget`, several lists share one row (padding-free mode): rows are cut when the next list would push
the row past the budget, so a micro-batch is sized by tokens rather than by a count of lists. Training and
build-lists pack one list per row today; `token_budget` is reached through `lipo.models.packed_logps.make_batch` /
`score_lists`, and used by benchmarks/gpu_check.py (padding-free parity on a GPU) and tests/lipo/models/test_packing.py.

No [L, L] mask is built here: the rows carry segment and block ids, and `lipo.models.attention` turns them into a
FlexAttention block mask or a dense mask on the device (a dense mask per row was O(L^2) host memory and transfer).

    packed = pack_lists(items, pad_id=tok.pad_token_id)                 # one list per row
    packed = pack_lists(items, pad_id=tok.pad_token_id, token_budget=4096)  # several lists per row
    logps = packed_sequence_logps(model, packed)                        # [B, K], see lipo.models.packed_logps
"""

from __future__ import annotations

import torch


def list_token_count(item: dict) -> int:
    """Tokens a list occupies when packed: its prompt once plus every response."""
    return len(item["prompt_ids"]) + sum(len(r) for r in item["response_ids"])


def batches_by_token_budget(items: list[dict], budget: int) -> list[list[int]]:
    """Group list indices, in order, so each group's packed token count stays within `budget`.

    Greedy and deterministic: a group is closed when the next list would overflow it. A list larger than the budget
    on its own gets a group to itself (it cannot be split without changing its log-probs).
    """
    if budget <= 0:
        raise ValueError(f"token budget must be positive; got {budget}")
    groups: list[list[int]] = []
    used = 0
    for i, it in enumerate(items):
        n = list_token_count(it)
        if groups and used + n <= budget:
            groups[-1].append(i)
            used += n
        else:
            groups.append([i])
            used = n
    return groups


def pack_lists(items: list[dict], pad_id: int, token_budget: int | None = None,
               list_size: int | None = None, pad_to: int = 1) -> dict[str, torch.Tensor]:
    """Pack tokenised lists (see `tokenize_list`) into rows sharing each prompt across its responses; with
    `token_budget`, several lists per row (see the module docstring for where that is used).

    `pad_to` rounds the row length up to a multiple (FlexAttention's block size keeps compiled shapes few).

    Returns
      input_ids [R, L], position_ids [R, L],
      segment_ids [R, L] (the list's index in `items`; -1 on padding) and block_ids [R, L] (0 on a prompt, k + 1
        on response k; -1 on padding), from which `lipo.models.attention` builds the attention mask on the device,
      target_row, target_col, source_col, target_slot [M]: for each scored response token, its row and column, the
        column whose logits predict it (the previous token, or the last prompt token for a response's first token),
        and its flat slot b * K + k in the [B, K] output,
      labels, list_mask [B, K] and ref_logps [B, K] when every list has them, laid out exactly as `collate_lists`.
    """
    K = max(len(it["response_ids"]) for it in items)
    if list_size is not None:
        K = max(K, list_size)
    groups = batches_by_token_budget(items, token_budget) if token_budget else [[b] for b in range(len(items))]
    return {**_pack_rows(items, groups, pad_id, K, pad_to), **_list_tensors(items, K)}


def _pack_rows(items: list[dict], groups: list[list[int]], pad_id: int, K: int,
               pad_to: int = 1) -> dict[str, torch.Tensor]:
    """The token rows of `pack_lists`: row r holds the lists `groups[r]`, one after the other."""
    R = len(groups)
    L = max(sum(list_token_count(items[b]) for b in g) for g in groups)
    L = -(-L // pad_to) * pad_to
    input_ids = torch.full((R, L), pad_id, dtype=torch.long)
    position_ids = torch.zeros((R, L), dtype=torch.long)
    segment_ids = torch.full((R, L), -1, dtype=torch.long)  # which list; -1 on padding
    block_ids = torch.full((R, L), -1, dtype=torch.long)  # 0 on the prompt, k + 1 on response k
    t_row: list[int] = []
    t_col: list[int] = []
    s_col: list[int] = []
    t_slot: list[int] = []
    for r, group in enumerate(groups):
        col = 0
        for b in group:
            it = items[b]
            prompt = list(it["prompt_ids"])
            P = len(prompt)
            input_ids[r, col:col + P] = torch.tensor(prompt, dtype=torch.long)
            position_ids[r, col:col + P] = torch.arange(P)
            segment_ids[r, col:col + P] = b
            block_ids[r, col:col + P] = 0
            last_prompt = col + P - 1
            col += P
            for k, resp in enumerate(it["response_ids"]):
                n = len(resp)
                input_ids[r, col:col + n] = torch.tensor(list(resp), dtype=torch.long)
                position_ids[r, col:col + n] = torch.arange(P, P + n)
                segment_ids[r, col:col + n] = b
                block_ids[r, col:col + n] = k + 1
                # With an empty prompt nothing predicts the first response token; sequence_logps skips it too.
                j0 = 0 if P else 1
                t_col.extend(range(col + j0, col + n))
                if P and n:
                    s_col.append(last_prompt)  # the first response token is predicted by the LAST PROMPT token
                s_col.extend(range(col + max(j0, 1) - 1, col + n - 1))
                t_row.extend([r] * (n - j0))
                t_slot.extend([b * K + k] * (n - j0))
                col += n
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "segment_ids": segment_ids,
        "block_ids": block_ids,
        "target_row": torch.tensor(t_row, dtype=torch.long),
        "target_col": torch.tensor(t_col, dtype=torch.long),
        "source_col": torch.tensor(s_col, dtype=torch.long),
        "target_slot": torch.tensor(t_slot, dtype=torch.long),
    }


def _list_tensors(items: list[dict], K: int) -> dict[str, torch.Tensor]:
    """labels, list_mask [B, K] (and ref_logps [B, K] when every list has them), as `collate_lists` lays them out."""
    B = len(items)
    labels = torch.zeros((B, K), dtype=torch.float32)
    list_mask = torch.zeros((B, K), dtype=torch.bool)
    has_ref = all(it.get("ref_logps") is not None for it in items)
    ref = torch.zeros((B, K), dtype=torch.float32)
    for b, it in enumerate(items):
        list_mask[b, :len(it["response_ids"])] = True
        labels[b, : len(it["labels"])] = torch.tensor(it["labels"], dtype=torch.float32)
        if has_ref:
            ref[b, : len(it["ref_logps"])] = torch.tensor(it["ref_logps"], dtype=torch.float32)
    out = {"labels": labels, "list_mask": list_mask}
    if has_ref:
        out["ref_logps"] = ref
    return out


def is_packed(batch: dict[str, torch.Tensor]) -> bool:
    """True for a `pack_lists` batch, False for a `collate_lists` one."""
    return "target_slot" in batch


def packed_token_count(packed: dict[str, torch.Tensor]) -> int:
    """Tokens the forward pass processes, padding excluded (each prompt counted once per list)."""
    return int((packed["segment_ids"] >= 0).sum().item())
