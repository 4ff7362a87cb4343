"""KeyResolver: the gate's cache, its invalidation over pub/sub, and Redis outages.

Everything runs against real redis-server processes; "replicas" are resolvers with their own
Redis connections, as separate tokenbook processes would have.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis

from tests.support.redis_server import RedisServer
from tokenbook.attribution.cache import KeyResolver
from tokenbook.attribution.connect import redis_client
from tokenbook.attribution.keys import hash_key, validate_attribution
from tokenbook.attribution.model import KeyRecord
from tokenbook.attribution.registry import KeyRegistry, RegistryUnavailable

WHO = validate_attribution("alice", "search", "crawler", "indexing")


class CountingRegistry(KeyRegistry):
    """The real registry, counting lookups and optionally holding them until released."""

    def __init__(self, redis: Redis) -> None:
        super().__init__(redis)
        self.lookups = 0
        self.gate: asyncio.Event | None = None

    async def get_by_hash(self, key_hash: str) -> KeyRecord | None:
        self.lookups += 1
        if self.gate is not None:
            await self.gate.wait()
        return await super().get_by_hash(key_hash)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Replica:
    """One tokenbook replica's view: its own client, registry and resolver."""

    client: Redis
    registry: CountingRegistry
    resolver: KeyResolver
    task: asyncio.Task[None] | None = None


async def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> float:
    """Poll ``check`` every millisecond; the seconds it took, or AssertionError."""
    start = time.perf_counter()
    while not check():
        if time.perf_counter() - start > timeout_s:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(0.001)
    return time.perf_counter() - start


@contextlib.asynccontextmanager
async def replica(url: str, *, subscribe: bool = True, **options: object) -> AsyncIterator[Replica]:
    client = redis_client(url, timeout_s=0.5)
    registry = CountingRegistry(client)
    defaults: dict[str, object] = {"ping_interval_s": 0.5, "reconnect_backoff_s": (0.02, 0.2)}
    resolver = KeyResolver(registry, client, **{**defaults, **options})  # type: ignore[arg-type]
    r = Replica(client, registry, resolver)
    if subscribe:
        r.task = asyncio.create_task(resolver.run_invalidation())
        await eventually(lambda: resolver.healthy)
    try:
        yield r
    finally:
        if r.task is not None:
            r.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await r.task
        await client.aclose()


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[KeyRegistry]:
    client = redis_client(redis_url)
    yield KeyRegistry(client)
    await client.aclose()


async def test_hit_costs_microseconds_and_no_redis(admin: KeyRegistry, redis_url: str) -> None:
    key, record = await admin.issue(WHO, created_by="admin")
    async with replica(redis_url) as r:
        assert await r.resolver.resolve(key) == record
        n = 20_000
        start = time.perf_counter()
        for _ in range(n):
            await r.resolver.resolve(key)
        per_hit_us = (time.perf_counter() - start) / n * 1e6
        assert r.registry.lookups == 1
        assert r.resolver.stats()["hits"] == n
        assert per_hit_us < 20, f"a cache hit took {per_hit_us:.1f} µs"
        assert r.resolver.lookup_cached(key) == (True, record)


async def test_concurrent_misses_share_one_lookup(admin: KeyRegistry, redis_url: str) -> None:
    key, record = await admin.issue(WHO, created_by="admin")
    async with replica(redis_url) as r:
        r.registry.gate = asyncio.Event()
        waiters = [asyncio.create_task(r.resolver.resolve(key)) for _ in range(50)]
        await asyncio.sleep(0.01)
        assert r.resolver.stats()["inflight"] == 1
        r.registry.gate.set()
        assert await asyncio.gather(*waiters) == [record] * 50
        assert r.registry.lookups == 1


async def test_cancelled_caller_does_not_cancel_the_shared_lookup(
    admin: KeyRegistry, redis_url: str
) -> None:
    key, record = await admin.issue(WHO, created_by="admin")
    async with replica(redis_url) as r:
        r.registry.gate = asyncio.Event()
        first = asyncio.create_task(r.resolver.resolve(key))
        second = asyncio.create_task(r.resolver.resolve(key))
        await asyncio.sleep(0.01)
        first.cancel()
        r.registry.gate.set()
        assert await second == record
        assert first.cancelled()
        assert r.registry.lookups == 1


