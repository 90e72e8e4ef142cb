"""Where a served model comes from: a local HF directory, a hub id, `builtin:NAME`, or an MLflow URI.

    check_source("runs:/abc/model", key="policy.model")   # driver side, before Ray: fail fast with one line
    local = resolve("models:/lipo-policy@champion")       # replica side: download once, return the HF directory
    model, tok = load_reward("builtin:tiny-reward")       # via lipo.models.reward_loading

MLflow URIs (`models:/NAME@ALIAS`, `models:/NAME/VERSION`, `runs:/RUN_ID/model`, `models:/m-ID`) are downloaded
with `mlflow.artifacts.download_artifacts`; `runs:/RUN_ID` alone means `runs:/RUN_ID/model`. Two layouts are
understood: an MLflow transformers-flavour model (what training logs now, `lipo.mlflow_models`: `MLmodel`, the
checkpoint under its `model_binary` folder, the tokenizer under `components/tokenizer/`, copied into the checkpoint
folder when only it has one, as MLflow's own in-memory save writes it), and the raw HF directory that runs logged
under `model/` before. Models then load through
`lipo.models.loading` (policies) and `lipo.models.reward_loading` (reward models), so serving, build-lists and
training read a checkpoint the same way.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from lipo.errors import LipoError
from lipo.serving.config import MLFLOW_SCHEMES


def is_mlflow_uri(spec: str) -> bool:
    return spec.startswith(MLFLOW_SCHEMES)


def check_source(spec: str, key: str, reward: bool = False) -> None:
    """Fail fast, naming the config key, when `spec` cannot be a model (MLflow URIs are checked on download)."""
    if is_mlflow_uri(spec):
        if spec.rstrip("/") in MLFLOW_SCHEMES or spec.endswith(":/"):
            raise LipoError(f"{key}: incomplete MLflow URI '{spec}' (e.g. models:/NAME@ALIAS or runs:/RUN_ID/model)")
        return
    if reward:
        from lipo.models.reward_loading import check_reward_spec  # imports torch: only when a spec is checked

        return check_reward_spec(spec, key)
    from lipo.models.loading import check_model_spec  # imports torch: only when a spec is checked

    check_model_spec(spec, key)


def _flavour_hf_dir(root: Path) -> Path | None:
    """The checkpoint folder of a transformers-flavour model at `root` (tokenizer completed), or None: no MLmodel
    with a transformers flavour there."""
    import yaml

    if not (root / "MLmodel").is_file():
        return None
    flavour = (yaml.safe_load((root / "MLmodel").read_text()).get("flavors") or {}).get("transformers")
    if not flavour or not (root / flavour.get("model_binary", "model") / "config.json").is_file():
        return None
    hf = root / flavour.get("model_binary", "model")
    tok = root / "components" / "tokenizer"
    if tok.is_dir() and not (hf / "tokenizer_config.json").is_file():  # loaders want one self-contained directory
        for f in tok.iterdir():
            if f.is_file():
                shutil.copy2(f, hf / f.name)
    return hf


def _hf_dir(root: Path, spec: str) -> Path:
    """The HF directory inside a download: a flavoured model's checkpoint folder, else a raw HF directory (the root
    or its `model/` folder, as older runs logged it)."""
    for cand in (root, root / "model"):
        hf = _flavour_hf_dir(cand)
        if hf is not None:
            return hf
        if (cand / "config.json").is_file():
            return cand
    raise LipoError(f"{spec}: the downloaded artifacts hold no Hugging Face model (no MLmodel with a transformers "
                    f"flavour and no config.json in {root} or {root}/model)")


def _artifact_source(spec: str, uri: str | None) -> str:
    """The storage location to download for an MLflow URI, looked up on `uri` (MLflow 3.17 resolves a run's logged
    model and `models:/m-ID` with the global tracking URI, whatever `download_artifacts` is given)."""
    from mlflow.tracking import MlflowClient  # mlflow is slow to import and needed for MLflow URIs only

    from lipo.mlflow_models import logged_model_id

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    if spec.startswith("runs:/"):  # runs:/ID/NAME[/sub]: the run's logged model NAME, else its artifacts
        run_id, _, path = spec[len("runs:/"):].partition("/")
        name, _, sub = path.partition("/")
        model_id = logged_model_id(uri, run_id, name)
        if model_id is None:
            return spec
        return "/".join([client.get_logged_model(model_id).artifact_location, *([sub] if sub else [])])
    name, _, version = spec[len("models:/"):].strip("/").partition("/")
    name, _, alias = name.partition("@")
    if not alias and not version:  # models:/m-ID, a logged model
        return client.get_logged_model(name).artifact_location
    if alias:
        version = client.get_model_version_by_alias(name, alias).version
    source = client.get_model_version_download_uri(name, version)
    return _artifact_source(source, uri) if source.startswith(MLFLOW_SCHEMES) else source


def resolve(spec: str, tracking_uri: str | None = None, cache_dir: str | None = None) -> str:
    """A spec `lipo.models.loading` understands: MLflow URIs are downloaded to a local directory first."""
    if not is_mlflow_uri(spec):
        return spec
    import mlflow.artifacts  # only for MLflow URIs (slow to import)

    if spec.startswith("runs:/") and "/" not in spec[len("runs:/"):].strip("/"):
        spec = f"runs:/{spec[len('runs:/'):].strip('/')}/model"  # a bare run: its logged model directory
    dst = Path(cache_dir or tempfile.mkdtemp(prefix="lipo-model-"))
    dst.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    try:
        # The registry and logged models are looked up on the same server as the runs (download_artifacts alone
        # would use the global tracking and registry URIs, not `uri`).
        source = _artifact_source(spec, uri)
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst), tracking_uri=uri)
    except Exception as exc:  # MLflow raises many types (RestException, MlflowException, OSError)
        raise LipoError(f"cannot download {spec}: {str(exc).strip().splitlines()[0]}") from exc
    return str(_hf_dir(Path(local), spec))


def load_reward(spec: str, dtype: str = "auto"):
    """(model, tokenizer) of a one-output sequence-classifier reward model (`lipo.models.reward_loading`)."""
    from lipo.models.reward_loading import load_reward_model  # imports torch: the reward replica only

    return load_reward_model(spec, dtype)
