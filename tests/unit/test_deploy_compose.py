"""docker-compose.yaml, the Dockerfile and envoy/compose*.yaml: Docker cannot run here, so the
files are checked instead. They parse, every file they mount exists, ports and names agree with
the configs they point at, every service has a health check, and the health check commands
work when run against the real thing (with the port swapped for a free one)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.support.redis_server import RedisServer, free_port
from tests.unit.test_envoyconfig import envoy_binary, envoy_validate
from tokenbook.envoyconfig import regen
from tokenbook.testing.fake_provider import FakeProviderThread

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yaml"
DOCKERFILE = REPO / "Dockerfile"
CORPUS = REPO / "tests" / "corpus"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = compose["services"][name]
    return found


def bind_mounts(svc: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of the service's bind mounts (sources starting with ./)."""
    out = []
    for spec in svc.get("volumes", []):
        source, target = spec.split(":")[:2]
        if source.startswith("./"):
            out.append((source, target))
    return out


def mount_target(svc: dict[str, Any], source: str) -> str:
    (target,) = [t for s, t in bind_mounts(svc) if s == source]
    return target


def published(svc: dict[str, Any]) -> dict[int, tuple[str, int]]:
    """container port -> (host ip, host port)."""
    out: dict[int, tuple[str, int]] = {}
    for spec in svc.get("ports", []):
        parts = spec.split(":")
        ip, host, container = parts if len(parts) == 3 else ("0.0.0.0", *parts)
        out[int(container)] = (ip, int(host))
    return out


