"""The `lipo` command line, generated from the stage table (`lipo.stages.STAGES`): one command per stage.

    lipo run [CONFIG.yaml] [key.sub=value ...]          # the whole pipeline; default configs/quickstart.yaml
    lipo compare [CONFIG.yaml] [key.sub=value ...]      # all objectives + list-size ablation -> report
    lipo sft | train-rm | build-lists | train | eval CONFIG.yaml [key.sub=value ...]
    lipo serve CONFIG.yaml [key.sub=value ...] [--insecure]
    lipo import --format pairs|ultrafeedback|ranked INPUT OUTPUT.parquet [--split SPLIT]
    lipo export --format pairs [--pairs all|best-worst] LISTS... OUTPUT.parquet|.jsonl
    lipo submit CONFIG.yaml [key.sub=value ...] --address http://HEAD:8265 [--stage STAGE]
    lipo --verbose COMMAND ...                          # Ray's own logs on the screen too (lipo.console)

Errors: a `LipoError` (a user mistake) prints one line and exits with status 2, with no stack trace; configs are
validated before Ray starts. Any other exception is a bug in lipo: its traceback is printed, then one line saying
so, and the exit status is 1.
"""

from __future__ import annotations

import sys
import traceback
from typing import Optional

import typer

from lipo import console
from lipo.errors import LipoError
from lipo.stages import STAGES, Stage, by_name

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Listwise preference optimization on Ray.")
OVERRIDES = typer.Argument(None, help="key.sub=value overrides")


def _command(stage: Stage):
    """The typer command of `stage`: load its config (before Ray starts), then call its entry function."""
    if stage.default_config is not None:
        config_arg = typer.Argument(None, help=f"{stage.config.__name__} YAML (default: {stage.default_config.name})")
    else:
        config_arg = typer.Argument(..., help="stage config (YAML)")

    def command(config: Optional[str] = config_arg, overrides: Optional[list[str]] = OVERRIDES) -> None:
        cfg = stage.load(config, overrides)
        _console(cfg)
        stage.run(cfg)

    command.__doc__ = stage.help
    return command


for _stage in STAGES:
    if _stage.command != "serve":
        app.command(_stage.command)(_command(_stage))



SERVE = by_name("serve")  # the one stage with an option of its own


@app.command(SERVE.command)
def serve(config: str = typer.Argument(..., help="stage config (YAML)"), overrides: Optional[list[str]] = OVERRIDES,
          insecure: bool = typer.Option(False, "--insecure", help="allow a non-loopback bind with no API key")) -> None:
    cfg = SERVE.load(config, overrides)
    _console(cfg)
    SERVE.run(cfg, insecure=insecure)


serve.__doc__ = SERVE.help


@app.command("import")
def import_(fmt: str = typer.Option(..., "--format", help="pairs | ultrafeedback | ranked"),
            source: str = typer.Argument(..., help="input JSONL/Parquet/Arrow file, folder or glob, a Hugging Face "
                                                   "datasets folder (save_to_disk), or a hub id"),
            output: str = typer.Argument(..., help="output Parquet file"),
            split: Optional[str] = typer.Option(None, "--split",
                                                help="split of a datasets folder or hub id (default: train)")) -> None:
    """Turn existing preference data into lipo's list format."""
    from lipo.data.importers import import_file  # pyarrow and the readers: not needed by other commands

    import_file(fmt, source, output, split=split)


@app.command("export")
def export(fmt: str = typer.Option(..., "--format", help="pairs (TRL's DPO columns: prompt, chosen, rejected)"),
           pairs: str = typer.Option("all", "--pairs", help="all (every pair with different labels) | best-worst"),
           inputs: list[str] = typer.Argument(..., help="list files (JSONL/Parquet), folders or globs"),
           output: str = typer.Argument(..., help="output .parquet or .jsonl file")) -> None:
    """Turn lists into preference pairs for other trainers (TRL's DPO format)."""
    from lipo.data.exporters import export_pairs
    from lipo.errors import DataError

    if fmt != "pairs":
        raise DataError(f"--format: unknown format '{fmt}' (choose from pairs)")
    export_pairs(inputs, output, pairs=pairs)


@app.command()
def submit(config: str = typer.Argument(..., help="stage config (YAML)"), overrides: Optional[list[str]] = OVERRIDES,
           address: str = typer.Option("http://127.0.0.1:8265", "--address", help="Ray dashboard / Jobs API"),
           stage: str = typer.Option("pipeline", "--stage",
                                     help=" | ".join(s.name for s in STAGES if s.submit)),
           follow: bool = typer.Option(True, "--follow/--no-follow", help="stream the job's logs")) -> None:
    """Submit a stage (default: the whole pipeline) as a Ray job; Ctrl-C detaches without killing it."""
    from lipo.jobs import submit_job  # Ray's job client: only this command needs it

    submit_job(config, overrides or [], address=address, stage=stage, follow=follow)


_flags = {"verbose": False}  # the root options of this invocation, set by `_root` before the command runs


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v",
                                       help="show Ray's, DeepSpeed's and MLflow's logs here, not only in the log file")
          ) -> None:
    """Listwise preference optimization (LiPO) on Ray."""
    _flags["verbose"] = verbose


def _console(cfg) -> None:
    """Quiet (lipo's lines and bars) or `--verbose` output for this command; the log file goes beside the run."""
    console.configure(_flags["verbose"], console.log_dir_for(getattr(cfg, "output_dir", None)))


def main(argv: list[str] | None = None) -> None:
    """Run the CLI on `argv` (default: sys.argv[1:]); also the body of every `python -m workflows.X` entrypoint."""
    try:
        app(args=argv)  # click's standalone mode: usage errors and --help exit here, other exceptions go on
    except LipoError as exc:
        print(f"lipo: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception:
        traceback.print_exc()
        print("lipo: internal error: this is a bug in lipo, not in your config or data; please report it with the "
              "traceback above", file=sys.stderr)
        if console.is_quiet():
            print(f"lipo: Ray's and the libraries' logs of this run: {console.log_path()}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
