"""The key registry in Redis (redis.asyncio): issue, import, look up, list, revoke.

Layout (prefix configurable, default ``tokenbook:``; DESIGN.md "Keys and the registry")::

    <prefix>key:<sha256hex>   hash    one key's record (see `codec`); the key itself is never stored
    <prefix>keyid:<key_id>    string  -> sha256hex, so admins can address a key by its public id
    <prefix>events            pub/sub {"type": "revoked"|"issued"|"imported"|"changed",
                                       "key_hash": ..., "key_id": ...}: every replica's
                                       `KeyResolver` drops its cached entry at once

Every write is one Lua script, so the hash, the index and the event change together and a crash
cannot leave a revoked key without its event. Issuance never overwrites an existing hash. (The
scripts touch two keys, so on Redis Cluster both would need one hash tag: not supported yet.)

Errors (all `RegistryError`)::

    RegistryError
    ├── RegistryUnavailable   Redis down, timed out, or refusing commands (ACL, read-only replica).
    │                         Gate: cached keys keep working, uncached follow ``registry_down``.
    │                         CLI: exit 1.
    ├── KeyNotFound           no key with that key_id (admin verbs only). CLI: exit 1.
    └── DuplicateKey          importing a provider key that is already registered. CLI: exit 1.

A hash that cannot be decoded (`codec.MalformedRecord`, e.g. written by hand without an owner) is
not a usable key: lookups return None for it (the gate treats it as unknown) and ``keys audit``
lists it.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import redis.exceptions
from redis.asyncio import Redis

from tokenbook.attribution.codec import (
    MalformedRecord,
    decode_record,
    encode_record,
    normalize,
)
from tokenbook.attribution.keys import (
    generate_key,
    hash_key,
    imported_key_id,
    is_key_id,
    parse_key_id,
    validate_actor,
    validate_provider,
    validate_ref,
)
from tokenbook.attribution.model import (
    KIND_IMPORTED,
    KIND_TOKENBOOK,
    STATUS_ACTIVE,
    Attribution,
    KeyRecord,
    format_time,
)

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "tokenbook:"

_HASH_HEX = re.compile(r"[0-9a-f]{64}")

# KEYS[1] key hash, KEYS[2] keyid index.
# ARGV[1] sha256hex, ARGV[2] events channel, ARGV[3] event, ARGV[4..] field/value pairs.
# Returns {0, ""} written, {1, existing key_id} hash exists, {2, ""} key_id taken by another hash.
_WRITE_NEW = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {1, redis.call('HGET', KEYS[1], 'key_id') or ''}
end
local indexed = redis.call('GET', KEYS[2])
if indexed and indexed ~= ARGV[1] then
  return {2, ''}
end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('SET', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return {0, ''}
"""

# KEYS[1] keyid index, KEYS[2] key hash.
# ARGV[1] sha256hex, ARGV[2] events channel, ARGV[3] event, ARGV[4] revoked_at, ARGV[5] revoked_by.
# Returns the hash after revocation (HGETALL), or false if the index no longer points at it.
# Revoking twice keeps the first revoked_at/by but publishes again: harmless, and it lets an
# admin re-broadcast after an outage.
_REVOKE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('EXISTS', KEYS[2]) == 0 then
  return false
end
if redis.call('HGET', KEYS[2], 'status') ~= 'revoked' then
  redis.call('HSET', KEYS[2], 'status', 'revoked', 'revoked_at', ARGV[4], 'revoked_by', ARGV[5])
