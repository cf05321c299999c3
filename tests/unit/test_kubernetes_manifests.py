"""deploy/kubernetes, rendered with `kubectl kustomize` and validated against the
Kubernetes API schemas (kubernetes-validate, for the pinned Kubernetes version).

No cluster runs here: what is checked is that every kustomization renders,
every object is valid for KUBERNETES_VERSION, the wiring between the objects
holds (probes on routes the API serves, Services that select pods with the
named ports, the Secret keys the pods read, RBAC limited to reading
EndpointSlices), the Envoy bootstrap in the ConfigMap is the one the CLI
renders, and the autoscaling examples name series that exist.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from controlplane.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.32.0"
KUSTOMIZATIONS = sorted(p.parent for p in KUBERNETES.rglob("kustomization.yaml"))
EXAMPLE = KUBERNETES / "overlays" / "example"
AUTOSCALING = KUBERNETES / "examples" / "autoscaling"
BOOTSTRAP = "deploy/kubernetes/base/envoy/envoy.yaml"

Obj = dict[str, Any]


def _kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        message = "kubectl is not installed: the manifests cannot be rendered"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def render(directory: Path) -> list[Obj]:
    done = subprocess.run(
        [_kubectl(), "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return [o for o in yaml.safe_load_all(done.stdout) if o]


def _bootstraps() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bootstraps", ROOT / "deploy" / "bootstraps.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["bootstraps"] = module
    spec.loader.exec_module(module)
    return module


def one(objects: list[Obj], kind: str, name: str) -> Obj:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def containers(workload: Obj) -> list[Obj]:
    spec = workload["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


@pytest.fixture(scope="module")
def example() -> list[Obj]:
    return render(EXAMPLE)


def test_there_is_a_base_and_an_example_overlay() -> None:
    assert KUBERNETES / "base" in KUSTOMIZATIONS
    assert EXAMPLE in KUSTOMIZATIONS


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(KUBERNETES)))
def test_every_rendered_object_is_valid_for_the_pinned_kubernetes(directory: Path) -> None:
    objects = render(directory)
    assert objects
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{obj['kind']}/{obj['metadata']['name']}: {exc}") from exc


def test_the_control_plane_runs_two_replicas_with_health_probes(example: list[Obj]) -> None:
    from controlplane.api.routes.system import router

    routes = {getattr(route, "path", None) for route in router.routes}
    deployment = one(example, "Deployment", "turnout-controlplane")
    assert deployment["spec"]["replicas"] == 2
    (container,) = containers(deployment)
    assert container["args"] == ["serve"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    defaults = Settings()
    assert ports == {"api": defaults.api_port, "xds": defaults.xds_port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "api"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "api"}
    assert {"/readyz", "/healthz"} <= routes
    pdb = one(example, "PodDisruptionBudget", "turnout-controlplane")
    assert pdb["spec"]["minAvailable"] == 1
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_services_select_pods_that_have_their_ports(example: list[Obj]) -> None:
    workloads = [o for o in example if o["kind"] in {"Deployment", "StatefulSet"}]
    for service in (o for o in example if o["kind"] == "Service"):
        selector = service["spec"]["selector"]
        matched = [
            w
            for w in workloads
            if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert matched, f"Service {service['metadata']['name']} selects no pods"
        named = {p["name"] for w in matched for c in containers(w) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in named, (service["metadata"]["name"], port)
    assert one(example, "Service", "turnout-xds")["spec"]["clusterIP"] == "None"


def test_migrations_run_as_a_job(example: list[Obj]) -> None:
    job = one(example, "Job", "turnout-migrate")
    (container,) = containers(job)
    assert container["args"] == ["db", "upgrade"]
    assert (
        container["image"]
        == one(example, "Deployment", "turnout-controlplane")["spec"]["template"]["spec"][
            "containers"
        ][0]["image"]
    )


def test_rbac_reads_endpointslices_and_nothing_else(example: list[Obj]) -> None:
    roles = [o for o in example if o["kind"] in {"Role", "ClusterRole"}]
    assert [r["metadata"]["name"] for r in roles] == ["turnout-endpointslice-reader"]
    assert roles[0]["kind"] == "Role"
    assert roles[0]["rules"] == [
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["list", "watch"],
        }
    ]
    binding = one(example, "RoleBinding", "turnout-endpointslice-reader")
    assert binding["roleRef"]["name"] == "turnout-endpointslice-reader"
    (subject,) = binding["subjects"]
    pod = one(example, "Deployment", "turnout-controlplane")["spec"]["template"]["spec"]
    assert subject["kind"] == "ServiceAccount"
    assert subject["name"] == pod["serviceAccountName"]
    assert subject["namespace"] == binding["metadata"]["namespace"]
    assert one(example, "ServiceAccount", pod["serviceAccountName"])
    env = {
        e["name"]: e
        for e in containers(one(example, "Deployment", "turnout-controlplane"))[0]["env"]
    }
    assert env["TURNOUT_KUBERNETES"]["value"] == "in-cluster"
    # Only the control plane talks to the API server.
    for workload in (o for o in example if o["kind"] in {"Deployment", "StatefulSet", "Job"}):
        spec = workload["spec"]["template"]["spec"]
        if workload["metadata"]["name"] not in {"turnout-controlplane", "postgres"}:
            assert spec.get("automountServiceAccountToken") is False, workload["metadata"]


def test_secrets_come_from_the_secret_and_its_keys_exist(example: list[Obj]) -> None:
    (secret,) = [o for o in example if o["kind"] == "Secret"]
    keys = set(secret["data"])
    for workload in (o for o in example if o["kind"] in {"Deployment", "StatefulSet", "Job"}):
        for container in containers(workload):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == secret["metadata"]["name"]
                    assert ref["key"] in keys
                else:
                    for word in ("PASSWORD", "DATABASE_URL", "API_KEY"):
                        assert word not in env["name"], (workload["metadata"]["name"], env)
        for volume in workload["spec"]["template"]["spec"].get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] == secret["metadata"]["name"]
                assert {i["key"] for i in volume["secret"]["items"]} <= keys
    for path in (EXAMPLE / "secrets").iterdir():
        assert path.name.endswith(".example") and "example-only" in path.read_text(), path
    for key in ("database-url", "audit.key"):
        assert key in keys
    assert one(example, "Deployment", "turnout-controlplane")["spec"]["template"]["spec"][
        "securityContext"
    ]["runAsNonRoot"]


def test_the_envoy_bootstrap_in_the_configmap_is_the_one_the_cli_renders(
    example: list[Obj],
) -> None:
    bootstraps = _bootstraps()
    arguments = bootstraps.BOOTSTRAPS[BOOTSTRAP]
    rendered = bootstraps.render(arguments)
    assert (ROOT / BOOTSTRAP).read_text() == rendered, (
        f"{BOOTSTRAP} drifted from `turnout envoy bootstrap`: run python deploy/bootstraps.py"
    )
    for objects in (render(KUBERNETES / "base"), example):
        (config_map,) = [
            o
            for o in objects
            if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("envoy-bootstrap")
        ]
        assert config_map["data"] == {"envoy.yaml": rendered}
        envoy = one(objects, "Deployment", "turnout-envoy")
        volumes = envoy["spec"]["template"]["spec"]["volumes"]
        assert {"name": "bootstrap", "configMap": {"name": config_map["metadata"]["name"]}} in (
            volumes
        )
    # The bootstrap points at the xDS Service by its DNS name and port.
    xds = one(example, "Service", "turnout-xds")
    (port,) = xds["spec"]["ports"]
    assert arguments[arguments.index("--xds") + 1] == f"turnout-xds:{port['port']}"
    (container,) = containers(one(example, "Deployment", "turnout-envoy"))
    assert container["image"].startswith("envoyproxy/envoy:v1.40")
    assert container["args"][container["args"].index("-c") + 1] == "/etc/envoy/turnout/envoy.yaml"
    assert "--service-node" in container["args"]
    listener = Settings().listener_port
    assert {p["containerPort"] for p in container["ports"]} == {listener}


def test_the_batcher_is_a_sidecar_of_the_example_model_server(example: list[Obj]) -> None:
    model = one(example, "Deployment", "sentiment-v1")
    by_name = {c["name"]: c for c in containers(model)}
    assert set(by_name) == {"model", "batcher"}
    served = by_name["model"]["args"]
    args = by_name["batcher"]["args"]
    assert args[0] == "batcher"
    upstream = args[args.index("--upstream") + 1]
    assert upstream == f"http://127.0.0.1:{served[served.index('--port') + 1]}"
    assert args[args.index("--control-plane") + 1] == "http://turnout-api:8080"
    assert (args[args.index("--model") + 1], args[args.index("--model-version") + 1]) == (
        "sentiment",
        "v1",
    )


# What the test checks of a KEDA ScaledObject (its CRD is not in the core schemas).
SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string"}, "kind": {"type": "string"}},
                },
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"const": "prometheus"},
                            "metadata": {
                                "type": "object",
                                "required": ["serverAddress", "query", "threshold"],
                                "additionalProperties": {"type": "string"},
                            },
                        },
                    },
                },
            },
        },
    },
}


def _series_names() -> set[str]:
    from prometheus_client.parser import text_string_to_metric_families

    from controlplane.telemetry.exposition import render
    from controlplane.telemetry.window import TrafficWindow
    from filters.batcher._metrics import BatcherMetrics

    names = set()
    families = [
        *text_string_to_metric_families(render(TrafficWindow(lambda: None)).decode()),
        *BatcherMetrics("m", "v").registry.collect(),
    ]
    for family in families:
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
    return names


def test_the_keda_scaled_object_scales_the_example_on_series_that_exist(
    example: list[Obj],
) -> None:
    scaled = yaml.safe_load((AUTOSCALING / "keda-scaledobject.yaml").read_text())
    jsonschema.validate(scaled, SCALED_OBJECT_SCHEMA)
    target = one(example, "Deployment", scaled["spec"]["scaleTargetRef"]["name"])
    assert scaled["metadata"]["namespace"] == target["metadata"]["namespace"]
    assert scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    queries = [t["metadata"]["query"] for t in scaled["spec"]["triggers"]]
    names = _series_names()
    used = set()
    for query in queries:
        (series,) = [word for word in _words(query) if word.startswith("turnout_")]
        assert series in names, series
        assert 'model="sentiment",version="v1"' in query
        used.add(series)
    assert {
        "turnout_model_active_requests",
        "turnout_batcher_queue_depth",
        "turnout_model_requests_total",
    } == used
    for trigger in scaled["spec"]["triggers"]:
        assert float(trigger["metadata"]["threshold"]) > 0


def _words(query: str) -> list[str]:
    for separator in '(){}[],="':
        query = query.replace(separator, " ")
    return query.split()


def test_the_hpa_example_is_valid_and_scales_the_example(example: list[Obj]) -> None:
    hpa = yaml.safe_load((AUTOSCALING / "hpa-external-metrics.yaml").read_text())
    kubernetes_validate.validate(hpa, KUBERNETES_VERSION, strict=True)
    target = one(example, "Deployment", hpa["spec"]["scaleTargetRef"]["name"])
    assert hpa["metadata"]["namespace"] == target["metadata"]["namespace"]
    names = _series_names()
    for metric in hpa["spec"]["metrics"]:
        assert metric["external"]["metric"]["name"] in names
        assert metric["external"]["metric"]["selector"]["matchLabels"] == {
            "model": "sentiment",
            "version": "v1",
        }


@pytest.mark.envoy
@pytest.mark.parametrize("relative", sorted(_bootstraps().BOOTSTRAPS))
def test_every_committed_bootstrap_is_one_envoy_accepts(relative: str) -> None:
    from controlplane.processes import envoy_binary

    done = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(ROOT / relative), "--service-node", "n"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
