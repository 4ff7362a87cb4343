"""End to end: SDK traffic for several keys through real Envoy and tokenbook, then
`tokenbook audit` over tokenbook's own /metrics and over a real Prometheus scraping it.

The stack is this module's own (not the session's), so that the keys here are the only spend
in it and "the top key is the one that spent most" is a statement about this traffic alone.
"""

from __future__ import annotations

import json
import math
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import redis

from tests.e2e.conftest import issue_key, samples_sum, wait_for_sample
from tokenbook.testing.stack import (
    ManagedProcess,
    Stack,
    executable,
    free_port,
    http_get,
    wait_until,
)

pytestmark = pytest.mark.e2e

OPENAI_FIXTURE = "openai/chat/nonstream_prompt_cache_hit.json"  # gpt-4o-mini, about $0.0003
ANTHROPIC_FIXTURE = "anthropic/messages/nonstream_cache_write_and_read.json"  # sonnet, ~$0.0024


@pytest.fixture(scope="module")
def audit_stack(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path) -> Iterator[Stack]:
    stack = Stack(workdir=tmp_path_factory.mktemp("audit-stack"), corpus=corpus_dir)
    stack.start()
    yield stack
    stack.stop()


def _chat(stack: Stack, key: str, n: int) -> None:
    client = openai.OpenAI(base_url=f"{stack.gateway}/openai/v1", api_key=key, max_retries=0)
    for _ in range(n):
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-fake-fixture": OPENAI_FIXTURE},
        )


def _messages(stack: Stack, key: str, n: int) -> None:
    client = anthropic.Anthropic(base_url=f"{stack.gateway}/anthropic", api_key=key, max_retries=0)
    for _ in range(n):
        client.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=64,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-fake-fixture": ANTHROPIC_FIXTURE},
        )


def _wait_booked(stack: Stack, key_id: str, requests: int) -> str:
    """Scrape until the meter has booked ``requests`` requests for the key (it books async)."""
    text = ""

    def booked() -> bool:
        nonlocal text
        text = stack.scrape()
        return samples_sum(text, "tokenbook_requests_total", key_id=key_id) == requests

    wait_until(booked, 15, f"{requests} booked requests for {key_id}")
    return text


