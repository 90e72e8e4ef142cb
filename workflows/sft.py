"""`lipo sft CONFIG.yaml [key=value ...]`: supervised fine-tuning (next-token loss on response tokens).

Same Ray Train + DeepSpeed machinery, checkpoints, resume and MLflow tracking as `lipo train`; `data.train` holds
demonstrations (`prompt` + `response` or `reference`). Ray job entrypoint: `python -m workflows.sft CONFIG.yaml`.
"""

from __future__ import annotations

import sys

from lipo.training.config import SFTConfig


def run(cfg: SFTConfig, fault: dict | None = None, parent_run_id: str | None = None):
    from workflows.train import launch

    return launch(cfg, "sft", fault, parent_run_id)


if __name__ == "__main__":
    from lipo.config import load_config

    run(load_config(SFTConfig, sys.argv[1], sys.argv[2:]))
