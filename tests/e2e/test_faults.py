"""Faults through real Envoy: a decompression bomb, and tokenbook killed under load.

tokenbook must never break a user's request because its own bookkeeping failed, unless the
operator chose fail-closed: the gate fails as configured, the meter always fails open.
"""

from __future__ import annotations

import http.client
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import issue_key, sample, wait_for_sample
from tokenbook.testing.stack import Stack

pytestmark = pytest.mark.e2e

BOMB_MB = 256


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_decompression_bomb_leaves_the_response_untouched(stack: Stack) -> None:
    issued = issue_key(stack, "omar", "platform", "prober", "faults")
    assert stack.tokenbook is not None
    assert stack.tokenbook.proc is not None
    pid = stack.tokenbook.proc.pid
    rss_before = _rss_mb(pid)
    conn = http.client.HTTPConnection("127.0.0.1", stack.envoy_port, timeout=60)
    conn.request(
        "POST",
        "/openai/v1/chat/completions",
        body=b'{"model":"gpt-4o-mini","messages":[]}',
        headers={
            "authorization": f"Bearer {issued['key']}",
            "x-fake-fixture": "openai/chat/nonstream_prompt_cache_hit.json",
            "x-fake-bomb-mb": str(BOMB_MB),
        },
    )
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("content-encoding") == "gzip"
    raw = resp.read()
    conn.close()
    # The client got the provider's bytes exactly: they inflate to BOMB_MB MiB of zeros.
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    total = 0
    data = raw
    while data:
        piece = inflater.decompress(data, 1 << 20)
        assert piece.count(0) == len(piece)
        total += len(piece)
        data = inflater.unconsumed_tail
    assert total == BOMB_MB * 1024 * 1024
    labels = {"key_id": issued["key_id"], "provider": "openai"}
    text = wait_for_sample(stack, "tokenbook_requests_total", outcome="usage_missing", **labels)
    assert sample(text, "tokenbook_tokens_total", token_type="input", **labels) is None
    rss_after = _rss_mb(pid)
    print(
        f"\nbomb: {len(raw):,} bytes gzip -> {total:,} bytes; "
        f"tokenbook RSS {rss_before:.0f} -> {rss_after:.0f} MiB"
    )
    assert rss_after - rss_before < 64, "the meter must not inflate the bomb into memory"


@pytest.fixture
def fail_open_stack(tmp_path: Path, corpus_dir: Path) -> Iterator[Stack]:
    s = Stack(workdir=tmp_path, corpus=corpus_dir, envoy_config_args=["--gate-fail-open"])
    s.start()
    yield s
    s.stop()


def _load(stack: Stack, key: str, stop: threading.Event, results: list[tuple[int, int]]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", stack.envoy_port, timeout=10)
    while not stop.is_set():
        try:
            conn.request(
                "POST",
                "/anthropic/v1/messages",
                body=b'{"model":"claude-sonnet-4-5","messages":[]}',
                headers={
                    "x-api-key": key,
                    "x-fake-fixture": "anthropic/messages/nonstream_cache_write_and_read.json",
                },
            )
            resp = conn.getresponse()
            results.append((resp.status, len(resp.read())))
        except (OSError, http.client.HTTPException):
            results.append((-1, 0))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", stack.envoy_port, timeout=10)
    conn.close()


def test_killing_tokenbook_under_load_leaves_responses_unharmed(fail_open_stack: Stack) -> None:
    stack = fail_open_stack
    issued = issue_key(stack, "pia", "platform", "chaos", "faults")
    expected_len = (
        (stack.corpus / "anthropic/messages/nonstream_cache_write_and_read.json").stat().st_size
    )
    stop = threading.Event()
    results: list[tuple[int, int]] = []
    threads = [
        threading.Thread(target=_load, args=(stack, issued["key"], stop, results)) for _ in range(4)
    ]
    for t in threads:
        t.start()
    time.sleep(1.5)
    assert stack.tokenbook is not None
    assert stack.tokenbook.proc is not None
    stack.tokenbook.proc.kill()  # no drain: the worst case
    stack.tokenbook.proc.wait(10)
    killed_at = len(results)
    time.sleep(2.0)
    stop.set()
    for t in threads:
        t.join(15)
    after_kill = results[killed_at:]
    print(f"\nkill: {killed_at} requests before the kill, {len(after_kill)} after, all answered")
    assert killed_at > 0
    assert len(after_kill) > 0
    bad = [r for r in results if r != (200, expected_len)]
    assert not bad, f"{len(bad)} of {len(results)} responses harmed, e.g. {bad[:3]}"
    # tokenbook comes back and books again
    stack.start_tokenbook()
    conn = http.client.HTTPConnection("127.0.0.1", stack.envoy_port, timeout=10)
    deadline = time.monotonic() + 10
    while True:
        conn.request(
            "POST",
            "/anthropic/v1/messages",
            body=b"{}",
            headers={
                "x-api-key": issued["key"],
                "x-fake-fixture": "anthropic/messages/nonstream_cache_write_and_read.json",
            },
        )
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
        if sample(
            stack.scrape(), "tokenbook_requests_total", key_id=issued["key_id"], outcome="ok"
        ):
            break
        assert time.monotonic() < deadline, "tokenbook did not book again after its restart"
        time.sleep(0.2)
    conn.close()


def test_gate_fails_closed_by_default(tmp_path: Path, corpus_dir: Path) -> None:
    stack = Stack(workdir=tmp_path, corpus=corpus_dir).start()
    try:
        issued = issue_key(stack, "quinn", "platform", "chaos", "faults")
        assert stack.tokenbook is not None
        stack.tokenbook.stop()
        conn = http.client.HTTPConnection("127.0.0.1", stack.envoy_port, timeout=10)
        conn.request(
            "POST",
            "/openai/v1/chat/completions",
            body=b"{}",
            headers={"authorization": f"Bearer {issued['key']}"},
        )
        resp = conn.getresponse()
        resp.read()
        conn.close()
        assert resp.status == 500  # no unattributed spend while tokenbook is down
        assert stack.fake is not None
        assert stack.fake.provider.received() == []  # nothing reached the provider
    finally:
        stack.stop()
