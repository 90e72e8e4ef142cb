"""Helpers for the training tests: configs, weight loading and full-dataset evaluation of a trained policy."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lipo.config import load_config
from lipo.data.collate import collate_lists
from lipo.data.tokenize import TokenizeSpec, tokenize_lists
from lipo.models.logps import sequence_logps
from lipo.models.tiny import byte_tokenizer, tiny_llama
from lipo.training.config import TrainConfig


def train_config(tmp_path: Path, data: Path, *overrides: str) -> TrainConfig:
    base = [f"output_dir={tmp_path / 'runs'}", f"data.train=[{data}]", "model.path=builtin:tiny-llama",
            "data.max_prompt_tokens=64", "data.max_response_tokens=16", "scaling.num_workers=2",
            "optim.schedule=constant", "checkpoint.every=1000"]
    return load_config(TrainConfig, None, base + list(overrides))


def load_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def full_batch(data: Path) -> dict[str, torch.Tensor]:
    rows = [json.loads(line) for line in open(data, encoding="utf-8")]
    lists, _ = tokenize_lists(rows, byte_tokenizer(), TokenizeSpec(64, 16))
    return collate_lists(lists, pad_id=0)


@torch.no_grad()
def scores_of(model: torch.nn.Module, batch: dict, beta: float = 0.05) -> torch.Tensor:
    """[B, K] LiPO scores of `model` against the builtin tiny reference (seed 0)."""
    return beta * (sequence_logps(model.eval(), batch) - sequence_logps(tiny_llama(seed=0), batch))
