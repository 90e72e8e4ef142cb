"""Trained models as MLflow `transformers`-flavour models, written from the exported checkpoint without loading it.

    model_uri = log_model(run, model_dir)       # a StageRun and an exported HF directory -> "models:/m-..."
    stage_flavour(model_dir, Path("staged"))    # the same layout on disk, for a look or `mlflow models serve -m`
    logged_model_id(uri, run_id)                # the run's logged model, for the registry (`pipeline.summary`)

Then, with `MLFLOW_TRACKING_URI` set to the store:

    mlflow models serve -m models:/lipo-quickstart@champion --env-manager local
    pipe = mlflow.transformers.load_model("runs:/RUN_ID/model")   # a transformers Pipeline

What is logged: an MLflow 3 *logged model* named `model`, linked to the stage's run as its output (the run table's
Models column), whose artifacts are MLflow's transformers layout: `MLmodel`, `model/` (the checkpoint: weights,
config and, as lipo exports it, the tokenizer too), `components/tokenizer/` and the environment files. Its task comes
from the checkpoint's architecture: `*ForCausalLM` (the policy of sft and train) is `text-generation`,
`*ForSequenceClassification` (a reward model of train-rm) is `text-classification` (its one logit through a sigmoid,
as the pipeline does for one label). `runs:/RUN_ID/model` resolves to it (MLflow 3 looks up the run's logged model by
name), and so does `lipo.serving.model_source`.

Why not `mlflow.transformers.save_model(<checkpoint dir>, task=...)`: that is the way MLflow offers to save without
loading the weights, but in MLflow 3.17.2 with transformers 5 it fails (`pipelines.check_task` now names the pipeline
class as a dotted string). Loading a 70B checkpoint on the driver to save it the other way is not an option, so this
module writes the same `MLmodel` keys that MLflow writes for an in-memory pipeline (checked by
tests/lipo/test_mlflow_models.py, which loads and serves the result with MLflow itself). The weights are staged as
symbolic links, so the only copy made is the upload to the artifact store.

Object storage: a model exported to `s3://...` (a remote `output_dir`) is not logged; its URI is in the stage's log
and the run's config, as before (logging would mean downloading it to the driver first).
"""

from __future__ import annotations

import json
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from lipo import tracking
from lipo.errors import LipoError

NAME = "model"  # the logged model's name: `runs:/RUN_ID/model` finds it
FLAVOUR = "transformers"
TASKS = {"ForCausalLM": "text-generation", "ForSequenceClassification": "text-classification"}
REQUIREMENTS = ("mlflow", "transformers", "torch", "tokenizers", "safetensors", "accelerate")
TOKENIZER = "tokenizer"
DEFAULT_NEW_TOKENS = 128  # a served policy's answer length when a request names none


def task_of(config: dict, where: Path) -> str:
    """The pipeline task of a checkpoint's architecture (its `config.json`)."""
    arch = (config.get("architectures") or [""])[0]
    for suffix, task in TASKS.items():
        if arch.endswith(suffix):
            return task
    raise LipoError(f"{where}/config.json: architecture '{arch}' is neither a causal LM nor a sequence classifier; "
                    "cannot log it as a transformers model")


