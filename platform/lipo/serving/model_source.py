"""Where a served model comes from: a local HF directory, a hub id, `builtin:NAME`, or an MLflow URI.

    check_source("runs:/abc/model", key="policy.model")   # driver side, before Ray: fail fast with one line
    local = resolve("models:/lipo-policy@champion")       # replica side: download once, return the HF directory
    model, tok = load_reward("builtin:tiny-reward")       # via lipo.models.reward_loading

MLflow URIs (`models:/NAME@ALIAS`, `models:/NAME/VERSION`, `runs:/RUN_ID/model`) are downloaded with
`mlflow.artifacts.download_artifacts`; the training stage logs its exported HF directory under `model/` of its run,
so `runs:/RUN_ID` alone also works (the `model/` folder is found inside). Models then load through
`lipo.models.loading` (policies) and `lipo.models.reward_loading` (reward models), so serving, build-lists and
training read a checkpoint the same way.
"""

from __future__ import annotations

import os
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


def _hf_dir(root: Path, spec: str) -> Path:
    """The HF directory inside a download: the root itself, or its `model/` folder (a whole run was given)."""
    for cand in (root, root / "model"):
        if (cand / "config.json").is_file():
            return cand
    raise LipoError(f"{spec}: the downloaded artifacts hold no Hugging Face model (no config.json in {root} or "
                    f"{root}/model)")


def _registry_source(spec: str, uri: str | None) -> str:
    """`models:/NAME@ALIAS` or `models:/NAME/VERSION` -> the artifact location of that model version."""
    from mlflow.tracking import MlflowClient  # mlflow is slow to import and needed for MLflow URIs only

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name, _, version = spec[len("models:/"):].partition("/")
    name, _, alias = name.partition("@")
    if alias:
        version = client.get_model_version_by_alias(name, alias).version
    return client.get_model_version_download_uri(name, version)


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
        # The registry is looked up on the same server as the runs (download_artifacts alone would use the global
        # registry URI, not `uri`).
        source = _registry_source(spec, uri) if spec.startswith("models:/") else spec
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst), tracking_uri=uri)
    except Exception as exc:  # MLflow raises many types (RestException, MlflowException, OSError)
        raise LipoError(f"cannot download {spec}: {str(exc).strip().splitlines()[0]}") from exc
    return str(_hf_dir(Path(local), spec))


def load_reward(spec: str, dtype: str = "auto"):
    """(model, tokenizer) of a one-output sequence-classifier reward model (`lipo.models.reward_loading`)."""
    from lipo.models.reward_loading import load_reward_model  # imports torch: the reward replica only

    return load_reward_model(spec, dtype)
