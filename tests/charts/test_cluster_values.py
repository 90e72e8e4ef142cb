"""charts/lipo on a multi-node cluster: the shared volume, the ServiceAccount, extra volumes, every submittable stage
and NOTES commands that name what the chart renders (and what KubeRay derives from it).

    pytest tests/charts/test_cluster_values.py

The decisive check ties the chart to lipo itself: the config's output_dir, resolved against the working directory
of the rendered Ray containers, must pass `lipo.runtime.check_shared_storage` on a (pretended) two-node cluster
with the pods' own environment, and must be refused where the chart mounts no shared volume.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path
from types import SimpleNamespace

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from chart_helpers import CHART, NAMESPACE, REPO, Render, pod_templates, render

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
CHART_VALUES = yaml.safe_load((CHART / "values.yaml").read_text())


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def _ray_pods(r: Render) -> list[tuple[str, dict]]:
    return [t for d in r.docs if d["apiVersion"] == "ray.io/v1" for t in pod_templates(d)]


def _shared_values(r: Render) -> dict:
    return CHART_VALUES["sharedStorage"] | r.values.get("sharedStorage", {})


# --- Shared storage -------------------------------------------------------------------------------------------------
def test_shared_volume_is_mounted_and_declared_in_every_ray_pod(rendered: Render) -> None:
    shared = _shared_values(rendered)
    claims = rendered.of_kind("PersistentVolumeClaim")
    for where, template in _ray_pods(rendered):
        spec, container = template["spec"], template["spec"]["containers"][0]
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        env = _env(container)
        if not shared["enabled"]:
            assert "shared" not in volumes and "LIPO_SHARED_PATHS" not in env, where
            assert not claims
            continue
        claim = shared["existingClaim"] or "lipo-shared"
        assert volumes[mounts[shared["mountPath"]]]["persistentVolumeClaim"] == {"claimName": claim}, where
        if not where.endswith("submitter"):  # the submitter only runs `ray job submit`
            assert env["LIPO_SHARED_PATHS"] == shared["mountPath"], where
            assert container["workingDir"] == shared["mountPath"], where  # relative output_dir lands on the volume
    if shared["enabled"] and not shared["existingClaim"]:
        [pvc] = claims
        kubernetes_validate.validate(pvc, "1.33.0", strict=True)
        assert pvc["metadata"]["name"] == "lipo-shared"
        assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"  # models outlive uninstall
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"] and "storageClassName" not in pvc["spec"]
        assert pvc["spec"]["resources"]["requests"]["storage"] == shared["size"]
    elif shared["enabled"]:
        assert not claims  # the user's claim


@pytest.mark.parametrize("value_set", ["defaults", "job-only"])
def test_default_output_dir_passes_the_multinode_guard_only_on_the_shared_volume(renders, value_set, monkeypatch):
    """What lipo.runtime decides inside the rendered pods, for the config the chart ships, on two Ray nodes."""
    import ray

    from lipo import runtime
    from lipo.errors import LipoError

    r = renders[value_set]
    head = r.one("RayJob")["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    output_dir = r.values.get("lipoConfig", {}).get("content", CHART_VALUES["lipoConfig"]["content"])["output_dir"]
    # The job's driver runs in the head container's working directory (it inherits `ray start`'s).
    where = os.path.join(head["workingDir"], output_dir)
    for name in ("LIPO_SHARED_FS", "LIPO_SHARED_PATHS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in _env(head).items():
        if value is not None and name.startswith("LIPO_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}] * 2)
    if value_set == "defaults":
        assert where == "/mnt/lipo/runs/quickstart"
        runtime.check_shared_storage(where)
    else:  # no shared volume: the same relative path is on the pod's /tmp, and lipo says so
        with pytest.raises(LipoError, match=r"^output_dir /tmp/runs/quickstart .* is node-local"):
            runtime.check_shared_storage(where)


def test_storage_options_and_tracking_store() -> None:
    base = {"secrets": {"rayAuthToken": "t"}}
    rwo = render(base | {"sharedStorage": {"enabled": True, "storageClassName": "standard", "size": "5Gi",
                                           "accessMode": "ReadWriteOnce", "mountPath": "/data/lipo"}})
    pvc = rwo.one("PersistentVolumeClaim")["spec"]
    assert (pvc["accessModes"], pvc["storageClassName"], pvc["resources"]["requests"]["storage"]) == (
        ["ReadWriteOnce"], "standard", "5Gi")
    for where, template in _ray_pods(rwo):
        if not where.endswith("submitter"):
            # Without an MLflow server, every pod (job and Serve clusters alike) tracks to one file on the volume.
            assert _env(template["spec"]["containers"][0])["MLFLOW_TRACKING_URI"] == "sqlite:////data/lipo/mlflow.db"
    # A SQLite MLflow server keeps its store on the same volume instead of an emptyDir lost with the pod.
    demo = render({"secrets": {"generate": True, "s3AccessKeyId": "a", "s3SecretAccessKey": "b"},
                   "mlflow": {"enabled": True, "backendStore": {"type": "sqlite"}}})
    pod = demo.one("Deployment")["spec"]["template"]["spec"]
    assert {v["name"]: v for v in pod["volumes"]}["data"]["persistentVolumeClaim"] == {"claimName": "lipo-shared"}
    env = _env(pod["containers"][0])
    assert env["MLFLOW_BACKEND_STORE_URI"] == "sqlite:////mnt/lipo/mlflow.db"
    assert {"name": "data", "mountPath": "/mnt/lipo"} in pod["containers"][0]["volumeMounts"]


@pytest.mark.parametrize(("values", "expected"), [
    ({"sharedStorage": {"enabled": True, "mountPath": "mnt/lipo"}}, "/sharedStorage/mountPath"),
    ({"sharedStorage": {"enabled": True, "mountPath": "/a:/b"}}, "/sharedStorage/mountPath"),
    ({"sharedStorage": {"enabled": True, "mountPath": "/tmp"}}, "/sharedStorage/mountPath"),
    ({"sharedStorage": {"enabled": True, "mountPath": "/m", "accessMode": "ReadOnlyMany"}}, "/sharedStorage/accessMode"),
    ({"extraVolumes": [{"name": "tmp", "emptyDir": {}}]}, "/extraVolumes/0/name"),
    ({"extraVolumeMounts": [{"name": "x"}]}, "mountPath"),
    ({"serviceAccount": {"annotations": {"a": 1}}}, "/serviceAccount/annotations/a"),
])
def test_schema_rejects_bad_cluster_values(values: dict, expected: str) -> None:
    with pytest.raises(helm.HelmError) as info:
        render({"secrets": {"rayAuthToken": "t"}} | values)
    assert expected in str(info.value), str(info.value)


# --- ServiceAccount and extra volumes ---------------------------------------------------------------------------------
def test_one_service_account_for_every_pod(renders: dict[str, Render]) -> None:
    expected = {"defaults": "lipo", "gpu-mlflow": "lipo", "job-only": "ml-runner"}
    for name, r in renders.items():
        accounts = r.of_kind("ServiceAccount")
        if name == "job-only":
            assert not accounts  # serviceAccount.create=false: the named one is the user's
        else:
            [sa] = accounts
            assert sa["metadata"]["name"] == "lipo"
            assert sa["metadata"].get("annotations", {}) == r.values.get("serviceAccount", {}).get("annotations", {})
        templates = [t for d in r.docs for t in pod_templates(d)]
        assert len(templates) >= 2
        for where, template in templates:
            spec = template["spec"]
            assert spec["serviceAccountName"] == expected[name], (name, where)
            # Only a head with the autoscaler sidecar talks to the Kubernetes API (KubeRay binds its Role to this
            # account); everything else runs without the token.
            autoscaler = where.endswith(" head") and r.values.get("ray", {}).get("enableInTreeAutoscaling", True)
            assert spec.get("automountServiceAccountToken", True) is bool(autoscaler), (name, where)


def test_extra_volumes_reach_head_workers_and_submitter(renders: dict[str, Render]) -> None:
    r = renders["gpu-mlflow"]
    pods = _ray_pods(r)
    assert {w.rsplit(" ", 1)[-1] for w, _ in pods} >= {"head", "cpu", "gpu", "submitter"}
    for where, template in pods:
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        assert volumes["corp-ca"] == {"name": "corp-ca", "configMap": {"name": "corp-ca-bundle"}}, where
        assert {"name": "corp-ca", "mountPath": "/etc/ssl/corp", "readOnly": True} in (
            template["spec"]["containers"][0]["volumeMounts"]), where
    for where, template in _ray_pods(renders["defaults"]):
        assert "corp-ca" not in {v["name"] for v in template["spec"]["volumes"]}, where


# --- Every submittable stage ----------------------------------------------------------------------------------------
def test_job_stage_choices_are_the_stage_table() -> None:
    from lipo.stages import STAGES

    submittable = [s for s in STAGES if s.submit]
    assert SCHEMA["properties"]["job"]["properties"]["stage"]["enum"] == [s.name for s in submittable]
    for stage in submittable:  # and each renders the command `lipo submit --stage NAME` runs
        job = render({"secrets": {"rayAuthToken": "t"}, "job": {"stage": stage.name}}).one("RayJob")
        assert job["spec"]["entrypoint"] == f"lipo {stage.command} /etc/lipo/quickstart.yaml"
        assert job["metadata"]["name"] == f"lipo-{stage.name}"


# --- NOTES ----------------------------------------------------------------------------------------------------------
def _notes_commands(r: Render) -> list[str]:
    notes = r.files["lipo/templates/NOTES.txt"]
    return [ln.strip() for ln in notes.splitlines() if re.match(r"^\s+(kubectl|curl|export|ray|lipo|helm) ", ln)]


def _service_ports(r: Render) -> dict[str, set[int]]:
    """Services the release gets: its own, and those KubeRay makes (head: dashboard; RayService: serve)."""
    ports = {s["metadata"]["name"]: {p["port"] for p in s["spec"]["ports"]} for s in r.of_kind("Service")}
    for doc in r.of_kind("RayService"):
        ports[f"{doc['metadata']['name']}-serve-svc"] = {8000}
        ports[f"{doc['metadata']['name']}-head-svc"] = {8265}
    for doc in r.of_kind("RayCluster"):
        ports[f"{doc['metadata']['name']}-head-svc"] = {8265}
    return ports


def _routes() -> set[str]:
    from lipo.serving.config import ServeConfig
    from lipo.serving.routes import router

    ingress = SimpleNamespace(cfg=ServeConfig())  # the routes read only the config when they are built
    return {route.path for route in router(ingress).routes}


def test_notes_commands_name_rendered_objects_and_real_routes(renders: dict[str, Render]) -> None:
    routes = _routes()
    checked = set()
    for name, r in renders.items():
        commands = _notes_commands(r)
        assert commands, name
        ports = _service_ports(r)
        names = {d["kind"]: d["metadata"]["name"] for d in r.docs}
        secret = r.values.get("secrets", {}).get("existingSecret") or names["Secret"]
        keys = set(r.one("Secret")["data"]) if "Secret" in names else {"auth_token", "LIPO_API_KEY"}
        for cmd in commands:
            for ns in re.findall(r"kubectl -n (\S+)", cmd):
                assert ns == NAMESPACE, cmd
            for kind, obj in re.findall(r"\b(?:get|delete) (rayjob|rayservice) (\S+)", cmd):
                assert obj == names[{"rayjob": "RayJob", "rayservice": "RayService"}[kind]], cmd
                checked.add(kind)
            for obj in re.findall(r"logs -f job/(\S+)", cmd):  # KubeRay's submitter Job takes the RayJob's name
                assert obj == names["RayJob"], cmd
            for obj, key in re.findall(r"get secret (\S+) -o jsonpath='\{\.data\.(\w+)\}'", cmd):
                assert obj == secret and key in keys, cmd
            if m := re.search(r"port-forward svc/(\S+) (\d+):(\d+)", cmd):
                svc, remote = m[1], int(m[3])
                if job := re.match(r"\$\(kubectl -n \S+ get rayjob (\S+) -o jsonpath='\{\.status\.rayClusterName\}'\)"
                                   r"-head-svc$", svc):
                    head = r.one("RayJob")["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
                    assert job[1] == names["RayJob"], cmd
                    assert remote in {p["containerPort"] for p in head["containers"][0]["ports"]}, cmd
                else:
                    assert remote in ports[svc], cmd
                checked.add("port-forward")
            if cmd.startswith("curl "):
                words = shlex.split(cmd)
                url = words[-1]
                path = url.split("127.0.0.1:8000", 1)[1]
                assert path in routes, (cmd, sorted(routes))
                # /healthz is the one open route (lipo.serving.security.OPEN_PATHS); the rest need the key.
                assert ("Authorization: Bearer $LIPO_API_KEY" in words) is (path != "/healthz"), cmd
                checked.add(path)
            if cmd.startswith("lipo submit "):
                _check_submit_line(cmd, r)
                checked.add("lipo submit")
    assert checked >= {"rayjob", "rayservice", "port-forward", "/healthz", "/v1/models", "lipo submit"}, checked


def _check_submit_line(cmd: str, r: Render) -> None:
    """The RayCluster's `lipo submit` line validates locally and writes where the cluster's pods declare shared."""
    from lipo import jobs, runtime

    words = shlex.split(cmd)
    config, overrides = words[2], [w for w in words[3:] if "=" in w and not w.startswith("-")]
    jobs.validate_locally("pipeline", REPO / config, overrides)
    [output_dir] = [o.split("=", 1)[1] for o in overrides if o.startswith("output_dir=")]
    head = r.one("RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert runtime.declared_shared(output_dir, environ=_env(head)), (output_dir, _env(head).get("LIPO_SHARED_PATHS"))
    assert Path(output_dir).is_absolute()  # a submitted job's cwd is its uploaded working_dir, not the volume
