"""What each training stage computes, one object per task; the driver (`launch.py`) and the per-worker loop
(`loop.py`) are shared and take the task object itself.

A task holds its validated stage config (`task.cfg`) and answers everything the driver and the workers ask:
- on the driver: `stage` (the MLflow stage tag and default run-name prefix), `source` (the validator and Arrow schema
  of one input row), `evaluate(model_dir)` (metrics of the exported model; most tasks: none);
- in the distributed tokenisation (`lipo.training.token_cache`): `tokenize(rows, tokenizer) -> (rows, counts)` on
  one chunk of validated rows, counting every drop under its metric name;
- on every worker: `build_model()`, `needs_reference(has_ref)` (the ZeRO stage's memory estimate asks it before any
  model exists), `build_reference(world, has_ref)`, `collate(items, pad_id)` and
  `loss(engine, ref, batch) -> (loss, metrics)`.

Tasks:
- `ListwiseTask` (`lipo train`): `scores = beta * (logp - ref_logp)`, scored by an objective from `lipo.losses`.
- `SFTTask` (`lipo sft`): mean next-token loss over the response tokens of demonstrations.
- `RewardTask` (`lipo train-rm`, in `reward.py`): a reward model; its `reward.kind` picks the form, `PointwiseForm` (Bradley-Terry:
  `pair_logistic` over the rewards of each list) or `PairwiseForm` (the paper's pairwise ranking model: BCE on
  P(first beats second), both orders of each pair). The two forms share everything else.

    result = launch(ListwiseTask(cfg))     # lipo.training.launch; this is what `lipo train CONFIG.yaml` runs
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import pyarrow as pa
import torch

from lipo.data.collate import collate_lists
from lipo.data.packing import is_packed
from lipo.losses import LOSSES
from lipo.metrics import ndcg, pairwise_accuracy, top_bottom_margin
from lipo.models.loading import enable_checkpointing, load_causal_lm
from lipo.models.logps import sequence_logps
from lipo.models.attention import FLEX_BLOCK, PackingRule, attn_implementation
from lipo.models.packed_logps import batch_logps, make_batch
from lipo.training import engine as eng
from lipo.training import rows as R
from lipo.training.config import SFTConfig, StageConfig, TrainConfig

Batch = dict[str, torch.Tensor]


class Task(Protocol):
    stage: ClassVar[str]
    cfg: StageConfig

    source: tuple[Callable[[Mapping[str, Any]], tuple[str, dict[str, Any]]], pa.Schema]

    def tokenize(self, rows: list[dict], tokenizer) -> tuple[list[dict], Counter]: ...

    def evaluate(self, model_dir: Path) -> dict[str, float]: ...

    def build_model(self) -> torch.nn.Module: ...

    def needs_reference(self, has_ref: bool) -> bool: ...

    def build_reference(self, world: int, has_ref: bool) -> torch.nn.Module | None: ...

    def collate(self, items: list[dict], pad_id: int) -> Batch: ...

    def loss(self, engine, ref, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]: ...


def causal_lm(cfg: StageConfig, spec: str | None = None, policy: bool = True) -> torch.nn.Module:
    """The policy to train (or, `policy=False`, the frozen reference `spec`) in the training dtype (bf16 on GPU,
    fp32 on CPU), built partitioned under ZeRO-3; the policy with gradient checkpointing and a LoRA adapter when
    configured. `cfg.deepspeed.stage` must be resolved (`engine.with_stage`)."""
    model = load_causal_lm(spec or cfg.model.path, eng.train_dtype(cfg), cfg.model.attn_implementation,
                           cuda=cfg.scaling.use_gpu, zero3=eng.zero3_config(cfg))
    if not policy:
        return model
    if cfg.model.gradient_checkpointing:
        enable_checkpointing(model)
    if cfg.model.lora:
        from peft import LoraConfig, get_peft_model  # optional dependency (lipo[lora])

        lc = cfg.model.lora
        model = get_peft_model(model, LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                                 target_modules=lc.target_modules, task_type="CAUSAL_LM"))
    return model


@dataclass
class ListwiseTask:
    """LiPO on lists. A micro-batch is packed (one shared prompt per list, `lipo.data.packing`) as `data.packing`
    says (`auto`: where it is faster, `lipo.models.attention.PackingRule`) and both the policy and the reference
    support it; otherwise padded to [B, K, T]. `settings` records the choice, which the loop prints."""

    cfg: TrainConfig
    stage: ClassVar[str] = "train"
    rule: PackingRule = field(init=False)
    settings: dict[str, str] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.rule = PackingRule("off", "unsupported")
        o = self.cfg.objective
        self.objective = LOSSES[o.name]  # resolved once here, never per step
        if o.name == "lambda":
            self.objective = functools.partial(self.objective, weight=o.lambda_weight, normalize=o.normalize)

    source = R.LISTS

    def tokenize(self, rows, tokenizer):
        return R.listwise_tokens(self.cfg, rows, tokenizer)

    def evaluate(self, model_dir):
        return {}

    def build_model(self):
        model = causal_lm(self.cfg)
        self._fit_packing(model)
        return model

    def needs_reference(self, has_ref):
        return not has_ref and not self.cfg.model.lora  # data carries ref_logps, or LoRA's base model is it

    def build_reference(self, world, has_ref):
        if not self.needs_reference(has_ref):
            return None
        m = self.cfg.model
        ref = causal_lm(self.cfg, m.reference or m.path, policy=False)
        self._fit_packing(ref, policy=False)
        return eng.build_reference(ref, self.cfg, world)

    def _fit_packing(self, model: torch.nn.Module, policy: bool = True) -> None:
        """The packing rule for the policy; a reference that cannot pack turns packing off for both."""
        rule = PackingRule.for_model(model, self.cfg.data.packing, cuda=self.cfg.scaling.use_gpu)
        if policy:
            self.rule = rule
            self.settings["attention"] = str(attn_implementation(model))
        elif rule.form == "unsupported":
            self.rule = rule
        self.settings["packing"] = self.rule.describe()

    def collate(self, items, pad_id):
        pad_to = FLEX_BLOCK if self.rule.form == "flex" else 1
        return make_batch(items, pad_id, self.rule.pack(items), pad_to=pad_to)

    def reference_logps(self, engine, ref, batch: Batch) -> torch.Tensor:
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
                      "log_ratio": log_ratio.detach()[mask].mean().item(),
                      "packed": float(is_packed(batch))}  # the fraction of packed micro-batches, once averaged


def response_lengths(batch: Batch) -> torch.Tensor:
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


@dataclass
class SFTTask:
    cfg: SFTConfig
    stage: ClassVar[str] = "sft"

    source = R.DEMONSTRATIONS

    def tokenize(self, rows, tokenizer):
        return R.sft_tokens(self.cfg, rows, tokenizer)

    def evaluate(self, model_dir):
        return {}

    def build_model(self):
        return causal_lm(self.cfg)

    def needs_reference(self, has_ref):
        return False

    def build_reference(self, world, has_ref):
        return None

    def collate(self, items, pad_id):
        return collate_lists(items, pad_id)

    def loss(self, engine, ref, batch):
        n_tokens = (batch["response_mask"][..., 1:].sum()).clamp(min=1)
        nll = -sequence_logps(engine, batch).sum() / n_tokens  # mean over response tokens
        return nll, {"loss": nll.item(), "perplexity": float(torch.exp(nll.detach()).item())}
