"""`lipo train` turns user mistakes into one clear line (exit 2) before Ray starts: no stack trace, no Ray output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lipo.config import load_config
from lipo.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]


def lipo(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lipo.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def write_config(tmp_path: Path, data: str, **extra) -> Path:
    cfg = {"output_dir": str(tmp_path / "runs"), "data": {"train": [data]}, **extra}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("lipo: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in proc.stderr and "ray" not in proc.stdout.lower()


GOOD = {"prompt": "p", "responses": ["a", "b"], "labels": [1.0, 0.0]}


@pytest.mark.parametrize("bad,field", [
    ({"responses": ["a", "b"], "labels": [1.0, 0.0]}, "prompt"),
    ({**GOOD, "labels": [float("nan"), 0.0]}, "labels[0]"),
    ({**GOOD, "labels": [1.0, 0.5, 0.0]}, "labels"),
    ({**GOOD, "responses": ["a"], "labels": [1.0]}, "responses"),
])
def test_malformed_dataset_names_file_row_and_field(tmp_path, bad, field):
    data = tmp_path / "lists.jsonl"
    data.write_text(json.dumps(GOOD) + "\n" + json.dumps(bad) + "\n")
    proc = lipo("train", str(write_config(tmp_path, str(data))), cwd=tmp_path)
    assert_one_line_error(proc, str(data), "row 2", f"field '{field}'")


def test_bad_config_key_and_value(tmp_path):
    data = tmp_path / "lists.jsonl"
    data.write_text(json.dumps(GOOD) + "\n")
    cfg = write_config(tmp_path, str(data))
    assert_one_line_error(lipo("train", str(cfg), "optim.learning_rate=1e-3", cwd=tmp_path),
                          "optim.learning_rate", "unknown key")
    assert_one_line_error(lipo("train", str(cfg), "optim.lr=-1", cwd=tmp_path), "optim.lr")
    assert_one_line_error(lipo("train", str(cfg), "objective.name=dpo", cwd=tmp_path), "objective.name")
    assert_one_line_error(lipo("train", str(tmp_path / "nope.yaml"), cwd=tmp_path), "nope.yaml")


def test_missing_model_path(tmp_path):
    data = tmp_path / "lists.jsonl"
    data.write_text(json.dumps(GOOD) + "\n")
    cfg = write_config(tmp_path, str(data), model={"path": str(tmp_path / "no-such-model")})
    assert_one_line_error(lipo("train", str(cfg), cwd=tmp_path), "model.path", "no-such-model")


def test_every_example_config_loads():
    configs = sorted((REPO / "configs").glob("train*.yaml"))
    assert configs
    for path in configs:
        cfg = load_config(TrainConfig, path)
        for data in cfg.data.train:
            assert (REPO / data).exists(), f"{path}: {data} missing"


def test_overrides_parse_yaml_values():
    cfg = load_config(TrainConfig, None, ["data.train=[a.jsonl, b.jsonl]", "optim.lr=1e-4",
                                          "deepspeed.stage=3", "model.lora.r=4"])
    assert cfg.data.train == ["a.jsonl", "b.jsonl"] and cfg.optim.lr == 1e-4 and cfg.deepspeed.stage == 3
    assert cfg.model.lora is not None and cfg.model.lora.r == 4


def test_export_pairs_then_import_a_datasets_folder_split(tmp_path):
    """`lipo export` writes TRL pairs; `lipo import --split` reads a `save_to_disk` DatasetDict folder (written
    here in its layout: dataset_dict.json, SPLIT/state.json, SPLIT/data-00000-of-00001.arrow, an Arrow stream)."""
    import pyarrow as pa

    lists = tmp_path / "lists.jsonl"
    lists.write_text(json.dumps({"prompt": "p", "responses": ["a", "b", "c"], "labels": [1.0, 0.5, 0.0]}) + "\n")
    proc = lipo("export", "--format", "pairs", "--pairs", "best-worst", str(lists), str(tmp_path / "dpo.jsonl"),
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "1 lists -> 1 pairs" in proc.stdout
    assert json.loads((tmp_path / "dpo.jsonl").read_text()) == {"prompt": "p", "chosen": "a", "rejected": "c"}

    split = tmp_path / "saved" / "train_prefs"
    split.mkdir(parents=True)
    conv = [[{"role": "user", "content": "Q"}, {"role": "assistant", "content": r}] for r in ("good", "bad")]
    table = pa.Table.from_pylist([{"prompt": "Q", "chosen": conv[0], "rejected": conv[1]}])
    with pa.OSFile(str(split / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    (split / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}],
                                                  "_split": "train_prefs"}))
    (tmp_path / "saved" / "dataset_dict.json").write_text(json.dumps({"splits": ["train_prefs"]}))
    out = tmp_path / "uf.parquet"
    proc = lipo("import", "--format", "pairs", "--split", "train_prefs", str(tmp_path / "saved"), str(out),
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 1 lists" in proc.stdout
    from lipo.data.readers import read_lists

    row = read_lists([out])[0].to_pylist()[0]
    assert row["prompt_messages"] == [{"role": "user", "content": "Q"}] and row["responses"] == ["good", "bad"]
