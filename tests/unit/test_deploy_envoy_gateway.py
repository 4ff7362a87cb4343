"""deploy/envoy-gateway: the manifests parse, their kinds and fields are Envoy Gateway's
(v1.9 API), and their references agree: services, ports, namespaces, route names, and a
tokenbook config that tokenbook's own settings loader accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tokenbook.envoyconfig.filters import (
    GATE_MODE,
    METADATA_NAMESPACE,
    METER_ATTRIBUTES,
    METER_MODE,
    REQUEST_ATTRIBUTES,
)
from tokenbook.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
DIR = REPO / "deploy" / "envoy-gateway"

EXPECTED_KINDS = {
    ("v1", "Namespace"),
    ("v1", "Service"),
    ("v1", "ConfigMap"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("gateway.networking.k8s.io/v1beta1", "ReferenceGrant"),
    ("gateway.envoyproxy.io/v1alpha1", "EnvoyExtensionPolicy"),
    ("gateway.envoyproxy.io/v1alpha1", "ClientTrafficPolicy"),
}
# The JSON field names of Envoy Gateway v1.9's ExtProc (api/v1alpha1/ext_proc_types.go, with
# BackendCluster inlined from shared_types.go): a misspelt field would be dropped or refused
# by the CRD, so the test refuses it first.
EXTPROC_FIELDS = {
    "backendRef",
    "backendRefs",
    "backendSettings",
    "messageTimeout",
    "failOpen",
    "processingMode",
    "shadowMode",
    "metadata",
    "statusOnError",
}
PROCESSING_MODE_FIELDS = {"request", "response", "allowModeOverride"}
PROCESSING_OPTIONS_FIELDS = {"body", "attributes"}
METADATA_FIELDS = {"accessibleNamespaces", "writableNamespaces"}
CIRCUIT_BREAKER_FIELDS = {
    "maxConnections",
    "maxPendingRequests",
    "maxParallelRequests",
    "maxParallelRetries",
    "maxRequestsPerConnection",
    "perEndpoint",
    "retryBudget",
}
BODY_MODES = {"Streamed", "Buffered", "BufferedPartial", "FullDuplexStreamed"}


def load_all() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(DIR.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return load_all()


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name)
    return found[0]


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((DIR / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    assert (DIR / "README.md").exists()


def test_kinds_and_api_versions(docs: list[dict[str, Any]]) -> None:
    assert {(d["apiVersion"], d["kind"]) for d in docs} == EXPECTED_KINDS
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace"), (d["kind"], d["metadata"]["name"])


def test_extension_policy_has_the_gate_then_the_meter(docs: list[dict[str, Any]]) -> None:
    policy = one(docs, "EnvoyExtensionPolicy", "tokenbook")
    gate, meter = policy["spec"]["extProc"]
    for entry in (gate, meter):
        assert set(entry) <= EXTPROC_FIELDS, set(entry) - EXTPROC_FIELDS
        mode = entry["processingMode"]
        assert set(mode) <= PROCESSING_MODE_FIELDS
        for side in ("request", "response"):
            assert set(mode.get(side) or {}) <= PROCESSING_OPTIONS_FIELDS
            body = (mode.get(side) or {}).get("body")
            assert body is None or body in BODY_MODES
        assert set(entry["metadata"]) <= METADATA_FIELDS
        assert set(entry["backendSettings"]["circuitBreaker"]) <= CIRCUIT_BREAKER_FIELDS
        assert entry["messageTimeout"] == "1s"
    # the provider from the route name, the request id, as the shipped filters ask
    assert tuple(gate["processingMode"]["request"]["attributes"]) == REQUEST_ATTRIBUTES

    # gate: request headers only, in the path, fails closed, writes the attribution
    assert gate["failOpen"] is False
    assert not gate.get("shadowMode")
    assert gate["processingMode"]["allowModeOverride"] is True
    assert "response" not in gate["processingMode"]
    assert "body" not in gate["processingMode"]["request"]
    assert GATE_MODE["request_body_mode"] == "NONE"
    assert GATE_MODE["response_header_mode"] == "SKIP"
    assert gate["metadata"] == {"writableNamespaces": [METADATA_NAMESPACE]}

    # meter: observability mode, response headers and streamed body, fails open, reads it
    assert meter["failOpen"] is True
    assert meter["shadowMode"] is True
    assert meter["processingMode"]["response"]["body"] == "Streamed"
    assert METER_MODE["response_body_mode"] == "STREAMED"
    # no request headers (METER_MODE skips them): the request comes as response attributes
    assert "request" not in meter["processingMode"]
    assert METER_MODE["request_header_mode"] == "SKIP"
    assert tuple(meter["processingMode"]["response"]["attributes"]) == METER_ATTRIBUTES
    assert meter["metadata"] == {"accessibleNamespaces": [METADATA_NAMESPACE]}
    assert not meter["processingMode"].get("allowModeOverride")


def test_policy_reaches_the_tokenbook_service(docs: list[dict[str, Any]]) -> None:
    policy = one(docs, "EnvoyExtensionPolicy", "tokenbook")
    svc = one(docs, "Service", "tokenbook")
    deployment = one(docs, "Deployment", "tokenbook")
    grpc_port = next(p for p in svc["spec"]["ports"] if p["name"] == "grpc")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    listen_port = int(args[args.index("--listen") + 1].rsplit(":", 1)[1])
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container_ports["grpc"] == listen_port == grpc_port["port"]
    assert grpc_port["targetPort"] == "grpc"
    assert grpc_port["appProtocol"] == "kubernetes.io/h2c"
    for entry in policy["spec"]["extProc"]:
        (ref,) = entry["backendRefs"]
        assert ref["name"] == svc["metadata"]["name"]
        assert ref["namespace"] == svc["metadata"]["namespace"]
        assert ref["port"] == grpc_port["port"]
    # a policy in another namespace needs a ReferenceGrant in the Service's
    grant = one(docs, "ReferenceGrant", "tokenbook-extproc")
    assert grant["metadata"]["namespace"] == svc["metadata"]["namespace"]
    assert grant["spec"]["from"] == [
        {
            "group": "gateway.envoyproxy.io",
            "kind": "EnvoyExtensionPolicy",
            "namespace": policy["metadata"]["namespace"],
        }
    ]
    assert grant["spec"]["to"] == [{"group": "", "kind": "Service", "name": "tokenbook"}]


def test_services_select_their_pods(docs: list[dict[str, Any]]) -> None:
    for name, kind in (("tokenbook", "Deployment"), ("redis", "StatefulSet")):
        svc = one(docs, "Service", name)
        workload = one(docs, kind, name)
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert svc["metadata"]["namespace"] == workload["metadata"]["namespace"]
        assert svc["spec"]["selector"].items() <= labels.items()
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        named = {p["name"] for p in container["ports"]}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in named, (name, port)


def test_tokenbook_finds_redis_and_is_probed_over_grpc(docs: list[dict[str, Any]]) -> None:
    deployment = one(docs, "Deployment", "tokenbook")
    redis_svc = one(docs, "Service", "redis")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    url = urlsplit(env["TOKENBOOK_REDIS_URL"])
    ns = redis_svc["metadata"]["namespace"]
    assert url.hostname in (f"redis.{ns}.svc.cluster.local", f"redis.{ns}.svc", f"redis.{ns}")
    assert url.port == redis_svc["spec"]["ports"][0]["port"]
    grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
    assert container["readinessProbe"]["grpc"]["port"] == grpc_port
    assert container["livenessProbe"]["grpc"]["port"] == grpc_port
    # the drain (20 s) fits in the grace period, and liveness tolerates a drain
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > 20
    live = container["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] > 20
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    metrics = next(p["containerPort"] for p in container["ports"] if p["name"] == "metrics")
    args = container["args"]
    assert int(args[args.index("--metrics-listen") + 1].rsplit(":", 1)[1]) == metrics
    assert annotations["prometheus.io/port"] == str(metrics)


def test_redis_persists(docs: list[dict[str, Any]]) -> None:
    redis = one(docs, "StatefulSet", "redis")
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    data_dir = args[args.index("--dir") + 1]
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == data_dir


def test_tokenbook_config_is_valid_and_maps_the_targeted_routes(
    docs: list[dict[str, Any]], tmp_path: Path
) -> None:
    config_map = one(docs, "ConfigMap", "tokenbook-config")
    deployment = one(docs, "Deployment", "tokenbook")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    config_path = Path(args[args.index("--config") + 1])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert str(config_path.parent) == mounts["config"]
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
    text = config_map["data"][config_path.name]
    local = tmp_path / config_path.name
    local.write_text(text)
    settings = load_settings({}, {}, str(local))  # tokenbook's own loader: raises if invalid
    assert settings.ledger_spool_dir == mounts["spool"]
    # every HTTPRoute the policy targets is named in the route map, in Envoy Gateway's format
    policy = one(docs, "EnvoyExtensionPolicy", "tokenbook")
    ns = policy["metadata"]["namespace"]
    targeted = [r["name"] for r in policy["spec"]["targetRefs"] if r["kind"] == "HTTPRoute"]
    assert targeted
    for route in targeted:
        names = [n for n in settings.routes if n.startswith(f"httproute/{ns}/{route}/rule/")]
        assert names, f"no route name for HTTPRoute {ns}/{route} in the tokenbook config"
        for name in names:
            assert settings.provider_for_route(name) is not None


def test_listener_policy_targets_a_gateway(docs: list[dict[str, Any]]) -> None:
    ctp = one(docs, "ClientTrafficPolicy", "tokenbook-listener")
    policy = one(docs, "EnvoyExtensionPolicy", "tokenbook")
    assert ctp["metadata"]["namespace"] == policy["metadata"]["namespace"]
    assert [r["kind"] for r in ctp["spec"]["targetRefs"]] == ["Gateway"]
    early = ctp["spec"]["headers"]["earlyRequestHeaders"]
    assert early == {"removeOnMatch": [{"type": "Prefix", "value": "x-tokenbook-"}]}
    assert ctp["spec"]["connection"]["bufferLimit"] == "32Mi"  # the rendered listener's 32 MiB
