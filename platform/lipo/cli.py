"""The `lipo` command line: one command per stage, each a thin call into `workflows/`.

    lipo run [CONFIG.yaml] [key.sub=value ...]          # the whole pipeline; default configs/quickstart.yaml
    lipo compare [CONFIG.yaml] [key.sub=value ...]      # all objectives + list-size ablation -> report
    lipo train CONFIG.yaml [key.sub=value ...]
    lipo sft CONFIG.yaml [key.sub=value ...]
    lipo train-rm CONFIG.yaml [key.sub=value ...]
    lipo build-lists CONFIG.yaml [key.sub=value ...]
    lipo import --format pairs|ultrafeedback|ranked INPUT OUTPUT.parquet
    lipo serve CONFIG.yaml [key.sub=value ...] [--insecure]
    lipo eval CONFIG.yaml [key.sub=value ...]
    lipo submit CONFIG.yaml [key.sub=value ...] --address http://HEAD:8265 [--stage STAGE]

A `LipoError` (a user mistake) prints one line and exits with status 2; no Ray stack trace. Configs are validated
before Ray starts.
"""

from __future__ import annotations

import importlib
import sys
from typing import Optional

import typer

from lipo.errors import LipoError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Listwise preference optimization on Ray.")
CONFIG = typer.Argument(..., help="stage config (YAML)")
OVERRIDES = typer.Argument(None, help="key.sub=value overrides")


def _stage(workflow: str, config_cls: str, config: str, overrides: list[str] | None, **kwargs):
    """Load `config` into `config_cls` ("module:Class"), then call `workflows.<workflow>.run(cfg, **kwargs)`."""
    from lipo.config import load_config

    mod_name, cls_name = config_cls.split(":")
    cfg = load_config(getattr(importlib.import_module(mod_name), cls_name), config, overrides or [])
    return importlib.import_module(f"workflows.{workflow}").run(cfg, **kwargs)


@app.callback()
def _root() -> None:
    """Listwise preference optimization (LiPO) on Ray."""


@app.command()
def train(config: str = CONFIG, overrides: Optional[list[str]] = OVERRIDES) -> None:
    """Train a policy with a listwise objective (LiPO-lambda by default) on Ray Train + DeepSpeed."""
    _stage("train", "lipo.training.config:TrainConfig", config, overrides)


@app.command()
def sft(config: str = CONFIG, overrides: Optional[list[str]] = OVERRIDES) -> None:
    """Supervised fine-tuning on demonstrations (next-token loss on response tokens)."""
    _stage("sft", "lipo.training.config:SFTConfig", config, overrides)


@app.command("train-rm")
def train_rm(config: str = CONFIG, overrides: Optional[list[str]] = OVERRIDES) -> None:
    """Train a pointwise (Bradley-Terry) or pairwise ranking reward model on labelled lists."""
    _stage("train_rm", "lipo.training.config:RewardTrainConfig", config, overrides)


@app.command("build-lists")
def build_lists(config: str = CONFIG, overrides: Optional[list[str]] = OVERRIDES) -> None:
    """Generate K candidates per prompt, score, label and add reference log-probs (Ray Data) -> Parquet."""
    _stage("build_lists", "lipo.lists.config:BuildListsConfig", config, overrides)


@app.command("import")
def import_(fmt: str = typer.Option(..., "--format", help="pairs | ultrafeedback | ranked"),
            source: str = typer.Argument(..., help="input JSONL/Parquet"),
            output: str = typer.Argument(..., help="output Parquet file")) -> None:
    """Turn existing preference data into lipo's list format."""
    from lipo.data.importers import import_file

    import_file(fmt, source, output)


@app.command()
def serve(config: str = CONFIG, overrides: Optional[list[str]] = OVERRIDES,
          insecure: bool = typer.Option(False, "--insecure", help="allow a non-loopback bind with no API key")) -> None:
    """Serve the policy and the reward model over HTTP with Ray Serve."""
    _stage("serve", "lipo.serving.config:ServeConfig", config, overrides, insecure=insecure)


@app.command("eval")
def eval_(config: str = CONFIG, overrides: Optional[list[str]] = OVERRIDES) -> None:
    """Win rate of the policy against the SFT baseline, judged by the reward model, with a bootstrap CI."""
    _stage("evaluate", "lipo.evaluation.config:EvalConfig", config, overrides)


@app.command()
def run(config: Optional[str] = typer.Argument(None, help="PipelineConfig YAML (default: configs/quickstart.yaml)"),
        overrides: Optional[list[str]] = OVERRIDES) -> None:
    """Run the whole pipeline: (bootstrap) -> sft -> preferences -> train-rm -> build-lists -> train -> evaluate."""
    from workflows.pipeline import DEFAULT_CONFIG

    if config is not None and "=" in config:  # `lipo run key=value`: overrides of the default config
        config, overrides = None, [config, *(overrides or [])]
    _stage("pipeline", "lipo.pipeline.config:PipelineConfig", config or str(DEFAULT_CONFIG), overrides)


@app.command()
def compare(config: Optional[str] = typer.Argument(None, help="PipelineConfig YAML (default: quickstart)"),
            overrides: Optional[list[str]] = OVERRIDES) -> None:
    """Train every objective (and the list-size ablation) on the same lists; write report.md/.csv and a plot."""
    from workflows.pipeline import DEFAULT_CONFIG

    if config is not None and "=" in config:
        config, overrides = None, [config, *(overrides or [])]
    _stage("compare", "lipo.pipeline.config:PipelineConfig", config or str(DEFAULT_CONFIG), overrides)


@app.command()
def submit(config: str = CONFIG, overrides: Optional[list[str]] = OVERRIDES,
           address: str = typer.Option("http://127.0.0.1:8265", "--address", help="Ray dashboard / Jobs API"),
           stage: str = typer.Option("pipeline", "--stage",
                                     help="pipeline | compare | sft | train-rm | build-lists | train | eval"),
           follow: bool = typer.Option(True, "--follow/--no-follow", help="stream the job's logs")) -> None:
    """Submit a stage (default: the whole pipeline) as a Ray job; Ctrl-C detaches without killing it."""
    from lipo.jobs import submit_job

    submit_job(config, overrides or [], address=address, stage=stage, follow=follow)


def main() -> None:
    try:
        app()
    except LipoError as exc:
        print(f"lipo: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
