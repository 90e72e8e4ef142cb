"""What a training stage computes per micro-batch, behind one `Task` protocol; the loop in `loop.py` is shared.

- `lipo`: LiPO on lists: `scores = beta * (logp - ref_logp)`, objective from `lipo.losses.LOSSES`.
- `sft`: mean next-token loss over response tokens of demonstrations (lists of one response).
- `reward_pointwise`: Bradley-Terry reward model: `pair_logistic` over the rewards of each list's responses.
- `reward_pairwise`: the paper's pairwise ranking model: BCE on P(first beats second), both orders of each pair.

Tasks are picked by name from `TASKS`; rows come from `lipo.training.rows`, built on the driver.
"""

from __future__ import annotations

import functools
from typing import Protocol

import torch
import torch.nn.functional as F

from lipo.data.collate import collate_lists
from lipo.losses import LOSSES, pair_logistic
from lipo.models.loading import load_causal_lm, load_sequence_classifier
from lipo.models.logps import sequence_logps
from lipo.data.packing import is_packed
from lipo.models.packed_logps import batch_logps, make_batch, supports_packing
from lipo.training import engine as eng
from lipo.training.metrics import ndcg, pairwise_accuracy, top_bottom_margin


class Task(Protocol):
    def build_model(self) -> torch.nn.Module: ...

    def build_reference(self, world: int) -> torch.nn.Module | None: ...

    def collate(self, items: list[dict]) -> dict[str, torch.Tensor]: ...

    def loss(self, engine, ref, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]: ...


def _causal_lm(cfg) -> torch.nn.Module:
    model = load_causal_lm(cfg.model.path, "float32", cfg.model.attn_implementation)
    if cfg.model.lora:
        from peft import LoraConfig, get_peft_model

        lc = cfg.model.lora
        model = get_peft_model(model, LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                                 target_modules=lc.target_modules, task_type="CAUSAL_LM"))
    return model


class ListwiseTask:
    """Lists are packed (one shared prompt per list, `lipo.data.packing`) when `data.packing` is on and both the
    policy and the reference support it; otherwise padded to [B, K, T]."""

    def __init__(self, cfg, pad_id: int, has_ref: bool):
        self.cfg, self.pad_id, self.has_ref = cfg, pad_id, has_ref
        self.packing = cfg.data.packing
        fn = LOSSES[cfg.objective.name]
        if cfg.objective.name == "lambda":
            fn = functools.partial(fn, weight=cfg.objective.lambda_weight, normalize=cfg.objective.normalize)
        self.objective = fn

    def build_model(self):
        model = _causal_lm(self.cfg)
        self.packing = self.packing and supports_packing(model)
        return model

    def build_reference(self, world):
        if self.has_ref or self.cfg.model.lora:  # data carries ref_logps, or LoRA's base model is the reference
            return None
        m = self.cfg.model
        ref = load_causal_lm(m.reference or m.path, "float32", m.attn_implementation)
        self.packing = self.packing and supports_packing(ref)
        return eng.build_reference(ref, self.cfg, world)

    def collate(self, items):
        return make_batch(items, self.pad_id, self.packing)

    def reference_logps(self, engine, ref, batch) -> torch.Tensor:
        if "ref_logps" in batch:
            return batch["ref_logps"]
        with torch.no_grad():
            if ref is None:  # LoRA: the reference is the base model with the adapter switched off
                with engine.module.disable_adapter():
                    return batch_logps(engine, batch)
            return batch_logps(ref, batch)

    def loss(self, engine, ref, batch):
        logps = batch_logps(engine, batch)  # [B, K]
        log_ratio = logps - self.reference_logps(engine, ref, batch)  # [B, K]
        scores, labels, mask = self.cfg.objective.beta * log_ratio, batch["labels"], batch["list_mask"]
        rank_loss = self.objective(scores, labels, mask)
        nll = best_response_nll(logps, labels, mask, response_lengths(batch))
        loss = rank_loss + self.cfg.objective.sft_weight * nll
        s = scores.detach()
        return loss, {"loss": loss.item(), "rank_loss": rank_loss.item(), "best_nll": nll.item(),
                      "ndcg": ndcg(s, labels, mask).item(),
                      "pair_accuracy": pairwise_accuracy(s, labels, mask).item(),
                      "margin": top_bottom_margin(s, labels, mask).item(),
                      "log_ratio": log_ratio.detach()[mask].mean().item()}


