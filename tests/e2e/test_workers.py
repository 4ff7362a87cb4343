"""`tokenbook serve --workers 2` behind a real Envoy rendered with `envoy-config --workers 2`.

What is checked, on the real processes: Envoy spreads the ext_proc streams over both workers,
both workers handle gate and meter streams, the supervisor's single /metrics adds up every
worker's bookings exactly (prometheus_client multiprocess files), and a worker that dies is
restarted on its port.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest

from tests.e2e.conftest import issue_key, samples_sum
from tokenbook.extproc.probe import serving
from tokenbook.testing.stack import Stack, free_port, http_get, wait_until

pytestmark = pytest.mark.e2e

JSON_FIXTURE = "openai/chat/nonstream_prompt_cache_hit.json"
SSE_FIXTURE = "openai/chat/stream_include_usage_reasoning.sse"
EACH = 12  # requests per kind


def _two_free_ports() -> int:
    """A port P with P+1 free too (the workers listen on --listen port + index)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


@pytest.fixture(scope="module")
def workers_stack(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path) -> Iterator[Stack]:
    s = Stack(
        workdir=tmp_path_factory.mktemp("workers"),
        corpus=corpus_dir,
        serve_args=["--workers", "2"],
        envoy_config_args=["--workers", "2"],
        grpc_port=_two_free_ports(),
    )
    s.start()
    try:
        wait_until(lambda: serving(f"127.0.0.1:{s.grpc_port + 1}"), 30, "worker 1")
        yield s
    finally:
        s.stop()


def _post(stack: Stack, key: str, fixture: str, stream: bool) -> int:
    body: dict[str, object] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    req = urllib.request.Request(
        f"{stack.gateway}/openai/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={
            "authorization": f"Bearer {key}",
            "content-type": "application/json",
            "x-fake-fixture": fixture,
        },
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()
        return int(resp.status)


def _worker_metrics_ports(stack: Stack) -> dict[int, int]:
    """ext_proc port -> that worker's own (private) /metrics port, from the workers' logs."""
    assert stack.tokenbook is not None
    found = re.findall(
        r"serving ext_proc on 127\.0\.0\.1:(\d+) .*metrics on 127\.0\.0\.1:(\d+)",
        stack.tokenbook.log(),
    )
    return {int(grpc): int(metrics) for grpc, metrics in found}


def _scrape(port: int) -> str:
    status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    return body.decode()


def _endpoint_requests(stack: Stack) -> dict[int, int]:
    """Envoy's count of ext_proc streams sent to each worker endpoint."""
    _, body = http_get(f"http://127.0.0.1:{stack.envoy_admin_port}/clusters")
    out: dict[int, int] = {}
    for line in body.decode().splitlines():
        m = re.fullmatch(r"tokenbook_extproc::127\.0\.0\.1:(\d+)::rq_total::(\d+)", line)
        if m:
            out[int(m.group(1))] = int(m.group(2))
    return out


def test_two_workers_share_streams_and_metrics_add_up(workers_stack: Stack) -> None:
    stack = workers_stack
    issued = issue_key(stack, "wanda", "perf", "loadgen", "workers")
    key, key_id = issued["key"], issued["key_id"]
    jobs = [(JSON_FIXTURE, False)] * EACH + [(SSE_FIXTURE, True)] * EACH
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda job: _post(stack, key, *job), jobs))
    assert statuses == [200] * len(jobs)

    def booked() -> float:
        return samples_sum(stack.scrape(), "tokenbook_requests_total", key_id=key_id)

    wait_until(lambda: booked() >= len(jobs), 15, "bookings of both workers")
    time.sleep(0.5)  # nothing more may arrive: every request is booked exactly once
    text = stack.scrape()
    assert samples_sum(text, "tokenbook_requests_total", key_id=key_id, outcome="ok") == len(jobs)
    assert booked() == len(jobs)
    # 1502 tokens per JSON reply, 112 per stream (tests/corpus/index.jsonl `expected`)
    tokens = samples_sum(text, "tokenbook_tokens_total", key_id=key_id)
    assert tokens == EACH * 1502 + EACH * 112

    # Envoy sent ext_proc streams to both endpoints, two per request (gate + meter) in all ...
    per_endpoint = _endpoint_requests(stack)
    assert set(per_endpoint) == {stack.grpc_port, stack.grpc_port + 1}
    assert all(n > 0 for n in per_endpoint.values()), per_endpoint
    # ... and each worker handled gate and meter streams (its own /metrics, private port).
    ports = _worker_metrics_ports(stack)
    assert set(ports) == {stack.grpc_port, stack.grpc_port + 1}
    per_worker = []
    for grpc_port in sorted(ports):
        own = _scrape(ports[grpc_port])
        gate = samples_sum(own, "tokenbook_extproc_streams_total", role="gate")
        meter = samples_sum(own, "tokenbook_extproc_streams_total", role="meter")
        assert gate > 0, (grpc_port, gate)
        assert meter > 0, (grpc_port, meter)
        per_worker.append(gate + meter)
    # the supervisor's /metrics is the sum of the workers' own
    total = samples_sum(text, "tokenbook_extproc_streams_total")
    assert total == sum(per_worker) >= 2 * len(jobs)


