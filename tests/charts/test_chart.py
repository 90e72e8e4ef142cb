"""charts/lipo rendered offline for three value sets (tests/charts/values/*.yaml), then checked against the KubeRay
CRDs, the Kubernetes schemas, the security baseline, and the local pipeline it must mirror.

The value sets: `defaults` (the chart's defaults + the Ray token), `gpu-mlflow` (long-lived GPU cluster, Serve,
MLflow on PostgreSQL + S3, a train-only job, an existing shared claim, workload identity, extra volumes) and
`job-only` (one stage on a head-only cluster, existing Secret and ServiceAccount, no shared volume). Shared storage,
the ServiceAccount, extra volumes, job stages and NOTES are checked in test_cluster_values.py.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from chart_helpers import CHART, NAMESPACE, REPO, Render, crd_validator, pod_templates, ray_cluster_specs, render

K8S_VERSION = "1.33.0"  # a version kubernetes-validate ships; the chart's kubeVersion is >=1.27
SECRET_VALUES = ("rayAuthToken", "serveApiKey", "mlflowAdminPassword", "mlflowFlaskSecretKey", "mlflowBackendStoreUri",
                 "mlflowAuthDatabaseUri", "s3AccessKeyId", "s3SecretAccessKey")
EXPECTED_ENTRYPOINT = {
    "defaults": "lipo run /etc/lipo/quickstart.yaml",
    "gpu-mlflow": "lipo train /etc/lipo/quickstart.yaml 'optim.lr=1e-4'",
    "job-only": "lipo build-lists /etc/lipo/quickstart.yaml",
}


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _secret_name(r: Render) -> str:
    return r.values.get("secrets", {}).get("existingSecret") or "lipo-secrets"


# --- 1. Helm lint ---------------------------------------------------------------------------------------------------
def test_helm_lint_reports_no_errors(rendered: Render) -> None:
    report = helm.lint(CHART, rendered.values, namespace=NAMESPACE)
    errors = [m for m in report["messages"] if m["severity"] >= 3]
    assert not report["errors"] and not errors, (report["errors"], errors)


def test_value_sets_render_what_they_select(renders: dict[str, Render]) -> None:
    kinds = {name: sorted(d["kind"] for d in r.docs) for name, r in renders.items()}
    assert kinds["defaults"] == ["ConfigMap", "NetworkPolicy", "PersistentVolumeClaim", "RayJob", "Secret",
                                 "ServiceAccount"]
    assert kinds["gpu-mlflow"] == sorted(["ConfigMap", "Deployment", "NetworkPolicy", "NetworkPolicy", "RayCluster",
                                          "RayJob", "RayService", "Secret", "Service", "ServiceAccount"])
    # The Secret, the ServiceAccount and the storage are the user's (existingSecret, serviceAccount.name, s3://).
    assert kinds["job-only"] == ["ConfigMap", "RayJob"]


# --- 2. Schemas: KubeRay CRDs and Kubernetes ------------------------------------------------------------------------
def test_ray_objects_validate_against_kuberay_crds(rendered: Render) -> None:
    ray_docs = [d for d in rendered.docs if d["apiVersion"] == "ray.io/v1"]
    assert ray_docs
    for doc in ray_docs:
        errors = sorted(crd_validator(doc["kind"]).iter_errors(doc), key=lambda e: list(e.path))
        assert not errors, "\n".join(f"{doc['kind']}: {'.'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_core_objects_and_pod_templates_validate_against_kubernetes(rendered: Render) -> None:
    for doc in rendered.docs:
        if doc["apiVersion"] != "ray.io/v1":
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        # CRD schemas accept any pod field; the strict core schema catches misspelled ones inside Ray templates too.
        for where, template in pod_templates(doc):
            wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
            try:
                kubernetes_validate.validate(wrapped, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{where}: {'.'.join(map(str, e.path))}: {e.message}")


# --- 3. Security baseline -------------------------------------------------------------------------------------------
def _assert_hardened(where: str, sc: dict) -> None:
    assert sc.get("runAsNonRoot") is True and sc.get("runAsUser") == 1000, f"{where}: must run as uid 1000, non-root"
    assert sc.get("allowPrivilegeEscalation") is False, where
    assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
    assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
    assert sc.get("readOnlyRootFilesystem") is True, where
    assert not sc.get("privileged"), where


def test_every_pod_template_is_hardened(rendered: Render) -> None:
    templates = [t for d in rendered.docs for t in pod_templates(d)]
    assert templates
    for where, template in templates:
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), where
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert not any("hostPath" in v for v in volumes.values()), where
        containers = spec["containers"] + spec.get("initContainers", [])
        for c in containers:
            at = f"{where} container {c['name']}"
            _assert_hardened(at, c["securityContext"])
            mounts = {m["mountPath"]: volumes[m["name"]] for m in c.get("volumeMounts", [])}
            assert "emptyDir" in mounts.get("/tmp", {}), f"{at}: /tmp must be a writable emptyDir"
            assert mounts.get("/dev/shm", {}).get("emptyDir", {}).get("medium") == "Memory", f"{at}: /dev/shm"
            wd = c.get("workingDir", "/tmp")  # writable: the /tmp emptyDir or the shared volume mounted there
            assert wd.startswith("/tmp") or "persistentVolumeClaim" in mounts.get(wd, {}), f"{at}: {wd} is read-only"
            env = _env(c)
            assert env["HOME"]["value"] == "/tmp" and env["HF_HOME"]["value"].startswith("/tmp"), at
            assert env["MPLCONFIGDIR"]["value"].startswith("/tmp") and env["RAY_TMPDIR"]["value"] == "/tmp", at


def test_ray_clusters_use_token_auth_and_cluster_ip(rendered: Render) -> None:
    for doc in rendered.docs:
        for spec in ray_cluster_specs(doc):
            assert spec["rayVersion"] == "2.60.0"
            assert spec["authOptions"] == {"mode": "token", "secretName": _secret_name(rendered)}, doc["kind"]
            head = spec["headGroupSpec"]
            assert head["serviceType"] == "ClusterIP" and head["enableIngress"] is False
            if spec["enableInTreeAutoscaling"]:
                _assert_hardened(f"{doc['kind']} autoscaler", spec["autoscalerOptions"]["securityContext"])
        for where, template in pod_templates(doc):
            if doc["apiVersion"] == "ray.io/v1":
                token = _env(template["spec"]["containers"][0])["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
                assert token == {"name": _secret_name(rendered), "key": "auth_token"}, where
    for svc in rendered.of_kind("Service"):
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"
        assert "nodePort" not in json.dumps(svc)


def test_secret_values_appear_only_inside_the_secret(renders: dict[str, Render]) -> None:
    r = renders["gpu-mlflow"]
    given = [r.values["secrets"][k] for k in SECRET_VALUES]
    text = "\n".join(yaml.safe_dump(d) for d in r.docs if d["kind"] != "Secret")
    leaked = [v for v in given if v in text]
    assert not leaked, f"secret values rendered in plain text: {leaked}"
    for where, template in (t for d in r.docs for t in pod_templates(d)):
        for c in template["spec"]["containers"]:
            for name, e in _env(c).items():
                if re.search("TOKEN|PASSWORD|SECRET|API_KEY|_URI$", name) and name != "MLFLOW_TRACKING_URI":
                    assert "secretKeyRef" in e.get("valueFrom", {}) or e["value"].startswith("sqlite:"), (where, name)


def test_network_policy_limits_ray_head_and_mlflow(renders: dict[str, Render]) -> None:
    """Issue 16: Ray's metrics ports answered anyone. Outside the release, each configured peer reaches only its
    ports: the operator the dashboard, scrapers the Prometheus ports, API clients the Serve port (schema-validated
    with the other objects in section 2)."""
    r = renders["gpu-mlflow"]
    policies = {p["metadata"]["name"]: p["spec"] for p in r.of_kind("NetworkPolicy")}
    assert set(policies) == {"lipo-ray", "lipo-mlflow"}
    release = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "lipo", "app.kubernetes.io/instance": "lipo"}}}
    operator = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ray-operators"}}}
    for spec in policies.values():
        assert spec["policyTypes"] == ["Ingress"]
    [rule] = policies["lipo-mlflow"]["ingress"]
    assert rule["from"] == [release, operator] and rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    tcp = lambda *ports: [{"port": p, "protocol": "TCP"} for p in ports]  # noqa: E731
    assert policies["lipo-ray"]["ingress"] == [
        {"from": [release]},  # no ports: every port, for the release's own pods only
        {"from": [operator], "ports": tcp(8265)},
        {"from": r.values["networkPolicy"]["metricsFrom"], "ports": tcp(8080, 44217, 44227)},
        {"from": r.values["networkPolicy"]["serveFrom"], "ports": tcp(8000)},
    ]
    components = policies["lipo-ray"]["podSelector"]["matchExpressions"][0]["values"]
    assert "ray-head" in components and "ray-worker" in components
    assert policies["lipo-mlflow"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "mlflow"
    # The chart's defaults: nobody outside the release scrapes metrics or calls Serve; the operator, the dashboard.
    [default] = renders["defaults"].of_kind("NetworkPolicy")
    assert [rule.get("ports") for rule in default["spec"]["ingress"]] == [None, tcp(8265)]
    assert default["spec"]["ingress"][1]["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "kuberay-system"}


def test_rayjob_entrypoint_and_mounted_config(rendered: Render) -> None:
    job = rendered.one("RayJob")["spec"]
    assert job["entrypoint"] == EXPECTED_ENTRYPOINT[rendered.name]
    assert job["shutdownAfterJobFinishes"] is True and job["ttlSecondsAfterFinished"] >= 0
    config_path = job["entrypoint"].split()[2]
    configmap = rendered.one("ConfigMap")
    assert Path(config_path).name in configmap["data"]
    head = job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    for spec in (head, job["submitterPodTemplate"]["spec"]):
        volumes = {v["name"]: v for v in spec["volumes"]}
        mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["mountPath"] == str(Path(config_path).parent))
        assert volumes[mount["name"]]["configMap"]["name"] == configmap["metadata"]["name"] and mount["readOnly"]


def test_configmap_holds_the_repo_quickstart_config(renders: dict[str, Render]) -> None:
    data = renders["defaults"].one("ConfigMap")["data"]["quickstart.yaml"]
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert yaml.safe_load(data) == chart_values["lipoConfig"]["content"]
    quickstart = REPO / "configs" / "quickstart.yaml"
    if not quickstart.is_file():
        pytest.skip("configs/quickstart.yaml does not exist yet; lipoConfig.content is a placeholder")
    assert yaml.safe_load(data) == yaml.safe_load(quickstart.read_text()), (
        "charts/lipo/values.yaml lipoConfig.content differs from configs/quickstart.yaml: copy the file in")


def test_job_spec_file_runs_the_same_pipeline() -> None:
    spec = yaml.safe_load((REPO / "deploy" / "jobs" / "pipeline.yaml").read_text())
    assert spec["entrypoint"] == "lipo run configs/quickstart.yaml"
    env = spec["runtime_env"]
    assert env["working_dir"] == "." and {"runs/", ".git", "mlruns", "*.db"} <= set(env["excludes"])
    assert "MLFLOW_TRACKING_URI" in env["env_vars"]


# --- The Serve application, MLflow and worker groups ----------------------------------------------------------------
def test_rayservice_serve_config(renders: dict[str, Render]) -> None:
    from ray.serve.schema import ServeDeploySchema

    r = renders["gpu-mlflow"]
    rayservice = r.one("RayService")
    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(config)  # the schema Ray Serve itself applies to serveConfigV2
    [app] = config["applications"]
    assert app["import_path"] == "lipo.serving.app:build_app"
    from lipo.serving.config import ServeArgs

    defaults = yaml.safe_load((REPO / "charts" / "lipo" / "values.yaml").read_text())["service"]["args"]
    expected = r.values.get("service", {}).get("args", defaults)
    assert app["args"] == {k: v for k, v in expected.items() if v is not None}  # helm drops null values
    ServeArgs.model_validate(app["args"])  # the typed argument of build_app accepts what the chart renders
    assert app["deployments"] == r.values["service"]["deployments"]
    for where, template in pod_templates(rayservice):
        key = _env(template["spec"]["containers"][0])["LIPO_API_KEY"]["valueFrom"]["secretKeyRef"]
        assert key == {"name": "lipo-secrets", "key": "LIPO_API_KEY"}, where


def test_worker_groups_follow_values(renders: dict[str, Render]) -> None:
    r = renders["gpu-mlflow"]
    spec = r.one("RayCluster")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    gpu_values = r.values["ray"]["workerGroups"]["gpu"]
    gpu = groups["gpu"]
    assert (gpu["minReplicas"], gpu["replicas"], gpu["maxReplicas"]) == (1, 1, 4)
    pod = gpu["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "registry.example.com/ml/lipo:0.1.0-gpu"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == gpu_values["gpusPerWorker"]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == gpu_values["gpusPerWorker"]
    assert pod["nodeSelector"] == gpu_values["nodeSelector"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert groups["cpu"]["maxReplicas"] == 8 and "nvidia.com/gpu" not in json.dumps(groups["cpu"])
    only = renders["job-only"].one("RayJob")["spec"]["rayClusterSpec"]
    assert only["workerGroupSpecs"] == [] and only["enableInTreeAutoscaling"] is False
    default = renders["defaults"].one("RayJob")["spec"]["rayClusterSpec"]
    assert default["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] == "lipo:0.1.0"  # tag = appVersion


def test_mlflow_server(renders: dict[str, Render], tmp_path: Path) -> None:
    r = renders["gpu-mlflow"]
    pod = r.one("Deployment")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    script = container["args"][0]
    env = _env(container)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL", "MLFLOW_BACKEND_STORE_URI",
                 "MLFLOW_AUTH_DATABASE_URI", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "lipo-secrets", "key": name, **(
            {"optional": True} if name == "MLFLOW_S3_ENDPOINT_URL" else {})}, name
    for ray_doc in (d for d in r.docs if d["apiVersion"] == "ray.io/v1"):
        for where, template in pod_templates(ray_doc):
            if not where.endswith("submitter"):  # it only runs `ray job submit`
                uri = _env(template["spec"]["containers"][0]).get("MLFLOW_TRACKING_URI", {}).get("value")
                assert uri == "http://lipo-mlflow.ml.svc.cluster.local:5000", where
    # Run the start script with a stand-in `mlflow` to see the real arguments and the auth ini it writes.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "mlflow").write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    (fake / "mlflow").chmod(0o755)
    ini = tmp_path / "auth" / "basic_auth.ini"
    run_env = {"PATH": f"{fake}:{os.environ['PATH']}", "MLFLOW_AUTH_CONFIG_PATH": str(ini),
               "MLFLOW_AUTH_DATABASE_URI": r.values["secrets"]["mlflowAuthDatabaseUri"],
               "MLFLOW_AUTH_DEFAULT_PERMISSION": env["MLFLOW_AUTH_DEFAULT_PERMISSION"]["value"]}
    out = subprocess.run([*container["command"], script], env=run_env, capture_output=True, text=True, check=True)
    args = out.stdout.splitlines()
    assert args[:3] == ["server", "--app-name", "basic-auth"]
    assert args[args.index("--artifacts-destination") + 1] == "s3://lipo-mlflow/artifacts"
    hosts = args[args.index("--allowed-hosts") + 1].split(",")
    for host in ("lipo-mlflow", f"lipo-mlflow.{NAMESPACE}", f"lipo-mlflow.{NAMESPACE}.svc",
                 f"lipo-mlflow.{NAMESPACE}.svc.cluster.local"):
        assert host in hosts and f"{host}:5000" in hosts
    assert "mlflow.example.com" in hosts and "*" not in hosts
    parser = configparser.ConfigParser()  # MLflow reads the file with the same parser and interpolation
    parser.read(ini)
    assert parser["mlflow"]["database_uri"] == r.values["secrets"]["mlflowAuthDatabaseUri"]


# --- 5. Refusals ----------------------------------------------------------------------------------------------------
def _error(values: dict, chart: Path = CHART) -> str:
    with pytest.raises(helm.HelmError) as info:
        render(values, chart=chart)
    return str(info.value)


@pytest.mark.parametrize(("values", "name"), [
    ({}, "rayAuthToken"),
    ({"secrets": {"rayAuthToken": "t"}, "service": {"enabled": True}}, "serveApiKey"),
    ({"secrets": {"rayAuthToken": "t", "mlflowAdminPassword": "p" * 12, "mlflowFlaskSecretKey": "f"},
      "mlflow": {"enabled": True}}, "mlflowBackendStoreUri"),
    ({"job": {"enabled": False}, "mlflow": {"enabled": True, "backendStore": {"type": "sqlite"}},
      "secrets": {"mlflowAdminPassword": "p" * 12, "mlflowFlaskSecretKey": "f", "s3AccessKeyId": "a"}}, "s3SecretAccessKey"),
])
def test_refuses_an_empty_secret(values: dict, name: str) -> None:
    message = _error(values)
    assert f"secrets.{name} is empty" in message and "secrets.existingSecret" in message


def test_refuses_sqlite_with_several_replicas(tmp_path: Path) -> None:
    values = {"job": {"enabled": False}, "secrets": {"generate": True, "s3AccessKeyId": "a", "s3SecretAccessKey": "b"},
              "mlflow": {"enabled": True, "replicas": 2, "backendStore": {"type": "sqlite"}}}
    message = _error(values)
    assert "/mlflow/replicas" in message and "maximum" in message
    # The template refuses it too, for tools that skip values.schema.json.
    shutil.copytree(CHART, tmp_path / "lipo")
    (tmp_path / "lipo" / "values.schema.json").unlink()
    assert "sqlite is for a single-replica demo only" in _error(values, chart=tmp_path / "lipo")
    values["mlflow"]["replicas"] = 1
    assert render(values).one("Deployment")["spec"]["strategy"]["type"] == "Recreate"


@pytest.mark.parametrize(("values", "expected"), [
    ({"ray": {"workerGroups": {"cpu": {"replicas": -1}}}}, ["/ray/workerGroups/cpu/replicas", "minimum"]),
    ({"ray": {"workerGroups": {"gpu": {"maxReplicas": -2}}}}, ["/ray/workerGroups/gpu/maxReplicas", "minimum"]),
    ({"bogus": 1}, ["additional properties 'bogus' not allowed"]),
    ({"ray": {"head": {"serviceType": "LoadBalancer"}}}, ["/ray/head", "'serviceType' not allowed"]),
    ({"job": {"stage": "deploy"}}, ["/job/stage", "pipeline", "build-lists", "train", "eval"]),
    ({"rayVersion": "2.59.0"}, ["/rayVersion", "2.60.0"]),
    ({"secrets": {"mlflowBackendStoreUri": "sqlite:///mlflow.db"}}, ["/secrets/mlflowBackendStoreUri"]),
])
def test_schema_rejects_bad_values(values: dict, expected: list[str]) -> None:
    values = {"secrets": {"rayAuthToken": "t"}} | values if "secrets" not in values else values
    message = _error(values)
    for part in expected:
        assert part in message, message


def test_refuses_a_short_mlflow_password() -> None:
    values = {"job": {"enabled": False}, "mlflow": {"enabled": True, "backendStore": {"type": "sqlite"}},
              "secrets": {"generate": True, "mlflowAdminPassword": "short", "s3AccessKeyId": "a", "s3SecretAccessKey": "b"}}
    assert "secrets.mlflowAdminPassword is shorter than 12 characters" in _error(values)


def test_refuses_a_short_serve_api_key_unless_insecure() -> None:
    values = {"secrets": {"rayAuthToken": "t", "serveApiKey": "change-me"}, "service": {"enabled": True}}
    assert "secrets.serveApiKey is shorter than 16 characters" in _error(values)
    values["service"]["args"] = {"config": None, "overrides": [], "insecure": True}
    assert render(values).one("Secret")["data"]["LIPO_API_KEY"]  # --insecure's escape, as in lipo serve
    assert "/networkPolicy/metricsFrom/0" in _error({"secrets": {"rayAuthToken": "t"},
                                                     "networkPolicy": {"metricsFrom": [{"namespace": "monitoring"}]}})


def test_refuses_replicas_outside_the_autoscaling_bounds() -> None:
    message = _error({"secrets": {"rayAuthToken": "t"}, "ray": {"workerGroups": {"cpu": {"replicas": 9}}}})
    assert "ray.workerGroups.cpu: need minReplicas <= replicas <= maxReplicas, got 0 <= 9 <= 4" in message


def test_ray_object_names_fit_kuberay_limits() -> None:
    # KubeRay rejects RayJob/RayService names over 47 characters and RayCluster names over 53, or not DNS-1035.
    values = {"fullnameOverride": "a" * 60, "secrets": {"generate": True}, "job": {"stage": "build-lists"},
              "service": {"enabled": True}, "cluster": {"enabled": True}}
    limits = {"RayJob": 47, "RayService": 47, "RayCluster": 53}
    for doc in (d for d in render(values).docs if d["kind"] in limits):
        assert len(doc["metadata"]["name"]) <= limits[doc["kind"]], doc["metadata"]["name"]
    assert "is not a DNS-1035 label" in _error(values | {"fullnameOverride": "1lipo"})


def test_generate_creates_random_secrets_that_change_without_lookup() -> None:
    values = {"secrets": {"generate": True}, "service": {"enabled": True}}
    first, second = (render(values).one("Secret") for _ in range(2))
    assert set(first["data"]) == {"auth_token", "LIPO_API_KEY"}
    assert first["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # Offline there is nothing to look up, so each render draws new values (docs/deploy.md explains lookup).
    assert first["data"] != second["data"]


# --- 6. One Ray version everywhere ----------------------------------------------------------------------------------
def test_ray_and_torch_versions_agree() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    pins = dict(re.match(r"^([A-Za-z0-9_-]+)(?:\[[^]]*\])?==(\S+)$", d).groups()
                for d in pyproject["project"]["dependencies"] if "==" in d)
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    [from_version] = re.findall(r"^FROM rayproject/ray:(\d+\.\d+\.\d+)-py311", dockerfile, re.M)
    [torch_arg] = re.findall(r"^ARG TORCH_VERSION=(\S+)$", dockerfile, re.M)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert pins["ray"] == from_version == values["rayVersion"] == schema["properties"]["rayVersion"]["const"]
    assert torch_arg == pins["torch"]
    assert chart["appVersion"] == pyproject["project"]["version"]
