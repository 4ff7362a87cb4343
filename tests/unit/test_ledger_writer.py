"""The ledger writer against a real redis-server: spend, ledger, idempotency, outage and replay."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from tests.support.redis_server import RedisServer
from tokenbook.attribution.connect import redis_client
from tokenbook.ledger.entry import LedgerEntry
from tokenbook.ledger.keyspace import Keyspace
from tokenbook.ledger.periods import period_of
from tokenbook.ledger.spool import Spool
from tokenbook.ledger.writer import LedgerWriter
from tokenbook.metrics.instruments import Metrics

KS = Keyspace()
# Now: counters of periods long past expire at once (EXPIREAT = period end + retention).
T0 = time.time()
DAY = period_of("daily", datetime.fromtimestamp(T0, UTC)).label


def entry(i: int, *, cost: float | None = 0.0025, outcome: str = "ok", **kw: object) -> LedgerEntry:
    base: dict[str, object] = {
        "booking_id": f"req-{i}.adm",
        "request_id": f"req-{i}",
        "booked_at": T0,
        "key_id": "abcdefghijkl",
        "owner": "alice",
        "team": "search",
        "agent": "crawler",
        "workload": "indexing",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "tokens": {"input": 10, "output": 5},
        "cost_usd": cost,
        "outcome": outcome,
    }
    base.update(kw)
    return LedgerEntry(**base)  # type: ignore[arg-type]


async def until(check: Callable[[], object], within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


class Harness:
    def __init__(self, url: str, spool_dir: Path, **writer_kw: object) -> None:
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.client = redis_client(url, timeout_s=0.5)
        self.check = aioredis.from_url(url)
        self.spool = Spool(spool_dir, fsync_entries=1)
        self.writer = LedgerWriter(
            self.client,
            KS,
            self.spool,
            self.metrics,
            backoff_s=(0.05, 0.2),
            **writer_kw,  # type: ignore[arg-type]
        )
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.writer.run())

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    async def ledger(self) -> list[dict[bytes, bytes]]:
        raw: list[Any] = await self.check.xrange(KS.ledger) or []
        return [f for _, f in raw]

    async def close(self) -> None:
        if self.task is not None:
            await self.writer.drain(2.0)
            self.task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await self.task
        await self.client.aclose()
        await self.check.aclose()


@pytest.fixture
async def h(redis_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(redis_url, tmp_path / "spool")
    harness.start()
    yield harness
    await harness.close()


async def test_a_booking_adds_spend_in_every_scope_and_one_ledger_entry(h: Harness) -> None:
    h.writer.submit(entry(1))
    await until(lambda: h.value("tokenbook_ledger_writes_total", result="written") == 1)
    day = DAY
    month = period_of("monthly", datetime.fromtimestamp(T0, UTC)).label
    for scope, ident in [
        ("key", "abcdefghijkl"),
        ("agent", "crawler"),
        ("workload", "indexing"),
        ("team", "search"),
    ]:
        for period in (day, month):
            assert await h.check.get(KS.spend(scope, ident, period)) == b"2500", (scope, period)
            assert await h.check.ttl(KS.spend(scope, ident, period)) > 0
    [fields] = await h.ledger()
    assert fields[b"request_id"] == b"req-1"
    assert fields[b"tokens_output"] == b"5"
    assert await h.check.get(KS.booked("req-1.adm")) == b"b"
    assert 0 < await h.check.ttl(KS.booked("req-1.adm")) <= 86_400


async def test_replaying_a_booking_never_counts_twice(h: Harness) -> None:
    for _ in range(3):
        h.writer.submit(entry(7))
    await until(lambda: h.value("tokenbook_ledger_writes_total", result="duplicate") == 2)
    assert len(await h.ledger()) == 1
    assert await h.check.get(KS.spend("agent", "crawler", DAY)) == b"2500"


async def test_unpriced_and_unattributed_bookings(h: Harness) -> None:
    h.writer.submit(entry(1, cost=None))
    h.writer.submit(entry(2, attributed=False, key_id="fp_0123456789"))
    await until(lambda: h.value("tokenbook_ledger_writes_total", result="written") == 2)
    assert await h.check.get(KS.spend("key", "abcdefghijkl", DAY)) is None
    assert await h.check.get(KS.spend("key", "fp_0123456789", DAY)) is None
    assert await h.check.get(KS.spend("agent", "crawler", DAY)) == b"2500"
    first = (await h.ledger())[0]
    assert b"cost_usd" not in first


async def test_unbooked_verdict_then_a_late_booking(h: Harness) -> None:
    unbooked = entry(3, cost=None, outcome="unbooked", tokens={}, source="estimated")
    h.writer.submit(unbooked)
    await until(lambda: h.value("tokenbook_requests_unbooked_total", provider="openai") == 1)
    # The real booking arrives after the verdict: its numbers count, the ledger keeps both.
    h.writer.submit(entry(3))
    await until(lambda: h.value("tokenbook_ledger_writes_total", result="late") == 1)
    outcomes = [f[b"outcome"] for f in await h.ledger()]
    assert outcomes == [b"unbooked", b"ok"]
    assert await h.check.get(KS.spend("team", "search", DAY)) == b"2500"
    # A verdict for a request that was booked is a duplicate, and not counted as unbooked.
    h.writer.submit(entry(4))
    h.writer.submit(entry(4, cost=None, outcome="unbooked"))
    await until(lambda: h.value("tokenbook_ledger_writes_total", result="duplicate") == 1)
    assert h.value("tokenbook_requests_unbooked_total", provider="openai") == 1


async def test_booking_releases_the_reservation(h: Harness) -> None:
    reserved = KS.reserved("agent", "crawler", DAY)
    await h.check.set(reserved, 5000)
    await h.check.hset(KS.hold("req-5.adm"), mapping={reserved: 3000})
    await h.check.zadd(KS.holds, {"req-5.adm": 1})
    h.writer.submit(entry(5))
    await until(lambda: h.value("tokenbook_ledger_writes_total", result="written") == 1)
    assert await h.check.get(reserved) == b"2000"
    assert not await h.check.exists(KS.hold("req-5.adm"))
    assert await h.check.zcard(KS.holds) == 0


async def test_outage_spools_then_replays_exactly_once(tmp_path: Path) -> None:
    async with RedisServer(persistence=True) as server:
        h = Harness(server.url, tmp_path / "spool")
        h.start()
        try:
            h.writer.submit(entry(0))
            await until(lambda: h.value("tokenbook_ledger_writes_total", result="written") == 1)
            server.stop()
            for i in range(1, 51):
                h.writer.submit(entry(i))
            await until(lambda: h.value("tokenbook_ledger_writes_total", result="spooled") == 50)
            assert h.value("tokenbook_ledger_degraded") == 1
            assert h.writer.degraded
            spooled = list((tmp_path / "spool").glob("*.jsonl"))
            assert spooled
            # Keep a copy, to replay the same file a second time below.
            copy = tmp_path / "copy.jsonl"
            shutil.copy(spooled[0], copy)
            server.start()
            await until(lambda: h.value("tokenbook_ledger_replayed_total") == 50)
            await until(lambda: not list((tmp_path / "spool").glob("*.jsonl")))
            assert h.value("tokenbook_ledger_degraded") == 0
            ledger = await h.ledger()
            assert len(ledger) == 51
            assert len({f[b"request_id"] for f in ledger}) == 51
            # The same spool file again, picked up at the next start (a replica that crashed
            # after replaying it, before deleting it): every line is a duplicate.
            await h.close()
            shutil.copy(copy, tmp_path / "spool" / "ledger-1-1-1.jsonl")
            h = Harness(server.url, tmp_path / "spool")
            h.start()
            await until(lambda: h.value("tokenbook_ledger_writes_total", result="duplicate") == 50)
            assert len(await h.ledger()) == 51
            spend = await h.check.get(KS.spend("agent", "crawler", DAY))
            assert spend == str(51 * 2500).encode()
            assert h.value("tokenbook_ledger_dropped_total", reason="spool_full") == 0
        finally:
            await h.close()


async def test_a_full_spool_counts_what_it_drops(tmp_path: Path) -> None:
    async with RedisServer() as server:
        h = Harness(server.url, tmp_path / "spool")
        line = len(entry(1).to_spool())
        h.spool.max_bytes = line * 10 + line // 2
        h.start()
        try:
            server.stop()
            for i in range(25):
                h.writer.submit(entry(i))
            await until(
                lambda: (
                    h.value("tokenbook_ledger_writes_total", result="spooled")
                    + h.value("tokenbook_ledger_dropped_total", reason="spool_full")
                    == 25
                )
            )
            assert h.value("tokenbook_ledger_writes_total", result="spooled") == 10
            assert h.value("tokenbook_ledger_dropped_total", reason="spool_full") == 15
        finally:
            await h.close()


async def test_a_spool_left_by_an_earlier_process_is_replayed_at_start(
    redis_url: str, tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    (spool_dir / "ledger-1-12345-1.jsonl").write_bytes(
        b"".join(entry(i).to_spool() for i in range(5))
    )
    h = Harness(redis_url, spool_dir)
    h.start()
    try:
        await until(lambda: h.value("tokenbook_ledger_replayed_total") == 5)
        assert len(await h.ledger()) == 5
    finally:
        await h.close()


async def test_drain_spools_what_redis_cannot_take(tmp_path: Path) -> None:
    async with RedisServer() as server:
        h = Harness(server.url, tmp_path / "spool")
        server.stop()
        for i in range(3):
            h.writer.submit(entry(i))
        await h.writer.drain(0.1)  # the writer never ran: everything goes to the spool
        assert h.value("tokenbook_ledger_writes_total", result="spooled") == 3
        assert len(list(h.spool.readers())) == 1
        await h.close()


async def test_a_full_queue_spills_to_the_spool_and_is_replayed(
    redis_url: str, tmp_path: Path
) -> None:
    h = Harness(redis_url, tmp_path / "spool", queue_max=5)
    for i in range(12):  # the writer is not running yet: 5 queue up, 7 spill to the spool
        h.writer.submit(entry(i))
    assert h.value("tokenbook_ledger_writes_total", result="spooled") == 7
    h.start()
    try:
        await until(lambda: h.value("tokenbook_ledger_writes_total", result="written") == 12)
        assert h.value("tokenbook_ledger_replayed_total") == 7
        assert len(await h.ledger()) == 12
    finally:
        await h.close()


async def test_a_booking_redis_refuses_does_not_take_its_batch_with_it(h: Harness) -> None:
    """One batch, one script call: a WRONGTYPE in one booking is that booking's alone."""
    await h.check.hset(KS.spend("agent", "broken", DAY), "x", "1")  # someone wrote a hash here
    batch = [entry(20), entry(21, agent="broken"), entry(22)]
    for e in batch:
        h.writer.submit(e)
    await until(lambda: h.value("tokenbook_ledger_writes_total", result="written") == 2)
    await until(lambda: h.value("tokenbook_ledger_dropped_total", reason="rejected") == 1)
    ids = sorted(f[b"request_id"] for f in await h.ledger())
    assert ids == [b"req-20", b"req-22"]
    assert await h.check.get(KS.spend("agent", "crawler", DAY)) == b"5000"
    assert h.value("tokenbook_ledger_writes_total", result="spooled") == 0


async def test_many_bookings_are_written_in_few_round_trips(redis_url: str, tmp_path: Path) -> None:
    h = Harness(redis_url, tmp_path / "spool", linger_s=0.05)
    calls = 0
    book = h.writer._book

    async def counting(**kw: Any) -> Any:
        nonlocal calls
        calls += 1
        return await book(**kw)

    h.writer._book = counting  # type: ignore[assignment]
    h.start()
    try:
        for i in range(600):
            h.writer.submit(entry(100 + i))
        await until(lambda: h.value("tokenbook_ledger_writes_total", result="written") == 600)
        assert len(await h.ledger()) == 600
        assert calls <= 4  # batch_max 256: three batches
    finally:
        await h.close()
