"""The stage table (`lipo.stages`) is the one source of the CLI's commands, `lipo submit`'s stages and the
default-config rule; `lipo --help` stays light; a bug keeps its traceback while a user mistake is one line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from lipo import cli, stages
from lipo.errors import ConfigError, LipoError
from lipo.pipeline.config import DEFAULT_CONFIG, PipelineConfig

REPO = Path(__file__).resolve().parents[2]


def test_every_stage_is_a_cli_command_with_its_help():
    commands = {c.name or c.callback.__name__: c for c in cli.app.registered_commands}
    for stage in stages.STAGES:
        assert stage.command in commands, stage.command
        assert (commands[stage.command].callback.__doc__ or "").strip() == stage.help
    assert set(commands) - {s.command for s in stages.STAGES} == {"import", "export", "submit"}


def test_names_and_commands_both_find_a_stage():
    assert stages.by_name("pipeline") is stages.by_name("run")
    assert stages.by_name("eval").config.__name__ == "EvalConfig"
    with pytest.raises(LipoError, match="unknown stage 'nope'"):
        stages.by_name("nope")


@pytest.mark.parametrize("name", ["pipeline", "compare"])
def test_overrides_alone_apply_to_the_default_config(name):
    stage = stages.by_name(name)
    assert stage.default_config == DEFAULT_CONFIG and DEFAULT_CONFIG.is_file()
    default = stage.load(None, [])
    cfg = stage.load("train.optim.max_steps=3", ["name=other"])
    assert isinstance(cfg, PipelineConfig) and cfg.name == "other" and cfg.train["optim"]["max_steps"] == 3
    assert cfg.world == default.world  # everything else is the default config's


def test_a_stage_without_default_takes_a_first_argument_as_its_file():
    with pytest.raises(ConfigError, match="config file not found: a=b"):
        stages.by_name("train").load("a=b", [])


def test_help_imports_no_heavy_library():
    code = ("import sys, lipo.cli; heavy = {'torch', 'ray', 'transformers', 'deepspeed', 'mlflow'} & set(sys.modules);"
            " assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_a_user_mistake_is_one_line_and_a_bug_keeps_its_traceback(monkeypatch, capsys, tmp_path):
    import lipo.data.importers as importers

    def mistake(*args, **kwargs):
        raise LipoError("input.jsonl row 3: field 'chosen' is missing")

    def bug(*args, **kwargs):
        raise ZeroDivisionError("lipo divided by zero")

    argv = ["import", "--format", "pairs", str(tmp_path / "in.jsonl"), str(tmp_path / "out.parquet")]
    monkeypatch.setattr(importers, "import_file", mistake)
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.strip() == "lipo: error: input.jsonl row 3: field 'chosen' is missing"
    monkeypatch.setattr(importers, "import_file", bug)
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 1
    assert "Traceback" in err and "ZeroDivisionError: lipo divided by zero" in err
    assert err.strip().splitlines()[-1].startswith("lipo: internal error: this is a bug in lipo")


def test_workflows_are_thin_entrypoints():
    for path in sorted((REPO / "workflows").glob("*.py")):
        assert len(path.read_text().splitlines()) <= 30, path
    importing = re.compile(r"^\s*(from|import) workflows\b", re.M)
    assert not [p for p in (REPO / "platform" / "lipo").rglob("*.py") if importing.search(p.read_text())]
