"""Summed response-token log-probabilities: the quantity every LiPO score is built from.

    logps = sequence_logps(model, batch)            # [B, K]
    scores = beta * (logps - batch["ref_logps"])    # [B, K]

Training, reference precomputation (build-lists) and evaluation all call this one function (or its packed twin,
`lipo.models.packed_logps`, which agrees with it to about 4e-6 in fp32), so the numbers match for the same weights
and tokens.

Logits only where they are scored. A forward pass that returns logits holds [rows, positions, vocabulary] numbers
(3 GiB in bf16 for 10k positions at a 152k vocabulary), then a float copy and a log-softmax of the scored ones, and
the same again in the backward pass. `scored_token_logps` instead runs the model with its LM head reduced to one
column (a forward pre-hook on the head keeps the head's full input, the final hidden states), gathers the hidden
states of the M scored positions [M, H], and applies the head to them in chunks of `CHUNK_ELEMENTS // V` rows,
each reduced at once to `logit[target] - logsumexp(logits)`. Under autograd every chunk is checkpointed, so the
backward pass recomputes its logits instead of keeping them: memory grows with M x H plus one chunk x V. That
costs one more head matmul (about 2% of a step's FLOPs for a 7B model with a 152k vocabulary, most of a step
for a tiny model), so below `RECOMPUTE_ABOVE` scored logits they are kept instead. The whole
model forward still runs through the engine (DeepSpeed's ZeRO-3 hooks fetch the head's weights for each chunk as for
any module call). Only verified families (`lipo.models.attention.MASK_STYLE`) take this path, because logits must
be exactly `head(hidden)` there (Gemma2's final soft-capping is applied here); others get full logits.
"""

from __future__ import annotations

import threading

import torch
from torch.utils.checkpoint import checkpoint

from lipo.models.attention import MASK_STYLE, unwrap

CHUNK_ELEMENTS = 2**24  # logits per chunk: 64 MiB in fp32, whatever the vocabulary
# Below this many scored logits (M x V; 256 MiB in fp32) they are computed in one piece and kept for the backward
# pass: recomputing the head costs one more head matmul, worth it only when the logits are large.
RECOMPUTE_ABOVE = 2**26


def _softcap(model: torch.nn.Module) -> float | None:
    return getattr(unwrap(model).config, "final_logit_softcapping", None)


