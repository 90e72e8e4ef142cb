"""`RewardTask`: training a reward model on labelled lists (`lipo train-rm`), in one of two forms.

- `PointwiseForm`: a Bradley-Terry scalar reward model. One text per response; the loss is `pair_logistic` over the
  rewards of each list's responses, i.e. every labelled pair of the list.
- `PairwiseForm`: the LiPO paper's pairwise ranking model, P(first response beats second). One text per ordered
  pair with unequal labels (both orders); the loss is BCE on the target 1 if the first is better.

Everything else is shared: the data split, the model, the driver and the held-out accuracy, which scores the lists
held out by id (`reward.eval_fraction`) through the same inference functions build-lists and Serve use
(`lipo.models.reward`). A task is a plain object passed to `lipo.training.launch.launch`:

    result = launch(RewardTask(cfg))       # what `lipo train-rm CONFIG.yaml` runs
"""

from __future__ import annotations

import hashlib
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol

import torch
import torch.nn.functional as F

from lipo import storage
from lipo.data.files import plan_units, resolve_paths
from lipo.data.readers import ReadReport, list_row, read_unit
from lipo.data.records import LIST_SCHEMA
from lipo.data.records import prompt_of
from lipo.losses import pair_logistic
from lipo.metrics import pairwise_accuracy
from lipo.models.loading import enable_checkpointing, load_sequence_classifier, load_tokenizer
from lipo.models.reward import pad_right, pair_text, pairwise_matrix, pointwise_rewards, pointwise_text
from lipo.training import engine as eng
from lipo.training.config import RewardTrainConfig
from lipo.training.rows import LISTS

Batch = dict[str, torch.Tensor]


class RewardForm(Protocol):
    """What differs between a pointwise and a pairwise reward model."""

    def encode(self, prompt: Any, responses: list[str], labels: list[float], enc: Callable[[str], list[int]],
               tokenizer) -> dict: ...

    def collate(self, items: list[dict], pad_id: int) -> Batch: ...

    def loss(self, logit: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]: ...

    def margins(self, model, tokenizer, prompt: Any, responses: list[str]) -> torch.Tensor: ...


