"""KeyRegistry against a real redis-server (the session's, flushed per test)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from redis.asyncio import Redis

from tests.support.redis_server import free_port
from tokenbook.attribution.codec import encode_record
from tokenbook.attribution.connect import redis_client
from tokenbook.attribution.keys import hash_key, parse_key_id, validate_attribution
from tokenbook.attribution.model import KIND_IMPORTED, KIND_TOKENBOOK
from tokenbook.attribution.registry import (
    DuplicateKey,
    KeyNotFound,
    KeyRegistry,
    RegistryUnavailable,
)

WHO = validate_attribution("alice", "search", "crawler", "indexing")


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = redis_client(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def registry(redis: Redis) -> KeyRegistry:
    return KeyRegistry(redis)


async def test_issue_then_get_by_hash_and_by_id(registry: KeyRegistry, redis: Redis) -> None:
    expires = datetime(2030, 1, 1, 12, tzinfo=UTC)
    key, record = await registry.issue(
        WHO,
        created_by="admin",
        expires_at=expires,
        budget_daily_usd=5.0,
        upstream_credential_ref="OPENAI_PROD",
    )
    assert parse_key_id(key) == record.key_id
    assert record.kind == KIND_TOKENBOOK
    assert record.attribution == WHO
    assert await registry.get_by_hash(hash_key(key)) == record
    assert await registry.get_by_id(record.key_id) == record

    # The layout is the documented contract, and the key itself is nowhere in Redis.
    stored = await redis.hgetall(f"tokenbook:key:{hash_key(key)}")
    assert stored[b"owner"] == b"alice"
    assert stored[b"expires_at"] == b"2030-01-01T12:00:00Z"
    assert stored[b"upstream_credential_ref"] == b"OPENAI_PROD"
    assert await redis.get(f"tokenbook:keyid:{record.key_id}") == hash_key(key).encode()
    secret = key[16:].encode()
    for name in await redis.keys("*"):
        assert secret not in name
    assert not any(secret in value for value in stored.values())


async def test_unknown_lookups_return_none(registry: KeyRegistry) -> None:
    assert await registry.get_by_hash(hash_key("nope")) is None
    assert await registry.get_by_hash("not-a-hash") is None
    assert await registry.get_by_id("abcdefghijk2") is None
    assert await registry.get_by_id("NOT AN ID") is None


async def test_writes_never_overwrite(registry: KeyRegistry) -> None:
    key, record = await registry.issue(WHO, created_by="admin")
    other = validate_attribution("mallory", "x", "y", "z")
    clash = replace(record, attribution=other)
    # The same hash again (a second issuance colliding with the first) is refused ...
    assert (await registry._write(hash_key(key), clash, event="issued"))[0] == 1
    # ... and so is another hash claiming a key_id already in the index.
    assert (await registry._write(hash_key("another"), clash, event="issued"))[0] == 2
    assert await registry.get_by_hash(hash_key(key)) == record
    assert await registry.get_by_hash(hash_key("another")) is None


async def test_import_and_duplicate_import_refused(registry: KeyRegistry) -> None:
    record = await registry.import_key(
        "sk-proj-live-secret", WHO, provider="openai", created_by="me"
    )
    assert record.kind == KIND_IMPORTED
    assert record.provider == "openai"
    assert await registry.get_by_hash(hash_key("sk-proj-live-secret")) == record

    other = validate_attribution("bob", "ads", "bidder", "realtime")
    with pytest.raises(DuplicateKey) as info:
        await registry.import_key("sk-proj-live-secret", other, provider="openai", created_by="me")
    assert info.value.key_id == record.key_id
    assert record.key_id in str(info.value)
    assert (await registry.get_by_id(record.key_id)) == record  # unchanged


async def test_import_refuses_tokenbook_keys(registry: KeyRegistry) -> None:
    key, _ = await registry.issue(WHO, created_by="admin")
    with pytest.raises(ValueError, match="tokenbook key"):
        await registry.import_key(key, WHO, provider="openai", created_by="me")


async def test_revoke_publishes_and_marks(registry: KeyRegistry, redis: Redis) -> None:
    key, record = await registry.issue(WHO, created_by="admin")
    pubsub = redis.pubsub()
    await pubsub.subscribe(registry.events_channel)
    assert (await pubsub.get_message(timeout=1))["type"] == "subscribe"

    revoked = await registry.revoke(record.key_id, by="secops")
    assert revoked.status == "revoked"
    assert revoked.revoked_by == "secops"
    assert revoked.denial_reason(datetime.now(UTC)) == "revoked"
    assert (await registry.get_by_hash(hash_key(key))) == revoked

    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
    assert message is not None
    assert orjson.loads(message["data"]) == {
        "type": "revoked",
        "key_hash": hash_key(key),
        "key_id": record.key_id,
    }
    await pubsub.aclose()  # type: ignore[no-untyped-call]

    again = await registry.revoke(record.key_id, by="someone-else")
    assert again.revoked_by == "secops"  # the first revocation is kept
    with pytest.raises(KeyNotFound):
        await registry.revoke("abcdefghijk2", by="secops")


async def test_list_keys_scans_with_a_literal_prefix(redis: Redis) -> None:
    glob = KeyRegistry(redis, prefix="tb[x]*:")
    plain = KeyRegistry(redis, prefix="tbx:")
    a = [(await glob.issue(WHO, created_by="a"))[1] for _ in range(3)]
    await plain.issue(WHO, created_by="b")
    listed = await glob.list_keys()
    assert {r.key_id for r in listed} == {r.key_id for r in a}
    assert len(await plain.list_keys()) == 1


async def test_malformed_hash_is_not_a_key(registry: KeyRegistry, redis: Redis) -> None:
    key, _record = await registry.issue(WHO, created_by="admin")
    await redis.hdel(f"tokenbook:key:{hash_key(key)}", "owner")
    assert await registry.get_by_hash(hash_key(key)) is None
    assert await registry.list_keys() == []
    assert len(await registry.raw_entries()) == 1
    await redis.set(f"tokenbook:key:{hash_key('x')}", "a string")
    assert await registry.get_by_hash(hash_key("x")) is None


async def test_issue_validates_before_writing(registry: KeyRegistry, redis: Redis) -> None:
    with pytest.raises(ValueError, match="budget_daily_usd"):
        await registry.issue(WHO, created_by="admin", budget_daily_usd=-1)
    with pytest.raises(ValueError, match="admin identity"):
        await registry.issue(WHO, created_by="")
    assert await redis.dbsize() == 0


async def test_expired_record_round_trips(registry: KeyRegistry) -> None:
    past = datetime.now(UTC) - timedelta(days=1)
    key, record = await registry.issue(WHO, created_by="admin", expires_at=past)
    fetched = await registry.get_by_hash(hash_key(key))
    assert fetched is not None
    assert fetched.denial_reason(datetime.now(UTC)) == "expired"
    assert encode_record(fetched) == encode_record(record)


async def test_unreachable_redis_raises_registry_unavailable() -> None:
    client = redis_client(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    registry = KeyRegistry(client)
    try:
        with pytest.raises(RegistryUnavailable, match="unreachable") as info:
            await asyncio.wait_for(registry.get_by_hash(hash_key("k")), 5)
        assert "TOKENBOOK_REDIS_URL" in str(info.value)
        with pytest.raises(RegistryUnavailable):
            await registry.issue(WHO, created_by="admin")
    finally:
        await client.aclose()
