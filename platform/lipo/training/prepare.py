"""Driver-side preparation for `lipo train`: everything that can fail because of the user, checked before Ray.

    prep = prepare(cfg)   # raises LipoError naming the key, file, row or field

It checks the model specs, reads and validates the lists (`lipo.data.readers`), and tokenises them with the same
function that build-lists uses for reference log-probs, counting every truncation and drop. Tokenising here, once,
means workers receive ready token ids and the drop counts are known (and logged) before training starts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from lipo.data.readers import ReadReport, read_lists
from lipo.data.tokenize import TokenizeSpec, TokenizeStats, tokenize_lists
from lipo.errors import LipoError
from lipo.models.loading import check_model_spec, load_tokenizer
from lipo.training.config import TrainConfig


@dataclass
class Prepared:
    run_name: str
    output_dir: Path
    model_dir: Path
    rows: list[dict]  # tokenised lists, with an `idx` column giving dataset order
    read_report: ReadReport
    token_stats: TokenizeStats
    tokenizer: object


def check_environment(cfg: TrainConfig) -> None:
    check_model_spec(cfg.model.path, "model.path")
    if cfg.model.reference:
        check_model_spec(cfg.model.reference, "model.reference")
    if cfg.model.lora is not None:
        try:
            import peft  # noqa: F401
        except ImportError:
            raise LipoError("model.lora needs the `peft` package: pip install 'lipo[lora]'") from None
        if cfg.deepspeed.stage == 3:
            raise LipoError("model.lora with deepspeed.stage 3 is not supported; use stage 0-2")
    if cfg.scaling.use_gpu:
        import torch

        if not torch.cuda.is_available():
            raise LipoError("scaling.use_gpu is true but no CUDA device is visible on the driver")


def prepare(cfg: TrainConfig) -> Prepared:
    check_environment(cfg)
    run_name = cfg.run_name or time.strftime("train-%Y%m%d-%H%M%S")
    output_dir = Path(cfg.output_dir).expanduser().resolve()
    table, report = read_lists(cfg.data.train, on_invalid=cfg.data.on_invalid)
    try:
        tokenizer = load_tokenizer(cfg.model.path)
    except OSError as exc:
        raise LipoError(f"model.path: cannot load tokenizer of '{cfg.model.path}': {exc}".splitlines()[0]) from None
    spec = TokenizeSpec(cfg.data.max_prompt_tokens, cfg.data.max_response_tokens)
    rows, stats = tokenize_lists(table.to_pylist(), tokenizer, spec)
    if not rows:
        raise LipoError(f"no usable lists left in {cfg.data.train} after tokenisation ({stats.summary()})")
    for i, row in enumerate(rows):
        row["idx"] = i
    return Prepared(run_name, output_dir, output_dir / run_name / "model", rows, report, stats, tokenizer)
