"""Trained models as MLflow transformers models (`lipo.mlflow_models`): MLflow itself loads and serves what lipo logs,
the registry points at it, and `lipo.serving.model_source` resolves every model URI of both layouts (flavoured, and
the raw `model/` files of older runs: tests/lipo/serving/test_serve_units.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from lipo import tracking
from lipo.mlflow_models import log_model, logged_model_id, stage_flavour
from lipo.models.loading import load_causal_lm
from lipo.models.tiny import byte_tokenizer, tiny_llama, tiny_reward_model
from lipo.pipeline.summary import register_model
from lipo.serving.model_source import resolve


def export(model, path: Path) -> Path:
    """What training's export writes: weights, config and the tokenizer in one folder."""
    model.save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A policy and a reward model, each logged by a run as lipo's training does, and the policy registered."""
    tmp = tmp_path_factory.mktemp("mlflow")
    uri = tracking.resolve_uri(None, str(tmp))
    ids = {}
    for name, model in (("policy", tiny_llama(seed=3)), ("reward", tiny_reward_model(seed=4))):
        with tracking.stage_run(uri, "lipo", f"train-{name}", "train") as run:
            assert log_model(run, export(model, tmp / name)).startswith("models:/m-")
        ids[name] = run.run_id
    reg = register_model(uri, ids["policy"], "lipo-policy", "champion")
    return {"uri": uri, "tmp": tmp, "runs": ids, "registered": reg}


def test_registered_version_is_the_flavoured_model(store):
    c = tracking.client(store["uri"])
    mv = c.get_model_version_by_alias("lipo-policy", "champion")
    assert mv.run_id == store["runs"]["policy"]
    assert store["registered"]["model_id"] == logged_model_id(store["uri"], store["runs"]["policy"]) is not None
    assert mv.source == c.get_logged_model(store["registered"]["model_id"]).artifact_location
    # the run's Models column: the logged model is the run's output
    assert [o.model_id for o in c.get_run(mv.run_id).outputs.model_outputs] == [store["registered"]["model_id"]]


def test_mlflow_transformers_load_model_gives_the_trained_weights(store, monkeypatch):
    import mlflow.transformers

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    pipe = mlflow.transformers.load_model("models:/lipo-policy@champion")
    assert pipe.task == "text-generation"
    want = tiny_llama(seed=3).state_dict()
    got = pipe.model.state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert pipe.tokenizer.decode(pipe.tokenizer("héllo")["input_ids"]) == "héllo"  # the byte tokenizer round-trips

    clf = mlflow.transformers.load_model(f"runs:/{store['runs']['reward']}/model")
    assert clf.task == "text-classification"
    rm, tok = tiny_reward_model(seed=4), byte_tokenizer()
    with torch.no_grad():  # one label: the pipeline's score is the sigmoid of the reward model's logit
        logit = rm(**tok("a fine answer", return_tensors="pt")).logits[0, 0]
    assert clf("a fine answer")[0]["score"] == pytest.approx(torch.sigmoid(logit).item(), abs=1e-5)


def test_model_source_resolves_every_uri_of_a_flavoured_model(store):
    uri, tmp, run = store["uri"], store["tmp"], store["runs"]["policy"]
    specs = [f"runs:/{run}/model", f"runs:/{run}", "models:/lipo-policy@champion", "models:/lipo-policy/1",
             f"models:/{store['registered']['model_id']}"]
    want = tiny_llama(seed=3).state_dict()
    for i, spec in enumerate(specs):
        local = Path(resolve(spec, uri, cache_dir=str(tmp / f"dl{i}")))
        assert (local / "config.json").is_file() and (local / "tokenizer_config.json").is_file(), spec
        got = load_causal_lm(str(local)).state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want), spec


def test_model_source_completes_mlflows_own_layout(tmp_path):
    """MLflow's own in-memory save (`mlflow.transformers.save_model({"model": m, "tokenizer": t})`) keeps the
    tokenizer only under components/tokenizer, not in model/: resolve copies it in. The layout is made from lipo's
    by removing the checkpoint's tokenizer files (saving with MLflow itself costs ~20 s of hub look-ups)."""
    uri = tracking.resolve_uri(None, str(tmp_path))
    run_id, _ = tracking.open_run(uri, "lipo", "by-hand", "train")
    staged = stage_flavour(export(tiny_llama(seed=5), tmp_path / "hf"), tmp_path / "staged")
    for f in (staged / "model").glob("tokenizer*"):
        f.unlink()
    tracking.log_artifacts(uri, run_id, staged, "model")  # raw artifacts of the run, no logged model
    local = Path(resolve(f"runs:/{run_id}", uri, cache_dir=str(tmp_path / "dl")))
    assert local.name == "model" and (local / "tokenizer_config.json").is_file()
    assert torch.equal(load_causal_lm(str(local)).lm_head.weight, tiny_llama(seed=5).lm_head.weight)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_mlflow_models_serve_serves_the_registered_policy(store, tmp_path, monkeypatch):
    """`mlflow models serve -m models:/NAME@ALIAS --env-manager local`, as a user runs it: its answer is the
    in-process pyfunc's (greedy decoding, so equal)."""
    import mlflow.pyfunc

    port = _free_port()
    # `mlflow models serve` runs `uvicorn` from PATH: this interpreter's scripts, as in an activated environment
    env = {**os.environ, "MLFLOW_TRACKING_URI": store["uri"],
           "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])}
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/lipo-policy@champion",
                             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        body = {"inputs": ["Copy: abc\n"], "params": {"max_new_tokens": 4, "do_sample": False}}
        deadline, served = time.monotonic() + 90, None
        while served is None:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "mlflow models serve did not answer within 90 s"
            try:
                served = _post(f"http://127.0.0.1:{port}/invocations", body)
            except OSError:
                time.sleep(0.5)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
        local = mlflow.pyfunc.load_model("models:/lipo-policy@champion")
        assert served == {"predictions": list(local.predict(body["inputs"], params=body["params"]))}
        assert isinstance(served["predictions"][0], str)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)  # its own session: uvicorn and its worker go too
            proc.wait(timeout=30)
        log.close()