def run_audit(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [executable("tokenbook"), "audit", *args, "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def test_audit_over_metrics_ranks_the_biggest_spender_first(audit_stack: Stack) -> None:
    stack = audit_stack
    heavy = issue_key(stack, "hana", "research", "summariser", "papers")
    medium = issue_key(stack, "mo", "search", "crawler", "indexing")
    light = issue_key(stack, "lee", "search", "crawler", "indexing")
    _messages(stack, heavy["key"], 3)
    _chat(stack, medium["key"], 4)
    _chat(stack, light["key"], 1)
    for issued, n in ((heavy, 3), (medium, 4), (light, 1)):
        text = _wait_booked(stack, issued["key_id"], n)
    wait_for_sample(stack, "tokenbook_cost_usd_total", key_id=light["key_id"])

    doc = run_audit("--metrics-url", stack.metrics_url)
    assert doc["schema"] == "tokenbook.audit/v1"
    assert doc["source"]["kind"] == "metrics"
    keys = doc["keys"]
    assert [k["key_id"] for k in keys] == [heavy["key_id"], medium["key_id"], light["key_id"]]
    assert math.fsum(k["share_pct"] for k in keys) == pytest.approx(100.0, abs=1e-9)
    assert keys[-1]["cumulative_pct"] == 100.0
    # each key's spend is what tokenbook booked for it, read independently from the scrape
    for k in keys:
        booked = samples_sum(text, "tokenbook_cost_usd_total", key_id=k["key_id"])
        assert k["cost_usd"] == pytest.approx(booked)
    top = keys[0]
    assert (top["owner"], top["workload"], top["requests"]) == ("hana", "papers", 3)
    # 3 x (3 input + 1111 cached + 418 cache write + 33 output) tokens
    assert top["tokens"] == 3 * (3 + 1111 + 418 + 33)
    assert doc["concentration"]["keys_for_half"] == 1
    assert doc["totals"]["keys"] == 3
    # the anthropic workload's model, with cheaper anthropic models for the same requests
    papers = next(w for w in doc["workloads"] if w["workload"] == "papers")
    (sonnet,) = papers["models"]
    assert sonnet["model"].startswith("claude-sonnet-4-5")
    assert sonnet["alternatives"]
    assert all(a["cost_usd"] < sonnet["cost_usd"] for a in sonnet["alternatives"])
    assert doc["unattributed"]["keys"] == []

    table = subprocess.run(
        [executable("tokenbook"), "audit", "--metrics-url", stack.metrics_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "This key is half the bill" in table
    assert heavy["key_id"] in table

    # The same traffic from the per-request ledger in Redis (written asynchronously).
    client = redis.Redis.from_url(stack.redis_url)
    try:
        wait_until(lambda: int(client.xlen("tokenbook:ledger")) >= 8, 15, "8 ledger entries")
    finally:
        client.close()
    ledger = run_audit("--redis-url", stack.redis_url, "--since", "1h")
    assert ledger["source"]["kind"] == "ledger"
    assert [k["key_id"] for k in ledger["keys"]] == [k["key_id"] for k in keys]
    assert [k["requests"] for k in ledger["keys"]] == [3, 4, 1]
    for from_ledger, from_metrics in zip(ledger["keys"], keys, strict=True):
        assert from_ledger["cost_usd"] == pytest.approx(from_metrics["cost_usd"])
        assert from_ledger["tokens"] == from_metrics["tokens"]
    assert math.fsum(k["share_pct"] for k in ledger["keys"]) == pytest.approx(100.0, abs=1e-9)


def _prometheus(stack: Stack, workdir: Path) -> tuple[ManagedProcess, str]:
    port = free_port()
    config = workdir / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: tokenbook\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{stack.metrics_port}']}}]\n"
    )
    proc = ManagedProcess(
        "prometheus",
        [
            executable("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        workdir,
    ).start()
    url = f"http://127.0.0.1:{port}"
    proc.wait_ready(lambda: http_get(f"{url}/-/ready")[0] == 200, 30)
    return proc, url


def _query(url: str, promql: str) -> list[dict[str, Any]]:
    status, body = http_get(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    assert status == 200, body
    result: list[dict[str, Any]] = json.loads(body)["data"]["result"]
    return result


def test_audit_over_prometheus(audit_stack: Stack, tmp_path: Path) -> None:
    stack = audit_stack
    heavy = issue_key(stack, "pat", "research", "summariser", "papers")
    light = issue_key(stack, "pia", "search", "crawler", "indexing")
    ids = f"{heavy['key_id']}|{light['key_id']}"
    prometheus, url = _prometheus(stack, tmp_path)
    try:
        # increase() sees only what happens between two scrapes of a series: make the
        # series exist first, let Prometheus scrape them, then spend.
        _messages(stack, heavy["key"], 1)
        _chat(stack, light["key"], 1)
        _wait_booked(stack, light["key_id"], 1)
        _wait_booked(stack, heavy["key_id"], 1)
        wait_until(
            lambda: len(_query(url, f'tokenbook_cost_usd_total{{key_id=~"{ids}"}} > 0')) >= 2,
            20,
            "Prometheus scraping the new series",
        )
        _messages(stack, heavy["key"], 4)
        _chat(stack, light["key"], 2)
        _wait_booked(stack, heavy["key_id"], 5)
        _wait_booked(stack, light["key_id"], 3)
        spent = f'sum by (key_id) (increase(tokenbook_cost_usd_total{{key_id=~"{ids}"}}[5m])) > 0'
        wait_until(lambda: len(_query(url, spent)) == 2, 20, "increase() over both keys")
        doc = run_audit("--prometheus", url, "--since", "5m")
    finally:
        prometheus.stop()
    assert doc["source"] == {
        "kind": "prometheus",
        "location": url,
        "since": "5m",
        "window": "last 5m",
    }
    keys = [k for k in doc["keys"] if k["key_id"] in (heavy["key_id"], light["key_id"])]
    assert [k["key_id"] for k in keys] == [heavy["key_id"], light["key_id"]]
    assert keys[0]["owner"] == "pat"
    assert keys[0]["cost_usd"] > 0
    assert math.fsum(k["share_pct"] for k in doc["keys"]) == pytest.approx(100.0, abs=1e-9)
