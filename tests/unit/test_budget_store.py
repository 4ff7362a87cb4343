"""BudgetStore (admin operations) and Controls (each replica's cache) on a real redis-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as aioredis

from tokenbook.attribution.model import Attribution
from tokenbook.attribution.registry import KeyRegistry
from tokenbook.ledger.budgets import Budget, BudgetStore, NoSuchKey
from tokenbook.ledger.controls import Controls
from tokenbook.ledger.keyspace import Keyspace


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.from_url(redis_url)
    yield c
    await c.aclose()


async def test_set_keeps_what_is_not_given_and_none_clears(client: aioredis.Redis) -> None:
    store = BudgetStore(client)
    b = await store.set_budget("agent", "crawler", daily_usd=5.0, by="alice")
    assert (b.daily_usd, b.monthly_usd, b.updated_by) == (5.0, None, "alice")
    b = await store.set_budget("agent", "crawler", monthly_usd=100.0, by="bob")
    assert (b.daily_usd, b.monthly_usd) == (5.0, 100.0)
    b = await store.set_budget("agent", "crawler", daily_usd=None, by="bob")
    assert (b.daily_usd, b.monthly_usd) == (None, 100.0)
    assert [x.ident for x in await store.budgets()] == ["crawler"]
    assert await store.unset_budget("agent", "crawler", by="bob")
    assert not await store.unset_budget("agent", "crawler", by="bob")
    assert await store.budgets() == []


async def test_bad_scope_names_and_amounts_are_refused(client: aioredis.Redis) -> None:
    store = BudgetStore(client)
    with pytest.raises(ValueError, match="scope"):
        await store.set_budget("org", "x", daily_usd=1.0, by="a")
    with pytest.raises(ValueError, match="must match"):
        await store.set_budget("agent", "Bad Name", daily_usd=1.0, by="a")
    with pytest.raises(ValueError, match="non-negative"):
        await store.set_budget("team", "search", daily_usd=-1.0, by="a")
    with pytest.raises(ValueError, match="key id"):
        await store.set_budget("key", "nope", daily_usd=1.0, by="a")


async def test_key_budgets_live_in_the_key_hash_and_invalidate_caches(
    client: aioredis.Redis,
) -> None:
    registry = KeyRegistry(client)
    _, record = await registry.issue(
        Attribution("alice", "search", "crawler", "indexing"), created_by="t"
    )
    pubsub = client.pubsub()
    await pubsub.subscribe(registry.events_channel)
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    store = BudgetStore(client)
    b = await store.set_budget("key", record.key_id, daily_usd=2.5, by="t")
    assert b == Budget("key", record.key_id, 2.5, None)
    # the registry reads it back, and every key cache was told to drop its entry
    fresh = await registry.get_by_id(record.key_id)
    assert fresh is not None
    assert fresh.budget_daily_usd == 2.5
    msg = await pubsub.get_message(timeout=1)
    assert msg is not None
    assert orjson.loads(msg["data"])["type"] == "changed"
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    await store.set_budget("key", record.key_id, daily_usd=None, by="t")
    fresh = await registry.get_by_id(record.key_id)
    assert fresh is not None
    assert fresh.budget_daily_usd is None
    with pytest.raises(NoSuchKey):
        await store.set_budget("key", "aaaaaaaaaaaa", daily_usd=1.0, by="t")


async def test_suspend_resume_list(client: aioredis.Redis) -> None:
    store = BudgetStore(client)
    s = await store.suspend("crawler", by="oncall", reason="loop")
    assert s.by == "oncall"
    assert [x.agent for x in await store.suspended()] == ["crawler"]
    assert await store.resume("crawler")
    assert not await store.resume("crawler")
    assert await store.suspended() == []


async def _until_applied(check: object, within_s: float = 3.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        if check():  # type: ignore[operator]
            return time.monotonic() - started
        await asyncio.sleep(0.005)
    raise AssertionError("change not applied in time")


async def test_controls_follow_changes_within_a_second(redis_url: str) -> None:
    admin = aioredis.from_url(redis_url)
    replica = aioredis.from_url(redis_url)
    store = BudgetStore(admin)
    controls = Controls(BudgetStore(replica), replica)
    task = asyncio.create_task(controls.run())
    try:
        await _until_applied(lambda: controls.loaded)
        await store.suspend("crawler", by="oncall")
        took = await _until_applied(lambda: controls.suspension("crawler") is not None)
        print(f"\nsuspension applied after {took * 1000:.1f} ms (pub/sub)")
        assert took < 1.0
        await store.set_budget("workload", "indexing", daily_usd=3.0, by="t")
        await _until_applied(lambda: controls.budget("workload", "indexing") is not None)
        # A change whose event is lost (written by hand, no PUBLISH) still arrives through the
        # version poll (every 0.5 s).
        ks = Keyspace()
        await admin.hdel(ks.suspended, "crawler")
        await admin.incr(ks.control_version)
        took = await _until_applied(lambda: controls.suspension("crawler") is None)
        print(f"lost event: applied after {took * 1000:.0f} ms (version poll)")
        assert took < 1.0
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await admin.aclose()
        await replica.aclose()


async def test_malformed_budget_fields_are_ignored(client: aioredis.Redis) -> None:
    ks = Keyspace()
    await client.hset(ks.budgets, mapping={"agent:x": "not json", "team:t": '{"daily_usd": -3}'})
    await client.hset(ks.budgets, "agent:ok", orjson.dumps({"daily_usd": 1}))
    state = await BudgetStore(client).load()
    assert list(state.budgets) == [("agent", "ok")]
