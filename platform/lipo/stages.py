"""THE stage table: one `Stage` per command, read by the CLI (`lipo.cli`, which generates its commands from it),
by `lipo submit` (`lipo.jobs`) and by the `workflows/` job entrypoints.

    stage = by_name("train")
    cfg = stage.load("configs/train_example.yaml", ["optim.lr=1e-4"])   # validated before anything starts
    stage.run(cfg)                                                     # lipo.training.launch.launch(ListwiseTask(cfg))

Each entry function is a few lines that hand the validated config to the library. It imports its stage's code when
called, not at import time: the table is loaded by every `lipo` command, and `lipo --help` must not pay for torch,
Ray and DeepSpeed (about 5 s). The config classes import none of those, so they are imported here directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from lipo.config import load_config
from lipo.errors import LipoError
from lipo.evaluation.config import EvalConfig
from lipo.lists.config import BuildListsConfig
from lipo.pipeline.config import DEFAULT_CONFIG, PipelineConfig
from lipo.serving.config import ServeConfig
from lipo.training.config import RewardTrainConfig, SFTConfig, TrainConfig


@dataclass(frozen=True)
class Stage:
    name: str  # `lipo submit --stage NAME`, the chart's `job.stage` and the job's metadata
    command: str  # the CLI command: `lipo COMMAND CONFIG.yaml [key.sub=value ...]`
    config: type[BaseModel]
    run: Callable[[Any], object]  # the entry function; takes the validated config
    help: str
    default_config: Path | None = None  # the config when none is given (`lipo run`, `lipo compare`)
    submit: bool = True  # can run as a Ray job (`lipo serve` blocks forever: deploy it with Serve instead)

    def load(self, config: str | Path | None, overrides: list[str] | None = None) -> BaseModel:
        """The validated config. With a default config, `lipo run key=value` means: the default, with overrides."""
        overrides = list(overrides or [])
        if self.default_config is not None and (config is None or "=" in str(config)):
            config, overrides = self.default_config, ([str(config)] if config else []) + overrides
        return load_config(self.config, config, overrides)


# Entry functions. Each imports its stage when called (see the module docstring for why).
def run_pipeline(cfg: PipelineConfig):
    from lipo.pipeline.run import run_pipeline as run

    return run(cfg)


def run_compare(cfg: PipelineConfig):
    from lipo.pipeline.compare import compare

    return compare(cfg)


def run_train(cfg: TrainConfig):
    from lipo.training.launch import launch
    from lipo.training.tasks import ListwiseTask

    return launch(ListwiseTask(cfg))


def run_sft(cfg: SFTConfig):
    from lipo.training.launch import launch
    from lipo.training.tasks import SFTTask

    return launch(SFTTask(cfg))


def run_train_rm(cfg: RewardTrainConfig):
    from lipo.training.launch import launch
    from lipo.training.reward import RewardTask

    return launch(RewardTask(cfg))


def run_build_lists(cfg: BuildListsConfig):
    from lipo.lists.build import build_lists

    return build_lists(cfg)


def run_eval(cfg: EvalConfig):
    from lipo.evaluation.stage import run_eval as run

    return run(cfg)


def run_serve(cfg: ServeConfig, insecure: bool = False):
    from lipo.serving.local import serve

    return serve(cfg, insecure=insecure)


STAGES: tuple[Stage, ...] = (
    Stage("pipeline", "run", PipelineConfig, run_pipeline,
          "Run the whole pipeline: (bootstrap) -> sft -> preferences -> train-rm -> build-lists -> train -> evaluate.",
          default_config=DEFAULT_CONFIG),
    Stage("compare", "compare", PipelineConfig, run_compare,
          "Train every objective (and the list-size ablation) on the same lists; write report.md/.csv and a plot.",
          default_config=DEFAULT_CONFIG),
    Stage("sft", "sft", SFTConfig, run_sft,
          "Supervised fine-tuning on demonstrations (next-token loss on response tokens)."),
    Stage("train-rm", "train-rm", RewardTrainConfig, run_train_rm,
          "Train a pointwise (Bradley-Terry) or pairwise ranking reward model on labelled lists."),
    Stage("build-lists", "build-lists", BuildListsConfig, run_build_lists,
          "Generate K candidates per prompt, score, label and add reference log-probs (Ray Data) -> Parquet."),
    Stage("train", "train", TrainConfig, run_train,
          "Train a policy with a listwise objective (LiPO-lambda by default) on Ray Train + DeepSpeed."),
    Stage("eval", "eval", EvalConfig, run_eval,
          "Win rate of the policy against the SFT baseline, judged by the reward model, with a bootstrap CI."),
    Stage("serve", "serve", ServeConfig, run_serve,
          "Serve the policy and the reward model over HTTP with Ray Serve.", submit=False),
)


def by_name(name: str) -> Stage:
    """The stage `lipo submit --stage NAME` names (its `name`, or its CLI command: `run` is `pipeline`)."""
    for stage in STAGES:
        if name in (stage.name, stage.command):
            return stage
    raise LipoError(f"unknown stage '{name}': use one of {', '.join(s.name for s in STAGES if s.submit)}")
