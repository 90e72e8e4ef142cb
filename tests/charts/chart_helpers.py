"""Helpers for the chart tests: render charts/lipo offline with Helm's Go SDK and load the KubeRay CRD schemas.

Nothing here needs a cluster or a helm binary: helm-python-sdk bundles Helm's engine as a shared library, and the
CRDs come from shared/kuberay-crds beside the repository (../shared from the repo root, as laid out for CI).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import helm_python as helm
import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "lipo"
VALUES_DIR = Path(__file__).parent / "values"
CRD_DIR = REPO.parent / "shared" / "kuberay-crds"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml", "RayService": "ray.io_rayservices.yaml"}
RELEASE, NAMESPACE = "lipo", "ml"
VALUE_SETS = ("defaults", "gpu-mlflow", "job-only")
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are ~60k lines; the C loader is 10x faster


@dataclass
class Render:
    name: str
    values: dict[str, Any]
    files: dict[str, str]
    docs: list[dict[str, Any]] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.of_kind(kind)
        assert len(found) == 1, f"{self.name}: expected one {kind}, got {len(found)}"
        return found[0]


def render(values: dict[str, Any], chart: Path = CHART, name: str = "adhoc") -> Render:
    """Render like `helm install` would (values.schema.json is checked first); raises helm.HelmError on failure."""
    with helm.Chart.load(chart) as loaded:
        files = loaded.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    out = Render(name, values, files)
    for path, text in sorted(files.items()):
        if path.endswith(".yaml"):
            out.docs.extend(d for d in yaml.safe_load_all(text) if d)
    return out


def load_values(name: str) -> dict[str, Any]:
    return yaml.safe_load((VALUES_DIR / f"{name}.yaml").read_text()) or {}


def _closed(schema: Any) -> Any:
    """Copy of an OpenAPI schema in which every object with declared properties rejects unknown ones.

    The API server silently prunes unknown fields of a CRD object, so a typo in a template (say `serviceTpye`)
    would apply cleanly and do nothing; closing the schema makes such a typo fail here instead. Objects marked
    x-kubernetes-preserve-unknown-fields stay open, as the API server keeps their unknown fields.
    """
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if isinstance(schema.get("properties"), dict):
        out["properties"] = {k: _closed(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(key), dict):
            out[key] = _closed(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            out[key] = _closed(schema[key])
    return out


@lru_cache(maxsize=None)
def crd_validator(kind: str, version: str = "v1") -> jsonschema.protocols.Validator:
    path = CRD_DIR / CRD_FILES[kind]
    if not path.is_file():
        pytest.fail(f"KubeRay CRD {path} is missing: the tests expect shared/kuberay-crds beside the repository")
    crd = yaml.load(path.read_text(), Loader=Loader)
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return jsonschema.Draft7Validator(_closed(v["schema"]["openAPIV3Schema"]))
    raise AssertionError(f"{path} has no version {version}")


def pod_templates(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod template of a rendered object, with a name for messages: head, each worker group, submitter."""
    kind, spec = doc["kind"], doc.get("spec", {})
    where = f"{kind}/{doc['metadata']['name']}"
    if kind in ("Deployment", "StatefulSet", "Job"):
        yield where, spec["template"]
    cluster = {"RayJob": spec.get("rayClusterSpec"), "RayService": spec.get("rayClusterConfig"),
               "RayCluster": spec if kind == "RayCluster" else None}.get(kind)
    if cluster:
        yield f"{where} head", cluster["headGroupSpec"]["template"]
        for group in cluster.get("workerGroupSpecs") or []:
            yield f"{where} worker {group['groupName']}", group["template"]
    if kind == "RayJob" and "submitterPodTemplate" in spec:
        yield f"{where} submitter", spec["submitterPodTemplate"]


def ray_cluster_specs(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = doc.get("spec", {})
    if doc["kind"] == "RayJob":
        yield spec["rayClusterSpec"]
    elif doc["kind"] == "RayService":
        yield spec["rayClusterConfig"]
    elif doc["kind"] == "RayCluster":
        yield spec