def test_a_dead_worker_is_restarted(workers_stack: Stack) -> None:
    stack = workers_stack
    assert stack.tokenbook is not None
    assert stack.tokenbook.proc is not None
    supervisor = stack.tokenbook.proc.pid
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    assert len(children) == 2
    victim = int(children[1])
    os.kill(victim, signal.SIGKILL)
    wait_until(
        lambda: victim not in _children(supervisor) and len(_children(supervisor)) == 2,
        15,
        "a new worker",
    )
    for port in (stack.grpc_port, stack.grpc_port + 1):
        wait_until(partial(serving, f"127.0.0.1:{port}"), 30, f"the worker on {port}")
    issued = issue_key(stack, "wanda", "perf", "loadgen", "restart")
    assert _post(stack, issued["key"], JSON_FIXTURE, False) == 200


def _children(pid: int) -> list[int]:
    return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_envoy_config_renders_one_endpoint_per_worker(tmp_path: Path) -> None:
    import yaml

    from tokenbook.testing.stack import executable

    done = subprocess.run(
        [
            executable("tokenbook"),
            "envoy-config",
            "--tokenbook",
            "127.0.0.1:7000",
            "--workers",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    doc = yaml.safe_load(done.stdout)
    cluster = next(
        c for c in doc["static_resources"]["clusters"] if c["name"] == "tokenbook_extproc"
    )
    ports = [
        e["endpoint"]["address"]["socket_address"]["port_value"]
        for e in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ]
    assert ports == [7000, 7001, 7002]
    assert cluster["lb_policy"] == "LEAST_REQUEST"
    config = tmp_path / "envoy.yaml"
    config.write_text(done.stdout)
    checked = subprocess.run(
        [executable("envoy"), "--mode", "validate", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stderr[-2000:]
    refused = subprocess.run(
        [
            executable("tokenbook"),
            "envoy-config",
            "--tokenbook",
            "unix:/tmp/tb.sock",
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "--workers" in refused.stderr


def test_snapshot_collector_sums_counters_and_keeps_the_highest_gauge(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    from tokenbook.workers import SnapshotCollector, write_snapshot

    class Fixed:
        def __init__(self, hits: float, remaining: float) -> None:
            self.hits, self.remaining = hits, remaining

        def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
            c = CounterMetricFamily("tb_lookups", "lookups", labels=["result"])
            c.add_metric(["hits"], self.hits)
            yield c
            g = GaugeMetricFamily("tb_remaining", "remaining", labels=["id"])
            g.add_metric(["a"], self.remaining)
            yield g

    for index, (hits, remaining) in enumerate(((3, 10.0), (4, 12.5))):
        registry = CollectorRegistry()
        registry.register(Fixed(hits, remaining))
        write_snapshot(registry, tmp_path, index)
    merged = CollectorRegistry()
    merged.register(SnapshotCollector(tmp_path))
    assert merged.get_sample_value("tb_lookups_total", {"result": "hits"}) == 7
    assert merged.get_sample_value("tb_remaining", {"id": "a"}) == 12.5
    assert b"tb_lookups_total" in generate_latest(merged)