def response_lengths(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, K] number of scored tokens of each response, for packed and padded batches alike."""
    B, K = batch["list_mask"].shape
    if is_packed(batch):
        return torch.bincount(batch["target_slot"], minlength=B * K).view(B, K)
    return batch["response_mask"].sum(-1)


def best_response_nll(logps: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                      lengths: torch.Tensor) -> torch.Tensor:
    """Mean over lists of -log p(best response) / its length; the best is the highest label (first on ties)."""
    masked = labels.masked_fill(~mask, float("-inf"))  # [B, K]
    best = masked.argmax(-1, keepdim=True)  # [B, 1]
    per_token = -logps.gather(-1, best).squeeze(-1) / lengths.gather(-1, best).squeeze(-1).clamp(min=1)  # [B]
    has_any = mask.any(-1)
    return per_token[has_any].mean() if bool(has_any.any()) else logps.sum() * 0.0


class SFTTask:
    def __init__(self, cfg, pad_id: int, has_ref: bool = False):
        self.cfg, self.pad_id = cfg, pad_id

    def build_model(self):
        return _causal_lm(self.cfg)

    def build_reference(self, world):
        return None

    def collate(self, items):
        return collate_lists(items, self.pad_id)

    def loss(self, engine, ref, batch):
        n_tokens = (batch["response_mask"][..., 1:].sum()).clamp(min=1)
        nll = -sequence_logps(engine, batch).sum() / n_tokens  # mean over response tokens
        return nll, {"loss": nll.item(), "perplexity": float(torch.exp(nll.detach()).item())}


def _collate_texts(items: list[dict], key: str, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad the token rows in `items[*][key]` (lists of rows) into [N, T]."""
    rows = [r for it in items for r in it[key]]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        attn[i, : len(r)] = 1
    return {"input_ids": ids, "attention_mask": attn}


class PointwiseRewardTask:
    def __init__(self, cfg, pad_id: int, has_ref: bool = False):
        self.cfg, self.pad_id = cfg, pad_id

    def build_model(self):
        return load_sequence_classifier(self.cfg.model.path)

    def build_reference(self, world):
        return None

    def collate(self, items):
        K = max(len(it["text_ids"]) for it in items)
        batch = _collate_texts(items, "text_ids", self.pad_id)
        labels = torch.zeros((len(items), K))
        mask = torch.zeros((len(items), K), dtype=torch.bool)
        slots = []
        for b, it in enumerate(items):
            labels[b, : len(it["labels"])] = torch.tensor(it["labels"])
            mask[b, : len(it["labels"])] = True
            slots += [b * K + k for k in range(len(it["labels"]))]
        return {**batch, "labels": labels, "list_mask": mask, "slots": torch.tensor(slots)}

    def loss(self, engine, ref, batch):
        r = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]  # [N]
        B, K = batch["labels"].shape
        scores = torch.zeros(B * K, dtype=r.dtype, device=r.device).index_put((batch["slots"],), r).view(B, K)
        loss = pair_logistic(scores, batch["labels"], batch["list_mask"])  # Bradley-Terry over every labelled pair
        acc = pairwise_accuracy(scores.detach(), batch["labels"], batch["list_mask"])
        return loss, {"loss": loss.item(), "pair_accuracy": acc.item()}


class PairwiseRewardTask:
    def __init__(self, cfg, pad_id: int, has_ref: bool = False):
        self.cfg, self.pad_id = cfg, pad_id

    def build_model(self):
        return load_sequence_classifier(self.cfg.model.path)

    def build_reference(self, world):
        return None

    def collate(self, items):
        batch = _collate_texts(items, "pair_ids", self.pad_id)
        return {**batch, "targets": torch.tensor([t for it in items for t in it["targets"]], dtype=torch.float32)}

    def loss(self, engine, ref, batch):
        logit = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]  # [N]
        loss = F.binary_cross_entropy_with_logits(logit, batch["targets"])
        acc = ((logit.detach() > 0).float() == batch["targets"]).float().mean()
        return loss, {"loss": loss.item(), "pair_accuracy": acc.item()}


TASKS = {"lipo": ListwiseTask, "sft": SFTTask, "reward_pointwise": PointwiseRewardTask,
         "reward_pairwise": PairwiseRewardTask}
