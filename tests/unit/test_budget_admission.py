"""Admission against a real redis-server: suspensions, budgets, reservations and the overrun bound,
fail-open during an outage, admission records and the unbooked sweep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from tests.support.redis_server import RedisServer
from tests.unit.test_ledger_writer import until
from tokenbook.attribution.connect import redis_client
from tokenbook.attribution.model import Attribution
from tokenbook.ledger.admission import Refusal, Ticket
from tokenbook.ledger.entry import LedgerEntry, booking_id
from tokenbook.ledger.periods import format_usd, period_of, to_micro
from tokenbook.ledger.service import Ledger
from tokenbook.metrics.instruments import Metrics
from tokenbook.settings import load_settings

WHO = Attribution(owner="alice", team="search", agent="crawler", workload="indexing")
KEY = "abcdefghijkl"


class Env:
    def __init__(self, url: str, tmp: Path, **settings: object) -> None:
        self.settings = load_settings(
            {"redis_url": url, "ledger_spool_dir": str(tmp / "spool"), **settings}, environ={}
        )
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.redis = redis_client(url, timeout_s=0.5)
        self.check = aioredis.from_url(url)
        self.ledger = Ledger(self.settings, self.redis, self.metrics)
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.ledger.run())

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    async def admit(
        self, rid: str, budget: tuple[float | None, float | None] = (None, None), **kw: object
    ) -> Ticket | Refusal:
        args: dict[str, object] = {
            "provider": "openai",
            "request_id": rid,
            "key_id": KEY,
            "attribution": WHO,
            "attributed": True,
            "key_budget": budget,
        }
        args.update(kw)
        return await self.ledger.admission.admit(**args)  # type: ignore[arg-type]

    def book(self, rid: str, ticket: Ticket, cost: float | None) -> None:
        self.ledger.record(
            LedgerEntry(
                booking_id=booking_id(rid, ticket.admission_id),
                request_id=rid,
                booked_at=time.time(),
                key_id=KEY,
                owner=WHO.owner,
                team=WHO.team,
                agent=WHO.agent,
                workload=WHO.workload,
                provider="openai",
                model="gpt-4o-mini",
                tokens={"input": 1},
                cost_usd=cost,
            )
        )

    async def close(self) -> None:
        if self.task is not None:
            await self.ledger.drain(2.0)
            self.task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await self.task
        await self.ledger.aclose()
        await self.redis.aclose()
        await self.check.aclose()


@pytest.fixture
async def env(redis_url: str, tmp_path: Path) -> AsyncIterator[Env]:
    e = Env(redis_url, tmp_path, budget_reservation_usd=0.001)
    e.start()
    yield e
    await e.close()


def _day() -> str:
    return period_of("daily", __import__("datetime").datetime.now(__import__("datetime").UTC)).label


def _message(r: Refusal) -> str:
    body = orjson.loads(r.reply.body)
    return str(body["error"]["message"])


async def test_no_budget_means_no_redis_at_all(tmp_path: Path) -> None:
    # Redis is not even running: an unbudgeted request is admitted at once, nothing skipped.
    async with RedisServer() as server:
        e = Env(server.url, tmp_path)
        server.stop()
        started = time.monotonic()
        ticket = await e.admit("r1")
        assert isinstance(ticket, Ticket)
        assert time.monotonic() - started < 0.05
        assert e.value("tokenbook_budget_checks_skipped_total", reason="redis_down") == 0
        assert len(e.ledger.pending) == 1
        await e.close()


async def test_a_used_up_key_budget_is_refused_with_429_naming_it(env: Env) -> None:
    await env.check.set(env.ledger.keyspace.spend("key", KEY, _day()), to_micro(5.0))
    r = await env.admit("r1", budget=(5.0, None))
    assert isinstance(r, Refusal)
    assert r.reply.status == 429
    assert r.decision == "budget_exceeded"
    msg = _message(r)
    assert f"daily budget of key '{KEY}' is used up" in msg
    assert "$5.00 spent of $5.00" in msg
    assert "resets at " in msg
    assert msg.endswith("T00:00:00Z")
    headers = dict(r.reply.headers)
    assert headers["x-should-retry"] == "false"
    assert 0 < int(headers["retry-after"]) <= 86_400
    assert env.value("tokenbook_budget_denied_total", scope="key", id=KEY) == 1
    assert len(env.ledger.pending) == 0  # refused requests are not waited for


async def test_a_known_used_up_budget_refuses_without_redis(tmp_path: Path) -> None:
    async with RedisServer() as server:
        e = Env(server.url, tmp_path)
        await e.check.set(e.ledger.keyspace.spend("key", KEY, _day()), to_micro(1.0))
        assert isinstance(await e.admit("r1", budget=(1.0, None)), Refusal)
        server.stop()
        started = time.monotonic()
        assert isinstance(await e.admit("r2", budget=(1.0, None)), Refusal)
        assert time.monotonic() - started < 0.05
        # A raised limit is a different budget: it is checked again (and, Redis being down,
        # admitted without a check, which is counted).
        assert isinstance(await e.admit("r3", budget=(2.0, None)), Ticket)
        assert e.value("tokenbook_budget_checks_skipped_total", reason="redis_down") == 1
        await e.close()


async def test_redis_down_fails_open_fast_behind_a_breaker(tmp_path: Path) -> None:
    async with RedisServer() as server:
        e = Env(server.url, tmp_path)
        server.stop()
        results = [await e.admit(f"r{i}", budget=(1.0, None)) for i in range(20)]
        assert all(isinstance(r, Ticket) for r in results)
        assert e.value("tokenbook_budget_checks_skipped_total", reason="redis_down") == 20
        await e.close()


async def test_agent_workload_team_budgets_from_the_control_cache(env: Env) -> None:
    store = env.ledger.store
    await store.set_budget("team", "search", monthly_usd=3.0, by="test")
    await env.ledger.controls.refresh()
    await env.check.set(env.ledger.keyspace.spend("team", "search", _month()), to_micro(3.5))
    r = await env.admit("r1")
    assert isinstance(r, Refusal)
    assert "monthly budget of team 'search' is used up ($3.50 spent of $3.00)" in _message(r)
    assert env.value("tokenbook_budget_denied_total", scope="team", id="search") == 1
    # Raising the budget (a control event) forgets the local "used up" verdict.
    await store.set_budget("team", "search", monthly_usd=10.0, by="test")
    await env.ledger.controls.refresh()
    assert isinstance(await env.admit("r2"), Ticket)


def _month() -> str:
    import datetime as dt

    return period_of("monthly", dt.datetime.now(dt.UTC)).label


async def test_suspended_agent_gets_403_in_the_provider_shape(env: Env) -> None:
    await env.ledger.store.suspend("crawler", by="oncall", reason="runaway loop")
    await env.ledger.controls.refresh()
    r = await env.admit("r1", provider="anthropic")
    assert isinstance(r, Refusal)
    assert r.reply.status == 403
    body = orjson.loads(r.reply.body)
    assert body["type"] == "error"
    assert body["error"]["type"] == "permission_error"
    assert "agent 'crawler' is suspended by oncall (runaway loop)" in body["error"]["message"]
    assert "tokenbook agents resume crawler" in body["error"]["message"]
    other = Attribution(owner="alice", team="search", agent="summariser", workload="indexing")
    assert isinstance(await env.admit("r2", attribution=other), Ticket)
    assert await env.ledger.store.resume("crawler")
    await env.ledger.controls.refresh()
    assert isinstance(await env.admit("r3"), Ticket)


async def test_concurrent_burst_overruns_at_most_the_documented_bound(env: Env) -> None:
    """B = $0.01, floor r = $0.001, every request costs c = $0.0035 (above its reservation).

    Bound: floor(B/r) * (c - r) = 10 * $0.0025 = $0.025."""
    budget, r, c = 0.01, 0.001, 0.0035
    results = await asyncio.gather(*(env.admit(f"b{i}", budget=(budget, None)) for i in range(200)))
    admitted = [(f"b{i}", t) for i, t in enumerate(results) if isinstance(t, Ticket)]
    refused = [t for t in results if isinstance(t, Refusal)]
    assert len(admitted) == 10  # reservations of $0.001 fill the $0.01 budget
    assert "reserved by requests in flight" in _message(refused[0])
    reserved = env.ledger.keyspace.reserved("key", KEY, _day())
    assert await env.check.get(reserved) == str(to_micro(0.01)).encode()
    for rid, t in admitted:
        env.book(rid, t, c)
    spend_key = env.ledger.keyspace.spend("key", KEY, _day())
    await until(lambda: env.value("tokenbook_ledger_writes_total", result="written") == 10)
    spent = int(await env.check.get(spend_key) or 0)
    bound = (to_micro(budget) // to_micro(r)) * max(0, to_micro(c) - to_micro(r))
    overrun = spent - to_micro(budget)
    print(
        f"\nburst: 200 sent, {len(admitted)} admitted, spent {format_usd(spent)} of"
        f" {format_usd(to_micro(budget))}: overrun {format_usd(overrun)} <= bound"
        f" {format_usd(bound)}"
    )
    assert overrun <= bound
    assert not await env.check.exists(reserved)  # every reservation released
    # Now the budget is used up: refused, and the estimate learnt the real cost.
    assert isinstance(await env.admit("late", budget=(budget, None)), Refusal)
    assert env.ledger.estimator.estimate(KEY) == to_micro(c)


async def test_requests_costing_less_than_reserved_never_overrun(env: Env) -> None:
    budget = 0.01
    spent_total = 0
    for wave in range(5):
        results = await asyncio.gather(
            *(env.admit(f"w{wave}-{i}", budget=(budget, None)) for i in range(30))
        )
        for i, t in enumerate(results):
            if isinstance(t, Ticket):
                env.book(f"w{wave}-{i}", t, 0.0009)
        await asyncio.sleep(0.3)
    spend_key = env.ledger.keyspace.spend("key", KEY, _day())
    spent_total = int(await env.check.get(spend_key) or 0)
    assert spent_total <= to_micro(budget)
    assert spent_total > to_micro(budget) - to_micro(0.002)  # and the budget got used


async def test_one_request_is_let_through_when_nothing_is_in_flight(env: Env) -> None:
    # Estimate ($0.004 learnt) above what is left ($0.0015): with nothing in flight the floor
    # ($0.001) is reserved instead, so an expensive estimate never locks a budget; while that
    # request is in flight the next one is refused.
    env.ledger.estimator.observe(KEY, to_micro(0.004))
    await env.check.set(env.ledger.keyspace.spend("key", KEY, _day()), to_micro(0.0085))
    first = await env.admit("x1", budget=(0.01, None))
    assert isinstance(first, Ticket)
    reserved = env.ledger.keyspace.reserved("key", KEY, _day())
    assert await env.check.get(reserved) == b"1000"
    refused = await env.admit("x2", budget=(0.01, None))
    assert isinstance(refused, Refusal)
    assert "reserved by requests in flight" in _message(refused)
    env.book("x1", first, 0.0004)
    await until(lambda: env.value("tokenbook_ledger_writes_total", result="written") == 1)
    # $0.0089 spent: $0.0011 left, the floor fits once more; then $0.0093 spent: it does not.
    second = await env.admit("x3", budget=(0.01, None))
    assert isinstance(second, Ticket)
    env.book("x3", second, 0.0004)
    await until(lambda: env.value("tokenbook_ledger_writes_total", result="written") == 2)
    used_up = await env.admit("x4", budget=(0.01, None))
    assert isinstance(used_up, Refusal)
    assert "is used up ($0.0093 spent of $0.01)" in _message(used_up)


async def test_unbooked_requests_are_written_and_counted(redis_url: str, tmp_path: Path) -> None:
    e = Env(redis_url, tmp_path, unbooked_timeout_s=0.2, budget_reservation_usd=0.5)
    e.start()
    try:
        booked = await e.admit("ok-1")
        lost = await e.admit("lost-1", budget=(10.0, None))
        assert isinstance(booked, Ticket)
        assert isinstance(lost, Ticket)
        e.book("ok-1", booked, 0.01)
        reserved = e.ledger.keyspace.reserved("key", KEY, _day())
        assert await e.check.get(reserved) == b"500000"
        await asyncio.sleep(0.3)
        assert e.ledger.sweep_unbooked() == 1
        await until(lambda: e.value("tokenbook_requests_unbooked_total", provider="openai") == 1)
        raw: list[Any] = await e.check.xrange(e.ledger.keyspace.ledger) or []
        entries = [f for _, f in raw]
        assert sorted(f[b"outcome"] for f in entries) == [b"ok", b"unbooked"]
        unbooked = next(f for f in entries if f[b"outcome"] == b"unbooked")
        assert unbooked[b"request_id"] == b"lost-1"
        assert b"cost_usd" not in unbooked
        assert not await e.check.exists(reserved)  # its reservation was released
    finally:
        await e.close()


async def test_booked_on_another_replica_is_not_unbooked(redis_url: str, tmp_path: Path) -> None:
    gate = Env(redis_url, tmp_path / "a", unbooked_timeout_s=0.1)
    meter = Env(redis_url, tmp_path / "b")
    gate.start()
    meter.start()
    try:
        t = await gate.admit("cross-1")
        assert isinstance(t, Ticket)
        meter.book("cross-1", t, 0.01)  # the meter stream landed on the other replica
        await until(lambda: meter.value("tokenbook_ledger_writes_total", result="written") == 1)
        await asyncio.sleep(0.15)
        assert gate.ledger.sweep_unbooked() == 1
        await until(lambda: gate.value("tokenbook_ledger_writes_total", result="duplicate") == 1)
        assert gate.value("tokenbook_requests_unbooked_total", provider="openai") == 0
    finally:
        await gate.close()
        await meter.close()


async def test_expired_holds_of_a_dead_replica_are_released(env: Env) -> None:
    ks = env.ledger.keyspace
    reserved = ks.reserved("agent", "crawler", _day())
    await env.check.set(reserved, 7000)
    await env.check.hset(ks.hold("dead.1"), mapping={reserved: 7000})
    await env.check.zadd(ks.holds, {"dead.1": 1000})  # deadline long past
    assert await env.ledger.release_expired_holds() == 1
    assert not await env.check.exists(reserved)
    assert env.value("tokenbook_budget_holds_expired_total") == 1


async def test_remaining_snapshot_for_the_gauge(env: Env) -> None:
    await env.ledger.store.set_budget("agent", "crawler", daily_usd=2.0, by="t")
    await env.ledger.controls.refresh()
    await env.check.set(env.ledger.keyspace.spend("agent", "crawler", _day()), to_micro(0.5))
    await env.admit("r1", budget=(None, 9.0))  # the gate notes the key's budget
    await env.ledger.refresh_remaining()
    rows = {(s, i, p): v for s, i, p, v in env.ledger.remaining()}
    assert rows[("agent", "crawler", "daily")] == pytest.approx(1.5)
    assert rows[("key", KEY, "monthly")] == pytest.approx(9.0)