async def test_unknown_keys_are_cached_briefly(redis_url: str) -> None:
    clock = Clock()
    async with replica(redis_url, clock=clock, negative_ttl_s=2.0) as r:
        assert await r.resolver.resolve("sk-unknown") is None
        assert await r.resolver.resolve("sk-unknown") is None
        assert r.registry.lookups == 1
        assert r.resolver.stats()["negative_hits"] == 1
        clock.now += 2.01
        assert await r.resolver.resolve("sk-unknown") is None
        assert r.registry.lookups == 2


async def test_ttl_expiry_with_injected_clock(
    admin: KeyRegistry, redis_url: str, redis_server: RedisServer
) -> None:
    key, _ = await admin.issue(WHO, created_by="admin")
    clock = Clock()
    async with replica(redis_url, clock=clock, ttl_s=60.0) as r:
        first = await r.resolver.resolve(key)
        assert first is not None
        assert first.attribution.owner == "alice"
        # An edit made behind the registry's back (no event): only the TTL can reveal it.
        raw = redis_client(redis_url)
        await raw.hset(f"tokenbook:key:{hash_key(key)}", "owner", "bob")
        await raw.aclose()
        clock.now += 59.9
        cached = await r.resolver.resolve(key)
        assert cached is not None
        assert cached.attribution.owner == "alice"
        clock.now += 0.2
        fresh = await r.resolver.resolve(key)
        assert fresh is not None
        assert fresh.attribution.owner == "bob"
        assert r.registry.lookups == 2


async def test_without_a_live_subscription_entries_live_only_degraded_ttl(
    admin: KeyRegistry, redis_url: str
) -> None:
    key, _ = await admin.issue(WHO, created_by="admin")
    clock = Clock()
    async with replica(redis_url, subscribe=False, clock=clock, degraded_ttl_s=2.0) as r:
        assert not r.resolver.healthy
        await r.resolver.resolve(key)
        clock.now += 1.9
        await r.resolver.resolve(key)
        assert r.registry.lookups == 1
        clock.now += 0.2
        await r.resolver.resolve(key)
        assert r.registry.lookups == 2


async def test_revocation_reaches_another_replica_within_a_second(
    admin: KeyRegistry, redis_url: str
) -> None:
    key, record = await admin.issue(WHO, created_by="admin")
    async with replica(redis_url) as a, replica(redis_url) as b:
        for r in (a, b):
            assert await r.resolver.resolve(key) == record
            assert r.resolver.lookup_cached(key) == (True, record)
        await admin.revoke(record.key_id, by="secops")
        took = await eventually(lambda: not b.resolver.lookup_cached(key)[0], timeout_s=1.0)
        assert took < 1.0
        await eventually(lambda: not a.resolver.lookup_cached(key)[0], timeout_s=1.0)
        revoked = await b.resolver.resolve(key)
        assert revoked is not None
        assert revoked.status == "revoked"
        assert b.resolver.stats()["invalidations"] >= 1


async def test_import_drops_a_negative_entry_on_other_replicas(
    admin: KeyRegistry, redis_url: str
) -> None:
    async with replica(redis_url, negative_ttl_s=30.0) as r:
        assert await r.resolver.resolve("sk-provider-key") is None
        record = await admin.import_key("sk-provider-key", WHO, provider="openai", created_by="a")
        await eventually(lambda: not r.resolver.lookup_cached("sk-provider-key")[0], 1.0)
        assert await r.resolver.resolve("sk-provider-key") == record


async def test_lookup_racing_an_invalidation_is_not_cached(
    admin: KeyRegistry, redis_url: str
) -> None:
    key, record = await admin.issue(WHO, created_by="admin")
    async with replica(redis_url) as r:
        r.registry.gate = asyncio.Event()
        pending = asyncio.create_task(r.resolver.resolve(key))
        await asyncio.sleep(0.01)
        r.resolver.invalidate(hash_key(key))  # as if a revocation event arrived meanwhile
        r.registry.gate.set()
        assert await pending == record  # its callers get the answer ...
        assert r.resolver.lookup_cached(key) == (False, None)  # ... but it is not kept