class _TargetLogp(torch.autograd.Function):
    """[c] log_softmax(logits)[target] of logits [c, V], in fp32 whatever the logits' dtype.

    Written out because autograd's own `log_softmax(...).gather(...)` (or `gather - logsumexp`) keeps an fp32
    [c, V] result and builds two more [c, V] gradients in the backward pass; here only the logits are kept, and the
    backward pass builds one [c, V] gradient in place: d/dlogits = g * (onehot(target) - softmax).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, softcap: float | None) -> torch.Tensor:
        x = logits.float()
        if softcap:  # Gemma2: logits = tanh(logits / cap) * cap
            x = torch.tanh(x / softcap) * softcap
        lse = torch.logsumexp(x, dim=-1)  # [c]
        ctx.save_for_backward(logits, targets, lse)
        ctx.softcap = softcap
        return x.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        logits, targets, lse = ctx.saved_tensors
        x, cap = logits.float(), ctx.softcap
        if cap:
            tanh = torch.tanh(x / cap)
            x = tanh * cap
        grad = torch.sub(x, lse.unsqueeze(-1)).exp_().mul_(-g.unsqueeze(-1))  # [c, V]: -g * softmax
        grad.scatter_add_(-1, targets.unsqueeze(-1), g.unsqueeze(-1))
        if cap:
            grad.mul_(1 - tanh * tanh)
        return grad.to(logits.dtype), None, None


def _chunk_logps(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                 softcap: float | None) -> torch.Tensor:
    return _TargetLogp.apply(head(hidden), targets, softcap)  # [c]


def chunked_logps(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                  softcap: float | None = None) -> torch.Tensor:
    """[M] log p(targets) from the final hidden states [M, H], the LM head applied chunk by chunk."""
    vocab = getattr(head, "out_features", 2**15)
    grad = torch.is_grad_enabled() and hidden.requires_grad
    if grad and hidden.shape[0] * vocab <= RECOMPUTE_ABOVE:
        return _chunk_logps(head, hidden, targets, softcap)  # small: one piece, logits kept for backward
    out = []
    for h, t in zip(hidden.split(max(1, CHUNK_ELEMENTS // vocab)), targets.split(max(1, CHUNK_ELEMENTS // vocab))):
        if grad:  # keep the hidden chunk only; the backward pass recomputes its logits
            out.append(checkpoint(_chunk_logps, head, h, t, softcap, use_reentrant=False))
        else:
            out.append(_chunk_logps(head, h, t, softcap))
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)


# The head's input is captured by one forward pre-hook per head module, registered once and kept: it acts only for
# the thread that asked (a Serve replica scores concurrent requests on threads of one model), and passes everything
# else through, the head's own chunk calls included.
_capture = threading.local()


def _keep_head_input(module: torch.nn.Module, args: tuple):
    slot = getattr(_capture, "slot", None)
    if slot is None or slot["head"] is not module:
        return None
    _capture.slot = None  # only the call inside the model's forward
    slot["hidden"] = args[0]  # [R, L, H]: the final (normed) hidden states
    return (args[0][..., :1, :], *args[1:])  # the head runs on one column only


def _final_hidden(model: torch.nn.Module, head: torch.nn.Module, inputs: dict) -> torch.Tensor:
    """[R, L, H] hidden states that `model(**inputs)` feeds its LM head, without computing logits beyond one column."""
    if not getattr(head, "_lipo_keeps_input", False):
        head.register_forward_pre_hook(_keep_head_input)
        head._lipo_keeps_input = True
    slot = {"head": head}
    _capture.slot = slot
    try:
        model(**inputs, use_cache=False)
    finally:
        _capture.slot = None
    return slot["hidden"]


def scored_token_logps(model: torch.nn.Module, inputs: dict, rows: torch.Tensor, source_cols: torch.Tensor,
                       targets: torch.Tensor) -> torch.Tensor:
    """[M] log p(targets[i]) as predicted at (rows[i], source_cols[i]) by `model(**inputs)`."""
    base = unwrap(model)
    head = base.get_output_embeddings() if getattr(base.config, "model_type", None) in MASK_STYLE else None
    if head is None:  # unverified family: logits may be more than head(hidden); take them as the model gives them
        logits = model(**inputs, use_cache=False).logits  # [R, L, V]
        return _TargetLogp.apply(logits[rows, source_cols], targets, None)  # [M]
    hidden = _final_hidden(model, head, inputs)[rows, source_cols]  # [M, H]
    return chunked_logps(head, hidden, targets, _softcap(model))


def sequence_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, K] summed log-probs of each response given its prompt; padded list slots get 0.

    batch: input_ids, attention_mask, response_mask [B, K, T] and list_mask [B, K] from `lipo.data.collate`.
    Padded slots are not run through the model at all.
    """
    input_ids = batch["input_ids"]
    B, K, T = input_ids.shape
    valid = batch["list_mask"].reshape(-1)  # [B*K]
    ids = input_ids.reshape(-1, T)[valid]  # [N, T]
    attn = batch["attention_mask"].reshape(-1, T)[valid]  # [N, T]
    resp = batch["response_mask"].reshape(-1, T)[valid]  # [N, T]
    # Trim the columns every row pads, so the forward pass sees no dead tail.
    width = int(attn.sum(-1).max().item()) if ids.shape[0] else 1
    ids, attn, resp = ids[:, :width], attn[:, :width], resp[:, :width]
    # The token at column t + 1 is scored from the logits at column t.
    rows, cols = resp[:, 1:].bool().nonzero(as_tuple=True)  # [M], [M]
    lp = scored_token_logps(model, {"input_ids": ids, "attention_mask": attn}, rows, cols, ids[rows, cols + 1])
    per_row = torch.zeros(ids.shape[0], dtype=lp.dtype, device=lp.device).index_add(0, rows, lp)  # [N]
    out = torch.zeros(B * K, dtype=per_row.dtype, device=per_row.device)
    out = out.masked_scatter(valid, per_row) if per_row.numel() else out
    return out.reshape(B, K)