def _signature(task: str):
    """Strings in; generated text, or (label, score) out. A policy takes `max_new_tokens` (default
    `DEFAULT_NEW_TOKENS`) and `do_sample` (default true, the text-generation pipeline's own default; false: greedy)
    per request: without a params schema MLflow drops request params."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    if task == "text-generation":
        return ModelSignature(inputs=Schema([ColSpec("string")]), outputs=Schema([ColSpec("string")]),
                              params=ParamSchema([ParamSpec("max_new_tokens", "long", DEFAULT_NEW_TOKENS),
                                                  ParamSpec("do_sample", "boolean", True)]))
    return ModelSignature(inputs=Schema([ColSpec("string")]),
                          outputs=Schema([ColSpec("string", "label"), ColSpec("double", "score")]))


def _pipeline_class(task: str) -> str:
    from transformers import pipelines

    impl = pipelines.check_task(task)[1]["impl"]  # a class (transformers 4) or its dotted name (transformers 5)
    return (impl if isinstance(impl, str) else impl.__name__).rsplit(".", 1)[-1]


def _requirements() -> list[str]:
    pins = []
    for pkg in REQUIREMENTS:
        try:
            pins.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            continue
    return pins


def _write_environment(dst: Path) -> None:
    """requirements.txt, conda.yaml and python_env.yaml: the versions of this environment, pinned (no inference:
    MLflow infers requirements by loading the model in a subprocess)."""
    import yaml
    from mlflow.utils.environment import _mlflow_conda_env, _PythonEnv

    pins = _requirements()
    (dst / "requirements.txt").write_text("\n".join(pins) + "\n")
    (dst / "conda.yaml").write_text(yaml.safe_dump(_mlflow_conda_env(additional_pip_deps=pins), sort_keys=False))
    _PythonEnv.current().to_yaml(str(dst / "python_env.yaml"))


def stage_flavour(hf_dir: Path, dst: Path, run_id: str | None = None, model_id: str | None = None) -> Path:
    """Write the transformers-flavour layout of the HF checkpoint `hf_dir` into `dst` (created; must not exist):
    the checkpoint's files linked (not copied) under `model/`, the tokenizer saved under `components/tokenizer/`."""
    import transformers
    from mlflow import pyfunc
    from mlflow.models import Model
    from transformers import AutoTokenizer

    hf_dir = Path(hf_dir).resolve()
    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise LipoError(f"{hf_dir}: no config.json; not a Hugging Face checkpoint directory")
    config = json.loads(config_path.read_text())
    task = task_of(config, hf_dir)
    for src in hf_dir.rglob("*"):  # weights stay where they are: the artifact upload reads through the links
        if src.is_file():
            link = dst / NAME / src.relative_to(hf_dir)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(src)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)  # small; the weights are never opened
    tokenizer.save_pretrained(dst / "components" / TOKENIZER)
    dtype = config.get("dtype") or config.get("torch_dtype")
    mm = Model(run_id=run_id, model_id=model_id, signature=_signature(task))
    mm.add_flavor(FLAVOUR, transformers_version=transformers.__version__, code=None, task=task,
                  instance_type=_pipeline_class(task), pipeline_model_type=config["architectures"][0],
                  source_model_name=str(hf_dir), model_binary=NAME, components=[TOKENIZER],
                  tokenizer_type=type(tokenizer).__name__, torch_dtype=f"torch.{dtype}" if dtype else None)
    pyfunc.add_to_model(mm, loader_module="mlflow.transformers", conda_env="conda.yaml",
                        python_env="python_env.yaml")
    _write_environment(dst)
    mm.model_size_bytes = sum(p.stat().st_size for p in dst.rglob("*") if p.is_file())
    mm.save(str(dst / "MLmodel"))
    return dst


def log_model(run: tracking.StageRun, model_dir: Path | str) -> str | None:
    """Log the exported checkpoint `model_dir` as the run's transformers-flavour logged model; its URI, or None when
    tracking is off or the checkpoint is on object storage (see the module docstring)."""
    if not run.run_id or not isinstance(model_dir, Path):
        return None
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    c = tracking.client(run.uri)
    task = task_of(json.loads((model_dir / "config.json").read_text()), model_dir)
    lm = c.create_logged_model(c.get_run(run.run_id).info.experiment_id, name=NAME, source_run_id=run.run_id,
                               model_type=task)
    c.log_outputs(run.run_id, [LoggedModelOutput(lm.model_id, step=0)])
    try:
        with tempfile.TemporaryDirectory(prefix="lipo-mlmodel-") as tmp:
            staged = stage_flavour(model_dir, Path(tmp) / NAME, run.run_id, lm.model_id)
            c.log_model_artifacts(lm.model_id, str(staged))
    except BaseException:
        c.finalize_logged_model(lm.model_id, LoggedModelStatus.FAILED)
        raise
    c.finalize_logged_model(lm.model_id, LoggedModelStatus.READY)
    return f"models:/{lm.model_id}"


def logged_model_id(uri: str | None, run_id: str, name: str = NAME) -> str | None:
    """The id of the newest READY logged model named `name` that `run_id` produced; None: the run predates
    flavoured logging (its `model/` artifacts are raw files) or logged nothing."""
    c = tracking.client(uri)
    exp = c.get_run(run_id).info.experiment_id
    found = c.search_logged_models([exp], filter_string=f"name = '{name}' AND source_run_id = '{run_id}'",
                                   order_by=[{"field_name": "creation_timestamp", "ascending": False}])
    ready = [m for m in found if str(m.status) in ("READY", "LoggedModelStatus.READY")]
    return ready[0].model_id if ready else None