def held_out(list_id: str, fraction: float) -> bool:
    """Deterministic train/held-out split by id, independent of file order."""
    return int(hashlib.sha1(list_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def held_out_lists(cfg: RewardTrainConfig) -> Iterator[dict]:
    """The held-out lists, read in one streaming pass (only they are kept: about `eval_fraction` of the data)."""
    for unit in plan_units(resolve_paths(cfg.data.train)):
        for table in read_unit(unit, list_row, LIST_SCHEMA, "skip", ReadReport()):
            yield from (r for r in table.to_pylist() if held_out(r["id"], cfg.reward.eval_fraction))


def pad_texts(items: list[dict], key: str, pad_id: int) -> Batch:
    """Right-pad the token rows in `items[*][key]` (lists of rows) into [N, T]."""
    ids, attn = pad_right([r for it in items for r in it[key]], pad_id)  # [N, T] each
    return {"input_ids": ids, "attention_mask": attn}


@dataclass(frozen=True)
class PointwiseForm:
    max_tokens: int

    def encode(self, prompt, responses, labels, enc, tokenizer):
        return {"text_ids": [enc(pointwise_text(prompt, x, tokenizer)) for x in responses], "labels": labels}

    def collate(self, items, pad_id):
        K = max(len(it["text_ids"]) for it in items)
        batch = pad_texts(items, "text_ids", pad_id)
        labels = torch.zeros((len(items), K))  # [B, K]
        mask = torch.zeros((len(items), K), dtype=torch.bool)  # [B, K]
        slots = []
        for b, it in enumerate(items):
            labels[b, : len(it["labels"])] = torch.tensor(it["labels"])
            mask[b, : len(it["labels"])] = True
            slots += [b * K + k for k in range(len(it["labels"]))]
        return {**batch, "labels": labels, "list_mask": mask, "slots": torch.tensor(slots)}

    def loss(self, logit, batch):
        B, K = batch["labels"].shape
        scores = torch.zeros(B * K, dtype=logit.dtype, device=logit.device).index_put(
            (batch["slots"],), logit).view(B, K)  # [B, K]
        loss = pair_logistic(scores, batch["labels"], batch["list_mask"])  # Bradley-Terry over every labelled pair
        return loss, pairwise_accuracy(scores.detach(), batch["labels"], batch["list_mask"])

    def margins(self, model, tokenizer, prompt, responses):
        r = pointwise_rewards(model, tokenizer, prompt, responses, self.max_tokens)  # [K]
        return r[:, None] - r[None, :]  # [K, K]: > 0 where i scores above j


@dataclass(frozen=True)
class PairwiseForm:
    template: str
    max_tokens: int

    def encode(self, prompt, responses, labels, enc, tokenizer):
        pairs = [(i, j) for i in range(len(responses)) for j in range(len(responses)) if labels[i] != labels[j]]
        return {"pair_ids": [enc(pair_text(prompt, responses[i], responses[j], self.template)) for i, j in pairs],
                "targets": [1.0 if labels[i] > labels[j] else 0.0 for i, j in pairs]}

    def collate(self, items, pad_id):
        batch = pad_texts(items, "pair_ids", pad_id)
        return {**batch, "targets": torch.tensor([t for it in items for t in it["targets"]], dtype=torch.float32)}

    def loss(self, logit, batch):
        loss = F.binary_cross_entropy_with_logits(logit, batch["targets"])
        return loss, ((logit.detach() > 0).float() == batch["targets"]).float().mean()

    def margins(self, model, tokenizer, prompt, responses):
        P = pairwise_matrix(model, tokenizer, prompt, responses, self.template, self.max_tokens)  # [K, K]
        return P - 0.5  # > 0 where i is judged better than j


@dataclass
class RewardTask:
    cfg: RewardTrainConfig
    stage: ClassVar[str] = "train-rm"
    form: RewardForm = field(init=False)

    def __post_init__(self) -> None:
        r = self.cfg.reward
        self.form = PointwiseForm(r.max_tokens) if r.kind == "pointwise" else PairwiseForm(r.pair_template,
                                                                                            r.max_tokens)

    source = LISTS

    def tokenize(self, rows: list[dict], tokenizer) -> tuple[list[dict], Counter]:
        """One row per training list with at least two distinct labels; the held-out lists are counted."""
        train = [r for r in rows if not held_out(r["id"], self.cfg.reward.eval_fraction)]
        limit = self.cfg.reward.max_tokens

        def enc(text: str) -> list[int]:  # the input keeps its END when longer
            return tokenizer(text, add_special_tokens=False)["input_ids"][-limit:]

        out, no_pairs = [], 0
        for r in train:
            if len(set(r["labels"])) < 2:
                no_pairs += 1  # all labels tied: nothing to learn from this list
                continue
            out.append({"id": r["id"], **self.form.encode(prompt_of(r), r["responses"], r["labels"], enc, tokenizer)})
        return out, Counter({"data/heldout_lists": float(len(rows) - len(train)),
                             "data/dropped_lists_without_pairs": float(no_pairs)})

    def evaluate(self, model_dir: Path | str) -> dict[str, float]:
        """Pairwise accuracy of the exported model on the held-out lists; tied verdicts count half."""
        test = list(held_out_lists(self.cfg))
        if not isinstance(model_dir, Path):  # on object storage: read a local copy
            model_dir = storage.download_dir(model_dir, Path(tempfile.mkdtemp(prefix="lipo-rm-")) / "model")
        model, tok = load_sequence_classifier(str(model_dir)), load_tokenizer(str(model_dir))
        hits, pairs = 0.0, 0
        for row in test:
            margin = self.form.margins(model, tok, prompt_of(row), row["responses"])  # [K, K]
            verdict = 0.5 * (1 + torch.sign(margin))  # 1 if i beats j, 0.5 on a tie
            lab = torch.tensor(row["labels"])
            better = lab[:, None] > lab[None, :]  # [K, K] pairs where i should win
            hits += float(verdict[better].sum())
            pairs += int(better.sum())
        if not pairs:
            return {}
        print(f"[lipo] reward model held-out pairwise accuracy: {hits / pairs:.3f} over {pairs} pairs", flush=True)
        return {"eval/pair_accuracy": hits / pairs, "eval/pairs": float(pairs)}

    def build_model(self):
        """In the training dtype, built partitioned under ZeRO-3 (as `tasks.causal_lm`); no reference model."""
        cfg = self.cfg
        model = load_sequence_classifier(cfg.model.path, eng.train_dtype(cfg), zero3=eng.zero3_config(cfg))
        if cfg.model.gradient_checkpointing:
            enable_checkpointing(model)
        return model

    def needs_reference(self, has_ref):
        return False

    def build_reference(self, world, has_ref):
        return None

    def collate(self, items, pad_id):
        return self.form.collate(items, pad_id)

    def loss(self, engine, ref, batch):
        logit = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]  # [N]
        loss, acc = self.form.loss(logit, batch)
        return loss, {"loss": loss.item(), "pair_accuracy": acc.item()}