async def test_unreadable_event_clears_everything(admin: KeyRegistry, redis_url: str) -> None:
    key, _ = await admin.issue(WHO, created_by="admin")
    async with replica(redis_url) as r:
        await r.resolver.resolve(key)
        clears = r.resolver.stats()["clears"]
        await r.client.publish("tokenbook:events", b"\xff not json")
        await eventually(lambda: r.resolver.stats()["clears"] > clears, 1.0)
        assert r.resolver.stats()["entries"] == 0


async def test_cache_is_bounded(admin: KeyRegistry, redis_url: str) -> None:
    keys = [(await admin.issue(WHO, created_by="admin"))[0] for _ in range(5)]
    async with replica(redis_url, max_entries=3) as r:
        for key in keys:
            await r.resolver.resolve(key)
        await r.resolver.resolve(keys[2])  # most recently used survives the next eviction
        await r.resolver.resolve("unknown")
        stats = r.resolver.stats()
        assert stats["entries"] == 3
        assert stats["evictions"] == 3
        assert r.resolver.lookup_cached(keys[2])[0]
        assert not r.resolver.lookup_cached(keys[0])[0]


async def _issue(url: str, n: int) -> list[tuple[str, KeyRecord]]:
    client = redis_client(url)
    try:
        registry = KeyRegistry(client)
        return [await registry.issue(WHO, created_by="admin") for _ in range(n)]
    finally:
        await client.aclose()


async def _revoke(url: str, key_id: str) -> None:
    client = redis_client(url)
    try:
        await KeyRegistry(client).revoke(key_id, by="secops")
    finally:
        await client.aclose()


async def _timed(aw: Awaitable[object]) -> float:
    start = time.perf_counter()
    with contextlib.suppress(RegistryUnavailable):
        await aw
    return time.perf_counter() - start


async def test_redis_outage_and_recovery() -> None:
    async with RedisServer(persistence=True) as server:
        (cached_key, cached), (other_key, _) = await _issue(server.url, 2)
        async with replica(server.url, lookup_timeout_s=1.0) as r:
            assert await r.resolver.resolve(cached_key) == cached
            resubscriptions = r.resolver.stats()["resubscriptions"]

            server.stop()
            await eventually(lambda: not r.resolver.healthy, 5.0)
            # Known keys keep working from the cache, without Redis ...
            assert await r.resolver.resolve(cached_key) == cached
            # ... unknown ones cannot be decided: the gate gets RegistryUnavailable, fast.
            with pytest.raises(RegistryUnavailable):
                await r.resolver.resolve(other_key)
            assert await _timed(r.resolver.resolve(other_key)) < 1.5
            assert r.resolver.stats()["errors"] >= 2

            server.start()  # same port, data kept (persistence)
            await eventually(lambda: r.resolver.healthy, 5.0)
            stats = r.resolver.stats()
            assert stats["resubscriptions"] > resubscriptions
            # Events may have been missed while down, so the cache was cleared on resubscribe.
            assert r.resolver.lookup_cached(cached_key) == (False, None)
            assert await r.resolver.resolve(cached_key) == cached

            # And the new subscription really delivers revocations.
            await _revoke(server.url, cached.key_id)
            await eventually(lambda: not r.resolver.lookup_cached(cached_key)[0], 1.0)
            again = await r.resolver.resolve(cached_key)
            assert again is not None
            assert again.status == "revoked"


async def test_invalidation_survives_a_redis_crash() -> None:
    async with RedisServer() as server, replica(server.url) as r:
        server.stop(kill=True)
        await eventually(lambda: not r.resolver.healthy, 5.0)
        await asyncio.sleep(0.3)  # several failed reconnect attempts
        assert r.task is not None
        assert not r.task.done()
        server.start()
        await eventually(lambda: r.resolver.healthy, 5.0)
