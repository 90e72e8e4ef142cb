"""The `lipo` command line: one command per stage.

    lipo train CONFIG.yaml [key.sub=value ...]

A `LipoError` (a user mistake) prints one line and exits with status 2; no Ray stack trace.
"""

from __future__ import annotations

import sys
from typing import Optional

import typer

from lipo.errors import LipoError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Listwise preference optimization on Ray.")


@app.callback()
def _root() -> None:
    """Listwise preference optimization (LiPO) on Ray."""


@app.command(context_settings={"allow_extra_args": False})
def train(config: str = typer.Argument(..., help="TrainConfig YAML"),
          overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides")) -> None:
    """Train a policy with a listwise objective (LiPO-lambda by default)."""
    from lipo.config import load_config
    from lipo.training.config import TrainConfig
    from workflows.train import run

    run(load_config(TrainConfig, config, overrides or []))


def main() -> None:
    try:
        app()
    except LipoError as exc:
        print(f"lipo: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
