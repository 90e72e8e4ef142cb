"""Config loading shared by every stage: YAML file + `key.sub=value` overrides -> one pydantic model.

Each stage defines one pydantic model with `extra="forbid"`; this module turns a YAML file and CLI overrides into
that model, and turns pydantic's validation errors into one line that names the offending key. It runs before Ray
starts, so a typo never costs a cluster start-up.

    cfg = load_config(TrainConfig, "configs/train_example.yaml", ["optim.lr=1e-4", "objective.name=list_mle"])
    cfg = load_config(ServeConfig, "pipeline.yaml", ["limits.max_n=2"], section="serve")  # one key of a file
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from lipo.errors import ConfigError

M = TypeVar("M", bound=BaseModel)

# A model's weights dtype in an inference stage's config; `auto`: bf16 on a GPU, fp32 on CPU
# (`lipo.models.loading.torch_dtype`).
DType = Literal["auto", "float32", "bfloat16", "float16"]


class Strict(BaseModel):
    """Base for config sections: unknown keys are errors, not silently ignored."""

    # defer_build: a model builds its validator on first use, so loading the stage table (every `lipo` command,
    # `lipo --help` too) does not pay for every stage's schema.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, defer_build=True)


def apply_override(tree: dict[str, Any], override: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML (so `1e-4`, `true`, `[1,2]` work)."""
    if "=" not in override:
        raise ConfigError(f"override '{override}' is not of the form key.sub=value")
    key, raw = override.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override '{override}' has an empty key")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override '{override}': '{part}' is not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem, each naming the dotted key, e.g. `optim.lr: Input should be a valid number`."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = "unknown key (check spelling)" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"{key}: {msg}")
    return f"invalid config {source}: " + "; ".join(lines)


def load_config(model: type[M], path: str | Path | None, overrides: list[str] | None = None,
                section: str | None = None) -> M:
    """Load `path` (YAML) with overrides into `model`; raises ConfigError naming the key on any problem.

    With `section`, the config is the file's top-level key `section` (e.g. `serve` in a pipeline config), and the
    overrides apply inside it.
    """
    tree: dict[str, Any] = {}
    source = "<overrides>"
    if path is not None:
        p = Path(path)
        tree, source = _read_mapping(p), str(p)
        if section is not None:
            tree, source = _section(tree, section, source), f"{p} [{section}]"
    elif section is not None:
        raise ConfigError(f"config section `{section}` needs a config file")
    for override in overrides or []:
        apply_override(tree, override)
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def _read_mapping(p: Path) -> dict[str, Any]:
    """The YAML file `p` as a dict (an empty file is {})."""
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}".replace("\n", " ")) from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level")
    return loaded or {}


def _section(tree: dict[str, Any], section: str, source: str) -> dict[str, Any]:
    """The mapping under the top-level key `section` of the file `source`."""
    if section not in tree:
        raise ConfigError(f"config file {source} has no `{section}` section")
    if not isinstance(tree[section], dict):
        raise ConfigError(f"config file {source}: section `{section}` must be a mapping")
    return tree[section]


def config_hash(cfg: BaseModel) -> str:
    """A short stable hash of a resolved config, for manifests and resume checks."""
    blob = json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a nested dict to dotted keys (MLflow params)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
