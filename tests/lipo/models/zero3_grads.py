"""Run by test_scored_logps.py in a subprocess (it needs its own torch.distributed group): packed log-prob
gradients through a ZeRO-3 DeepSpeed engine, with the LM head in checkpointed chunks, against a plain model.

    python tests/lipo/models/zero3_grads.py      # prints the largest gradient difference
"""

from __future__ import annotations

import copy
import os
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repo root, for `tests.lipo...`

from lipo.data.packing import pack_lists  # noqa: E402
from lipo.models import logps as L  # noqa: E402
from lipo.models.packed_logps import packed_sequence_logps  # noqa: E402
from tests.lipo.models.test_packing import build, make_items  # noqa: E402


def main() -> None:
    import deepspeed
    from deepspeed.utils import safe_get_full_grad

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(random.randint(30000, 60000)), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")
    torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    L.RECOMPUTE_ABOVE, L.CHUNK_ELEMENTS = 0, 259 * 7  # every chunk checkpointed, several chunks
    model = build("llama")
    plain = copy.deepcopy(model)
    items = make_items(4, seed=3)
    weights = torch.linspace(0.5, 1.5, 4 * 5).view(4, 5)  # [B, K]: a distinct upstream gradient per response
    (packed_sequence_logps(plain, pack_lists(items, 0)) * weights).sum().backward()
    config = {"train_micro_batch_size_per_gpu": 1, "train_batch_size": 1,
              "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0,
                                    "reduce_bucket_size": 100_000, "allgather_bucket_size": 100_000},
              "optimizer": {"type": "AdamW", "params": {"lr": 0.0, "torch_adam": True}}}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    engine.backward((packed_sequence_logps(engine, pack_lists(items, 0)) * weights).sum())
    plain_grads = dict(plain.named_parameters())
    worst = max((safe_get_full_grad(p) - plain_grads[n].grad).abs().max().item()
                for n, p in engine.module.named_parameters())
    print(f"max-grad-diff {worst:.3e}")


if __name__ == "__main__":
    main()