def dockerfile_instruction(name: str) -> str:
    """The (continuation-joined) text of the last Dockerfile instruction called ``name``."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    found = [line[len(name) :].strip() for line in text.splitlines() if line.startswith(name + " ")]
    assert found, name
    return found[-1]


def envoy_doc(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((regen.ENVOY_DIR / name).read_text())
    return doc


def inline_config(compose: dict[str, Any], name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(compose["configs"][name]["content"])
    return doc


# -- structure ------------------------------------------------------------------------------


def test_services_and_profiles(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {
        "redis",
        "tokenbook",
        "envoy",
        "prometheus",
        "grafana",
        "fake-provider",
        "envoy-demo",
    }
    demo = {n for n, s in compose["services"].items() if s.get("profiles")}
    assert demo == {"fake-provider", "envoy-demo"}
    assert all(compose["services"][n]["profiles"] == ["demo"] for n in demo)


def test_every_service_has_a_health_check(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        check = svc.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert len(check["test"]) > 1, name
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in compose["services"], (name, dep)
            assert cond["condition"] in ("service_healthy", "service_started"), (name, dep)


def test_every_mounted_file_and_directory_exists(compose: dict[str, Any]) -> None:
    mounts = [m for svc in compose["services"].values() for m in bind_mounts(svc)]
    assert len(mounts) >= 6
    for source, _ in mounts:
        path = REPO / source
        assert path.exists(), f"{source} is mounted but missing"
        if path.is_dir():
            assert any(path.iterdir()), f"{source} is empty"
    for name, svc in compose["services"].items():
        if "build" in svc:
            assert (REPO / svc["build"] / "Dockerfile").exists(), name
        for spec in svc.get("volumes", []):
            source = spec.split(":")[0]
            if not source.startswith(("./", "/")):
                assert source in compose["volumes"], (name, source)  # named volumes declared
        for ref in svc.get("configs", []):
            assert ref["source"] in compose["configs"], (name, ref)


def test_redis_persists(compose: dict[str, Any]) -> None:
    redis = service(compose, "redis")
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "redis-data:/data" in redis["volumes"]
    assert "ports" not in redis  # not published on the host


def test_tokenbook_service_matches_the_image(compose: dict[str, Any]) -> None:
    tb = service(compose, "tokenbook")
    cmd = json.loads(dockerfile_instruction("CMD"))  # exec form: a JSON list
    listen = cmd[cmd.index("--listen") + 1]
    metrics = cmd[cmd.index("--metrics-listen") + 1]
    assert listen == "0.0.0.0:50051"
    assert metrics == "0.0.0.0:9464"
    assert published(tb) == {9464: ("127.0.0.1", 9464)}
    # the same health check as the image's
    image_check = dockerfile_instruction("HEALTHCHECK")
    assert tb["healthcheck"]["test"][-1] in image_check
    assert "127.0.0.1:50051" in tb["healthcheck"]["test"][-1]
    # Redis by service name and port; audit's default source is the Prometheus service
    redis = urlsplit(tb["environment"]["TOKENBOOK_REDIS_URL"])
    assert (redis.hostname, redis.port) == ("redis", 6379)
    prom = urlsplit(tb["environment"]["TOKENBOOK_PROMETHEUS_URL"])
    assert (prom.hostname, prom.port) == ("prometheus", 9090)
    spool = dockerfile_instruction("ENV")
    assert "TOKENBOOK_LEDGER_SPOOL_DIR=/var/lib/tokenbook/spool" in spool
    assert "tokenbook-spool:/var/lib/tokenbook/spool" in tb["volumes"]


@pytest.mark.parametrize(
    ("svc_name", "config"), [("envoy", "compose.yaml"), ("envoy-demo", "compose-demo.yaml")]
)
def test_envoy_services_use_the_rendered_configs(
    compose: dict[str, Any], svc_name: str, config: str
) -> None:
    svc = service(compose, svc_name)
    assert svc["image"] == "envoyproxy/envoy:v1.40-latest"
    assert mount_target(svc, f"./envoy/{config}") == "/etc/envoy/envoy.yaml"
    assert svc["command"][:3] == ["envoy", "-c", "/etc/envoy/envoy.yaml"]
    doc = envoy_doc(config)
    listener = doc["static_resources"]["listeners"][0]["address"]["socket_address"]
    assert listener["address"] == "0.0.0.0"
    assert listener["port_value"] in published(svc)  # the listener port is the published one
    (extproc,) = [
        c for c in doc["static_resources"]["clusters"] if c["name"] == "tokenbook_extproc"
    ]
    endpoint = extproc["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    address = endpoint["address"]["socket_address"]
    assert (address["address"], address["port_value"]) == ("tokenbook", 50051)
    assert extproc["type"] == "STRICT_DNS"
    admin = doc["admin"]["address"]["socket_address"]
    assert f"/dev/tcp/{admin['address']}/{admin['port_value']}" in svc["healthcheck"]["test"][-1]


def test_demo_gateway_sends_every_provider_to_the_fake_provider(compose: dict[str, Any]) -> None:
    fake = service(compose, "fake-provider")
    entry = fake["entrypoint"]
    assert entry[:3] == ["python", "-m", "tokenbook.testing.fake_provider"]
    port = int(entry[entry.index("--port") + 1])
    corpus = entry[entry.index("--corpus") + 1]
    assert corpus == mount_target(fake, "./tests/corpus")
    assert f"'127.0.0.1', {port}" in fake["healthcheck"]["test"][-1]
    doc = envoy_doc("compose-demo.yaml")
    upstreams = {
        (a["address"], a["port_value"])
        for c in doc["static_resources"]["clusters"]
        if c["name"] != "tokenbook_extproc"
        for e in c["load_assignment"]["endpoints"]
        for lb in e["lb_endpoints"]
        for a in [lb["endpoint"]["address"]["socket_address"]]
    }
    assert upstreams == {("fake-provider", port)}
    assert "*=http://fake-provider:8080" in regen.SHIPPED["compose-demo.yaml"]


def test_prometheus_scrapes_tokenbook_with_the_shipped_rules(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    prom = service(compose, "prometheus")
    (ref,) = prom["configs"]
    assert ref == {"source": "prometheus-config", "target": "/etc/prometheus/prometheus.yml"}
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    config = inline_config(compose, "prometheus-config")
    shipped = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    # the job name the shipped alerts look for (up{job="tokenbook"})
    assert job["job_name"] == shipped["scrape_configs"][0]["job_name"] == "tokenbook"
    (target,) = job["static_configs"][0]["targets"]
    assert target == "tokenbook:9464"  # the tokenbook service's --metrics-listen port
    # the rule files are the shipped ones, through the mount
    mounted = mount_target(prom, "./deploy/prometheus")
    rules: list[str] = []
    for pattern in config["rule_files"]:
        assert pattern.startswith(mounted + "/")
        local = pattern.replace(mounted, str(REPO / "deploy/prometheus"), 1)
        rules += [str(p) for p in Path("/").glob(local.lstrip("/"))]
    assert len(rules) >= 2
    # promtool accepts the config with those rules
    config["rule_files"] = rules
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        ["promtool", "check", "config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_grafana_gets_the_dashboard_and_a_data_source_for_the_prometheus_service(
    compose: dict[str, Any],
) -> None:
    grafana = service(compose, "grafana")
    provisioning = REPO / "deploy/grafana/provisioning"
    target = mount_target(grafana, "./deploy/grafana/provisioning/dashboards")
    assert target == "/etc/grafana/provisioning/dashboards"
    providers = [
        p
        for f in sorted((provisioning / "dashboards").glob("*.y*ml"))
        for p in yaml.safe_load(f.read_text())["providers"]
    ]
    assert providers, "no dashboard provider in deploy/grafana/provisioning/dashboards"
    dashboards_at = mount_target(grafana, "./deploy/grafana/dashboards")
    assert {p["options"]["path"] for p in providers} == {dashboards_at}
    assert list((REPO / "deploy/grafana/dashboards").glob("*.json"))
    # the data source: the shipped one's name and uid, the compose Prometheus' address
    (ref,) = grafana["configs"]
    assert ref["target"].startswith("/etc/grafana/provisioning/datasources/")
    (inline,) = inline_config(compose, ref["source"])["datasources"]
    shipped = [
        d
        for f in sorted((provisioning / "datasources").glob("*.y*ml"))
        for d in yaml.safe_load(f.read_text())["datasources"]
    ]
    (same,) = [d for d in shipped if d["uid"] == inline["uid"]]
    assert (
        (inline["name"], inline["type"])
        == (same["name"], same["type"])
        == ("Prometheus", "prometheus")
    )
    url = urlsplit(inline["url"])
    assert (url.hostname, url.port) == ("prometheus", 9090)
    assert 9090 in published(service(compose, "prometheus"))
    assert "3000" in grafana["healthcheck"]["test"][-1]
    assert 3000 in published(grafana)


def test_only_the_gateways_listen_on_every_interface(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for container, (ip, _) in published(svc).items():
            if name in ("envoy", "envoy-demo"):
                assert container == 10000
            else:
                assert ip == "127.0.0.1", (name, container)


# -- the Dockerfile and .dockerignore --------------------------------------------------------


def test_dockerfile_shape() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    user = dockerfile_instruction("USER")
    assert user.split(":")[0] not in ("", "0", "root")
    assert "pip install ." in text
    assert dockerfile_instruction("ENTRYPOINT") == '["tokenbook"]'
    assert "from tokenbook.extproc.probe import serving" in dockerfile_instruction("HEALTHCHECK")
    assert set(re.findall(r"\d+", dockerfile_instruction("EXPOSE"))) == {"50051", "9464"}


def test_dockerignore_sends_only_the_package() -> None:
    lines = [
        line
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "**"
    assert {"!pyproject.toml", "!README.md", "!src/"} <= set(lines)
    for copied in re.findall(r"^COPY (.+) \S+$", DOCKERFILE.read_text(), re.M):
        for name in copied.split():
            assert f"!{name.rstrip('/')}" in {line.rstrip("/") for line in lines}, name


# -- the health check commands, run for real --------------------------------------------------


def _run(check: list[str], old: str = "", new: str = "") -> int:
    """Exit code of a compose ``CMD`` health check, with ``old`` (an address) swapped for
    ``new``."""
    argv = [part.replace(old, new) if old else part for part in check[1:]]
    if argv[0] == "python":
        argv[0] = sys.executable  # the venv's python, which has tokenbook installed
    return subprocess.run(argv, capture_output=True, timeout=20, check=False).returncode


@pytest.fixture
def grpc_health() -> Iterator[tuple[int, health.HealthServicer]]:
    servicer = health.HealthServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port, servicer
    server.stop(0)


def test_tokenbook_health_check_asks_the_grpc_health_service(
    compose: dict[str, Any], grpc_health: tuple[int, health.HealthServicer]
) -> None:
    port, servicer = grpc_health
    check = service(compose, "tokenbook")["healthcheck"]["test"]
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert _run(check, "127.0.0.1:50051", f"127.0.0.1:{port}") == 0
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)  # draining
    assert _run(check, "127.0.0.1:50051", f"127.0.0.1:{port}") == 1
    assert _run(check, "127.0.0.1:50051", f"127.0.0.1:{free_port()}") == 1


def test_redis_health_check(compose: dict[str, Any]) -> None:
    check = service(compose, "redis")["healthcheck"]["test"]
    with RedisServer() as server:
        port = server.url.rsplit(":", 1)[1].split("/")[0]
        assert _run([*check[:2], "-p", port, *check[2:]]) == 0
    assert _run([*check[:2], "-p", str(free_port()), *check[2:]]) != 0


def test_fake_provider_health_check(compose: dict[str, Any]) -> None:
    check = service(compose, "fake-provider")["healthcheck"]["test"]
    fake = FakeProviderThread(CORPUS).start()
    try:
        port = fake.url.rsplit(":", 1)[1]
        assert _run(check, "8080)", f"{port})") == 0
    finally:
        fake.stop()
    assert _run(check, "8080)", f"{free_port()})") == 1


class _Ready(BaseHTTPRequestHandler):
    body = b"LIVE\n"
    status = 200
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/ready" else 404)
        self.send_header("content-length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_envoy_health_check_reads_ready_from_the_admin_endpoint(compose: dict[str, Any]) -> None:
    check = service(compose, "envoy")["healthcheck"]["test"]
    handler: type[_Ready] = type("Handler", (_Ready,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        assert _run(check, "/9901", f"/{port}") == 0
        handler.status, handler.body = 503, b"PRE_INITIALIZING\n"
        assert _run(check, "/9901", f"/{port}") == 1
    finally:
        server.shutdown()
        server.server_close()


# -- the Envoy configs --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["compose.yaml", "compose-demo.yaml"])
def test_envoy_accepts_the_compose_configs(name: str) -> None:
    assert name in regen.SHIPPED  # rendered by `make envoy-configs`, covered by the drift test
    envoy_validate(regen.ENVOY_DIR / name)


def test_compose_envoy_starts_and_its_health_check_passes(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """The compose config really runs, and the compose health check passes against it.

    This machine has no DNS: Envoy would wait seconds for each STRICT_DNS cluster's first
    resolution, so the copy points every cluster at 127.0.0.1 (nothing connects to them).
    """
    doc = envoy_doc("compose.yaml")
    for cluster in doc["static_resources"]["clusters"]:
        if cluster["type"] in ("STRICT_DNS", "LOGICAL_DNS"):
            cluster["type"] = "STATIC"
            for group in cluster["load_assignment"]["endpoints"]:
                for lb in group["lb_endpoints"]:
                    lb["endpoint"]["address"]["socket_address"]["address"] = "127.0.0.1"
    admin = free_port()
    doc["admin"]["address"]["socket_address"]["port_value"] = admin
    listener = doc["static_resources"]["listeners"][0]["address"]["socket_address"]
    listener.update(address="127.0.0.1", port_value=free_port())
    config = tmp_path / "envoy.yaml"
    config.write_text(yaml.safe_dump(doc))
    argv = [envoy_binary(), "-c", str(config), "--base-id", str(admin), "--log-level", "error"]
    envoy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    check = service(compose, "envoy")["healthcheck"]["test"]
    try:
        for _ in range(200):
            if envoy.poll() is not None:
                pytest.fail(f"envoy exited: {envoy.stderr.read().decode() if envoy.stderr else ''}")
            if _run(check, "/9901", f"/{admin}") == 0:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the compose health check never passed against envoy/compose.yaml")
    finally:
        envoy.terminate()
        envoy.wait(10)
