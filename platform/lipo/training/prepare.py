"""Driver-side preparation for every training stage: everything that can fail because of the user, before Ray.

    prep = prepare(ListwiseTask(cfg))   # raises LipoError naming the key, file, row or field

It checks the model specs and environment, then finds or builds the task's tokenised rows (`task.rows`, cached by
`lipo.training.token_cache`), counting every truncation and drop.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lipo import storage
from lipo.errors import LipoError
from lipo.models.loading import check_model_spec, load_tokenizer
from lipo.training.tasks import Task
from lipo.training.token_cache import TokenCache, token_cache


@dataclass
class Prepared:
    run_name: str
    output_dir: str  # a local path or an object-store URI (`lipo.storage`)
    model_dir: Path | str
    rows: TokenCache  # the tokenised rows on disk, in dataset order, with their drop counts (`rows.metrics`)
    summary: str


def check_environment(cfg) -> None:
    check_model_spec(cfg.model.path, "model.path")
    if cfg.model.reference:
        check_model_spec(cfg.model.reference, "model.reference")
    if cfg.model.lora is not None:
        try:
            import peft  # noqa: F401  (optional dependency: lipo[lora])
        except ImportError:
            raise LipoError("model.lora needs the `peft` package: pip install 'lipo[lora]'") from None
    if cfg.scaling.use_gpu:
        if not torch.cuda.is_available():
            raise LipoError("scaling.use_gpu is true but no CUDA device is visible on the driver")


def prepare(task: Task) -> Prepared:
    cfg = task.cfg
    check_environment(cfg)
    run_name = cfg.run_name or time.strftime(f"{task.stage}-%Y%m%d-%H%M%S")
    output_dir = storage.join(cfg.output_dir)
    if storage.is_remote_uri(output_dir) and not (cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")):
        raise LipoError(f"output_dir {output_dir} is object storage, where MLflow's default sqlite store cannot "
                        "live: set tracking.uri (or MLFLOW_TRACKING_URI)")
    try:
        tokenizer = load_tokenizer(cfg.model.path)
    except OSError as exc:
        raise LipoError(f"model.path: cannot load tokenizer of '{cfg.model.path}': {exc}".splitlines()[0]) from None
    cache = token_cache(task, tokenizer)
    summary = cache.summary + ("; tokenised rows reused from the cache" if cache.reused else "")
    return Prepared(run_name, output_dir, cfg.model_dir(run_name), cache, summary)