end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return redis.call('HGETALL', KEYS[2])
"""

_ISSUE_ATTEMPTS = 5  # key_id collisions are a 2^-60 event; retrying a few times is plenty


class RegistryError(Exception):
    """Base of every error the registry raises."""


class RegistryUnavailable(RegistryError):
    """Redis could not answer. The message says what to check."""


class KeyNotFound(RegistryError, LookupError):
    """No key with that key_id."""


class DuplicateKey(RegistryError):
    """The key is already registered (``key_id`` says under which id)."""

    def __init__(self, key_id: str, message: str) -> None:
        super().__init__(message)
        self.key_id = key_id


@dataclass(frozen=True, slots=True)
class RawEntry:
    """One ``<prefix>key:*`` entry as stored, for audits. ``fields`` is None if not a hash."""

    redis_key: str
    key_hash: str
    fields: dict[str, str] | None


def describe_redis(client: Redis) -> str:
    """``redis://host:port/db`` of a client, without credentials, for error messages."""
    kw = client.connection_pool.connection_kwargs
    if "path" in kw:
        return f"unix://{kw['path']}"
    return f"redis://{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


def _glob_escape(text: str) -> str:
    """Escape SCAN MATCH metacharacters, so a prefix like ``tb[1]:`` is matched literally."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _pairs(flat: list[Any]) -> dict[str, str]:
    return {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}


def _check_money(name: str, value: float | None) -> float | None:
    if value is not None and (not math.isfinite(value) or value < 0):
        raise ValueError(f"{name} must be a non-negative number, not {value!r}")
    return value


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class KeyRegistry:
    """Admin and lookup operations on the registry. Holds no cache (see `KeyResolver`)."""

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._redis = redis
        self.prefix = prefix
        self.events_channel = f"{prefix}events"
        self._clock = clock
        self._write_new = redis.register_script(_WRITE_NEW)
        self._revoke = redis.register_script(_REVOKE)
        self._where = describe_redis(redis)

    def key_name(self, key_hash: str) -> str:
        """Redis key of a record."""
        return f"{self.prefix}key:{key_hash}"

    def keyid_name(self, key_id: str) -> str:
        """Redis key of the key_id -> hash index entry."""
        return f"{self.prefix}keyid:{key_id}"

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Turn redis-py's errors into `RegistryUnavailable` with a message that says what to do."""
        try:
            yield
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            raise RegistryUnavailable(
                f"Redis at {self._where} is unreachable while {doing}"
                f" ({exc or type(exc).__name__}):"
                " start it, or point --redis-url / TOKENBOOK_REDIS_URL at a running Redis"
            ) from exc
        except redis.exceptions.RedisError as exc:
            raise RegistryUnavailable(
                f"Redis at {self._where} refused {doing} ({exc}):"
                " check that it is a writable primary and that the user's ACL allows it"
            ) from exc

    # -- writes ---------------------------------------------------------------------------

    async def issue(
        self,
        attribution: Attribution,
        *,
        created_by: str,
        expires_at: datetime | None = None,
        budget_daily_usd: float | None = None,
        budget_monthly_usd: float | None = None,
        upstream_credential_ref: str | None = None,
    ) -> tuple[str, KeyRecord]:
        """Create a tokenbook key. Returns the full key (show it once, then forget it) and its
        record. ``attribution`` must come from `validate_attribution`."""
        for _ in range(_ISSUE_ATTEMPTS):
            key, key_id = generate_key()
            record = self._new_record(
                key_id,
                attribution,
                kind=KIND_TOKENBOOK,
                provider=None,
                created_by=created_by,
                expires_at=expires_at,
                budget_daily_usd=budget_daily_usd,
                budget_monthly_usd=budget_monthly_usd,
                upstream_credential_ref=upstream_credential_ref,
            )
            code, _ = await self._write(hash_key(key), record, event="issued")
            if code == 0:
                return key, record
        raise RegistryError(f"could not find a free key_id in {_ISSUE_ATTEMPTS} attempts")

    async def import_key(
        self,
        provider_key: str,
        attribution: Attribution,
        *,
        provider: str | None,
        created_by: str,
        expires_at: datetime | None = None,
        budget_daily_usd: float | None = None,
        budget_monthly_usd: float | None = None,
    ) -> KeyRecord:
        """Register a provider's own key, so traffic still carrying it is attributed.

        The key_id is derived from the key's hash: importing the same key again is refused with
        `DuplicateKey`, naming the existing key_id.
        """
        if not provider_key or provider_key != provider_key.strip():
            raise ValueError("the provider key is empty or has surrounding whitespace")
        if parse_key_id(provider_key) is not None:
            raise ValueError(
                "that is a tokenbook key, not a provider key: it is already registered"
            )
        if provider is not None:
            validate_provider(provider)
        key_hash = hash_key(provider_key)
        record = self._new_record(
            imported_key_id(key_hash),
            attribution,
            kind=KIND_IMPORTED,
            provider=provider,
            created_by=created_by,
            expires_at=expires_at,
            budget_daily_usd=budget_daily_usd,
            budget_monthly_usd=budget_monthly_usd,
            upstream_credential_ref=None,  # an imported key *is* the upstream credential
        )
        code, existing = await self._write(key_hash, record, event="imported")
        if code == 1:
            key_id = existing or record.key_id
            raise DuplicateKey(key_id, f"this provider key is already registered as {key_id}")
        if code == 2:
            raise RegistryError(
                f"key_id {record.key_id} is already used by another key: please report this"
            )
        return record

    def _new_record(
        self,
        key_id: str,
        attribution: Attribution,
        *,
        kind: str,
        provider: str | None,
        created_by: str,
        expires_at: datetime | None,
        budget_daily_usd: float | None,
        budget_monthly_usd: float | None,
        upstream_credential_ref: str | None,
    ) -> KeyRecord:
        if upstream_credential_ref is not None:
            validate_ref("upstream_credential_ref", upstream_credential_ref)
        draft = KeyRecord(
            key_id=key_id,
            attribution=attribution,
            status=STATUS_ACTIVE,
            kind=kind,
            created_at=self._clock(),
            created_by=validate_actor(created_by),
            expires_at=_utc(expires_at),
            budget_daily_usd=_check_money("budget_daily_usd", budget_daily_usd),
            budget_monthly_usd=_check_money("budget_monthly_usd", budget_monthly_usd),
            upstream_credential_ref=upstream_credential_ref,
            provider=provider,
        )
        # Round-trip through the codec so the returned record is exactly what a lookup will
        # return (timestamps at second precision) and a bad attribution fails before writing.
        return decode_record(encode_record(draft))

    async def _write(self, key_hash: str, record: KeyRecord, *, event: str) -> tuple[int, str]:
        fields = encode_record(record)
        message = orjson.dumps({"type": event, "key_hash": key_hash, "key_id": record.key_id})
        args: list[str | bytes] = [key_hash, self.events_channel, message]
        for name, value in fields.items():
            args += [name, value]
        with self._errors("writing a key"):
            result = await self._write_new(
                keys=[self.key_name(key_hash), self.keyid_name(record.key_id)], args=args
            )
        return int(result[0]), _text(result[1])

    async def revoke(self, key_id: str, *, by: str) -> KeyRecord:
        """Mark a key revoked and tell every replica (``revoked`` event). Idempotent."""
        validate_actor(by)
        for _ in range(2):  # the index may move between the GET and the script; retry once
            key_hash = await self._hash_for_id(key_id)
            if key_hash is None:
                break
            message = orjson.dumps({"type": "revoked", "key_hash": key_hash, "key_id": key_id})
            with self._errors("revoking a key"):
                result = await self._revoke(
                    keys=[self.keyid_name(key_id), self.key_name(key_hash)],
                    args=[key_hash, self.events_channel, message, format_time(self._clock()), by],
                )
            if result:
                return decode_record(_pairs(list(result)))
        raise KeyNotFound(f"no key with id {key_id}")

    async def publish_change(self, key_hash: str) -> None:
        """Tell every replica to drop its cached entry for ``key_hash`` (after any edit)."""
        message = orjson.dumps({"type": "changed", "key_hash": key_hash})
        with self._errors("publishing a change"):
            await self._redis.publish(self.events_channel, message)

    # -- reads ----------------------------------------------------------------------------

    async def get_by_hash(self, key_hash: str) -> KeyRecord | None:
        """The record for a key hash; None if unknown or malformed (malformed is logged)."""
        if _HASH_HEX.fullmatch(key_hash) is None:
            return None
        with self._errors("looking up a key"):
            try:
                fields = await self._redis.hgetall(self.key_name(key_hash))
            except redis.exceptions.ResponseError as exc:
                if "WRONGTYPE" not in str(exc):
                    raise
                log.warning("registry entry %s is not a hash: run `tokenbook keys audit`", key_hash)
                return None
        if not fields:
            return None
        try:
            return decode_record(fields)
        except MalformedRecord as exc:
            log.warning("registry entry is malformed (%s): run `tokenbook keys audit`", exc)
            return None

    async def get_by_id(self, key_id: str, *, strict: bool = False) -> KeyRecord | None:
        """The record for a key_id, or None. ``strict``: raise `MalformedRecord` instead of
        returning None when the record exists but cannot be decoded (for ``keys show``)."""
        key_hash = await self._hash_for_id(key_id)
        if key_hash is None:
            return None
        if not strict:
            return await self.get_by_hash(key_hash)
        with self._errors("looking up a key"):
            fields = await self._redis.hgetall(self.key_name(key_hash))
        return decode_record(fields) if fields else None

    async def _hash_for_id(self, key_id: str) -> str | None:
        if not is_key_id(key_id):
            return None
        with self._errors("looking up a key id"):
            value = await self._redis.get(self.keyid_name(key_id))
        return None if value is None else _text(value)

    async def list_keys(self) -> list[KeyRecord]:
        """Every decodable record, oldest first (SCAN, never KEYS); see `raw_entries` for all."""
        records = []
        for entry in await self.raw_entries():
            if entry.fields:
                try:
                    records.append(decode_record(entry.fields))
                except MalformedRecord:
                    continue
        records.sort(key=lambda r: (r.created_at, r.key_id))
        return records

    async def raw_entries(self) -> list[RawEntry]:
        """Every ``<prefix>key:*`` entry as stored, including ones that do not decode."""
        names = await self._scan(f"{self.prefix}key:")
        entries: list[RawEntry] = []
        start = len(self.prefix) + len("key:")
        for chunk in _chunks(names, 500):
            with self._errors("listing keys"):
                pipe = self._redis.pipeline(transaction=False)
                for name in chunk:
                    pipe.hgetall(name)
                results = await pipe.execute(raise_on_error=False)
            for name, result in zip(chunk, results, strict=True):
                fields = None if isinstance(result, Exception) else normalize(result)
                entries.append(RawEntry(name, name[start:], fields))
        return entries

    async def raw_index(self) -> dict[str, str | None]:
        """Every ``<prefix>keyid:*`` entry: key_id -> hash (None if not a string)."""
        names = await self._scan(f"{self.prefix}keyid:")
        start = len(self.prefix) + len("keyid:")
        index: dict[str, str | None] = {}
        for chunk in _chunks(names, 500):
            with self._errors("listing keys"):
                pipe = self._redis.pipeline(transaction=False)
                for name in chunk:
                    pipe.get(name)
                results = await pipe.execute(raise_on_error=False)
            for name, result in zip(chunk, results, strict=True):
                ok = result is not None and not isinstance(result, Exception)
                index[name[start:]] = _text(result) if ok else None
        return index

    async def _scan(self, prefix: str) -> list[str]:
        found: set[str] = set()  # SCAN may return an element more than once
        with self._errors("listing keys"):
            async for name in self._redis.scan_iter(match=_glob_escape(prefix) + "*", count=1000):
                found.add(_text(name))
        return sorted(found)


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
