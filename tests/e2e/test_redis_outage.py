"""Redis killed under traffic, through real Envoy (issue 5, "Done when"):

- 0 failed requests for cached keys while Redis is down;
- after recovery, ledger entries == requests sent, 0 duplicates, spend == the ledger's costs;
- meanwhile ``tokenbook_ledger_degraded`` is 1 and the health stays SERVING.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openai
import pytest
import redis

from tests.e2e.conftest import _transports, issue_key, sample
from tokenbook.extproc.probe import serving
from tokenbook.ledger.keyspace import Keyspace
from tokenbook.ledger.periods import format_usd, period_of, to_micro
from tokenbook.testing.stack import Stack

pytestmark = pytest.mark.e2e

KS = Keyspace()
WARM = 5  # requests before the outage (they also put the key in the gate's cache)
DURING = 60  # requests while Redis is down


@pytest.fixture
def outage_stack(tmp_path: Path, corpus_dir: Path) -> Iterator[Stack]:
    s = Stack(
        workdir=tmp_path,
        corpus=corpus_dir,
        redis_persistence=True,  # Redis comes back with its data, as a real one does
        serve_args=["--transport", _transports()[0]],
    )
    s.start()
    yield s
    s.stop()


def _value(text: str, name: str) -> float | None:
    """An unlabelled sample (`sample` in conftest reads labelled ones)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def _dropped(text: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("tokenbook_ledger_dropped_total{")
    )


def _ledger(stack: Stack) -> list[dict[bytes, bytes]]:
    c = redis.Redis.from_url(stack.redis_url)
    try:
        raw: list[Any] = c.xrange(KS.ledger) or []
        return [f for _, f in raw]
    finally:
        c.close()


def test_redis_outage_loses_no_request_and_no_booking(outage_stack: Stack) -> None:
    stack = outage_stack
    issued = issue_key(stack, "olga", "infra", "steady", "outage")
    client = openai.OpenAI(
        base_url=f"{stack.gateway}/openai/v1", api_key=issued["key"], max_retries=0, timeout=10
    )
    fixtures = [
        "openai/chat/nonstream_prompt_cache_hit.json",
        "openai/chat/stream_include_usage_reasoning.sse",
    ]

    def send(i: int) -> bool:
        try:
            if i % 2:
                chunks = list(
                    client.chat.completions.create(
                        model="gpt-5-nano",
                        messages=[{"role": "user", "content": "hi"}],
                        stream=True,
                        extra_headers={"x-fake-fixture": fixtures[1]},
                    )
                )
                return bool(chunks)
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "hi"}],
                extra_headers={"x-fake-fixture": fixtures[0]},
            )
            return True
        except openai.APIError:
            return False

    assert all(send(i) for i in range(WARM))
    deadline = time.monotonic() + 10
    while len(_ledger(stack)) < WARM and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_ledger(stack)) == WARM

    stack.stop_redis()
    down_at = time.monotonic()
    failed = 0
    for i in range(DURING):  # spread over a few seconds: reconnect loops cycle meanwhile
        failed += not send(WARM + i)
        time.sleep(0.05)
    outage_s = time.monotonic() - down_at
    deadline = time.monotonic() + 10
    text = stack.scrape()
    while (sample(text, "tokenbook_ledger_writes_total", result="spooled") or 0) < DURING:
        assert time.monotonic() < deadline, "the bookings were not spooled"
        time.sleep(0.1)
        text = stack.scrape()
    assert _value(text, "tokenbook_ledger_degraded") == 1
    assert serving(f"127.0.0.1:{stack.grpc_port}"), "degraded mode keeps the health SERVING"
    spool_bytes = _value(text, "tokenbook_ledger_spool_bytes")

    stack.start_redis()  # same port, same data
    up_at = time.monotonic()
    sent = WARM + DURING
    while len(_ledger(stack)) < sent and time.monotonic() - up_at < 20:
        time.sleep(0.05)
    replay_s = time.monotonic() - up_at
    time.sleep(0.5)  # anything more (a duplicate) would show up now
    entries = _ledger(stack)
    ids = Counter(f[b"request_id"] for f in entries)
    duplicates = sum(n - 1 for n in ids.values())
    c = redis.Redis.from_url(stack.redis_url)
    day = period_of("daily", datetime.now(UTC)).label
    spent = int(c.get(KS.spend("key", issued["key_id"], day)) or 0)
    c.close()
    costs = sum(to_micro(float(f[b"cost_usd"])) for f in entries if b"cost_usd" in f)
    text = stack.scrape()
    print(
        f"\nredis outage: {DURING} requests in {outage_s:.1f}s with Redis down, {failed} failed;"
        f" spooled {spool_bytes:.0f} bytes; after restart the ledger holds {len(entries)} entries"
        f" for {sent} requests sent ({duplicates} duplicates) after {replay_s:.2f}s;"
        f" spend {format_usd(spent)} == ledger costs {format_usd(costs)};"
        f" dropped {_dropped(text):.0f}"
    )
    assert failed == 0
    assert len(entries) == sent
    assert duplicates == 0
    assert all(f[b"outcome"] == b"ok" for f in entries)
    assert spent == costs
    assert _dropped(text) == 0
    assert _value(text, "tokenbook_ledger_degraded") == 0
    assert (_value(text, "tokenbook_ledger_replayed_total") or 0) == DURING
    assert not list((stack.workdir / "spool").glob("*.jsonl")), "the replayed spool is removed"
