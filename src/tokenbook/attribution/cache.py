"""The gate's key resolver: a local cache in front of the registry, kept honest by pub/sub.

Hot path: `KeyResolver.resolve` on a cache hit is a SHA-256, a dict lookup and a clock read; it
never awaits Redis. A miss asks Redis once per key hash however many requests are waiting for
it (single flight), and unknown keys are cached briefly too (``negative_ttl_s``), so a client
hammering with a bad key costs one Redis round trip per ``negative_ttl_s``, not one per request.

Consistency with revocations (DESIGN.md: "effective on every replica within a second"):

- `run_invalidation` subscribes to ``<prefix>events`` and drops the entry each event names.
- Events published while this replica was not subscribed are lost, so every (re)subscription —
  including the ones redis-py performs silently when it reconnects the pub/sub connection —
  clears the whole cache; we act on the server's ``subscribe`` confirmation, which arrives after
  every resubscription whoever triggered it.
- A lookup that was in flight while an event (or a clear) arrived may have read the old record:
  its result is returned to its callers but not cached (an epoch counter detects this).
- While the subscription is not live, new entries are cached for at most ``degraded_ttl_s``, so
  a broken subscription bounds staleness instead of stretching it to ``ttl_s``. Entries cached
  while it was live keep their TTL: that is what lets known keys keep working through a Redis
  outage (DESIGN.md "Failure policy").

Failure: when Redis cannot answer and nothing is cached, `resolve` raises `RegistryUnavailable`;
the gate applies its ``registry_down`` policy. Stale entries are never served past their TTL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from tokenbook.attribution.keys import hash_key
from tokenbook.attribution.model import KeyRecord
from tokenbook.attribution.registry import KeyRegistry, RegistryUnavailable

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Entry:
    record: KeyRecord | None  # None: the registry does not know this key (negative entry)
    expires: float  # on the resolver's clock


class KeyResolver:
    """Resolve presented keys to records, through a bounded TTL + LRU cache."""

    def __init__(
        self,
        registry: KeyRegistry,
        redis: Redis,
        *,
        ttl_s: float = 60.0,
        negative_ttl_s: float = 2.0,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        degraded_ttl_s: float = 2.0,
        lookup_timeout_s: float = 1.0,
        ping_interval_s: float = 5.0,
        reconnect_backoff_s: tuple[float, float] = (0.05, 2.0),
    ) -> None:
        """``redis`` is used only for the pub/sub subscription (it takes one connection of its
        pool); lookups go through ``registry``. ``lookup_timeout_s`` bounds a miss even if the
        client has no socket timeout; ``ping_interval_s`` is how often an idle subscription is
        probed, so a silently dead connection is noticed within about twice that."""
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._registry = registry
        self._redis = redis
        self._ttl = ttl_s
        self._negative_ttl = negative_ttl_s
        self._degraded_ttl = min(degraded_ttl_s, ttl_s)
        self._max_entries = max_entries
        self._clock = clock
        self._lookup_timeout = lookup_timeout_s
        self._ping_interval = ping_interval_s
        self._backoff_min, self._backoff_max = reconnect_backoff_s
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[KeyRecord | None]] = {}
        self._epoch = 0  # bumped by every invalidation: in-flight lookups must not cache
        self._subscribed = False
        self._pubsub: PubSub | None = None
        self._hits = 0
        self._misses = 0
        self._negative_hits = 0
        self._invalidations = 0
        self._clears = 0
        self._evictions = 0
        self._errors = 0
        self._resubscriptions = 0

    # -- hot path -------------------------------------------------------------------------

    async def resolve(self, key: str) -> KeyRecord | None:
        """The record for a presented key (whatever its status), or None if unknown.

        Raises `RegistryUnavailable` only when the answer is not cached and Redis cannot give it.
        The caller checks `KeyRecord.denial_reason` itself: status and expiry are data, not
        errors.
        """
        key_hash = hash_key(key)
        entry = self._entries.get(key_hash)
        if entry is not None:
            if entry.expires > self._clock():
                self._entries.move_to_end(key_hash)
                if entry.record is None:
                    self._negative_hits += 1
                else:
                    self._hits += 1
                return entry.record
            del self._entries[key_hash]
        self._misses += 1
        task = self._inflight.get(key_hash)
        if task is None:
            task = asyncio.create_task(self._lookup(key_hash), name=f"tokenbook-key-{key_hash[:8]}")
            self._inflight[key_hash] = task
            task.add_done_callback(partial(self._lookup_done, key_hash))
        # shield: one caller going away (client disconnect) must not cancel the shared lookup.
        return await asyncio.shield(task)

    def lookup_cached(self, key: str) -> tuple[bool, KeyRecord | None]:
        """``(True, record_or_None)`` if the answer is cached and fresh, else ``(False, None)``.

        Synchronous and side-effect free apart from LRU order and counters: for callers that
        want to skip the coroutine on the hot path and only await `resolve` on a miss.
        """
        key_hash = hash_key(key)
        entry = self._entries.get(key_hash)
        if entry is None or entry.expires <= self._clock():
            return False, None
        self._entries.move_to_end(key_hash)
        if entry.record is None:
            self._negative_hits += 1
        else:
            self._hits += 1
        return True, entry.record

    async def _lookup(self, key_hash: str) -> KeyRecord | None:
        epoch = self._epoch
        try:
            async with asyncio.timeout(self._lookup_timeout):
                record = await self._registry.get_by_hash(key_hash)
        except TimeoutError as exc:
            self._errors += 1
            raise RegistryUnavailable(
                f"Redis did not answer a key lookup within {self._lookup_timeout:g}s:"
                " check that Redis is up and reachable from this replica"
            ) from exc
        except RegistryUnavailable:
            self._errors += 1
            raise
        if epoch == self._epoch:
            self._store(key_hash, record)
        return record

    def _lookup_done(self, key_hash: str, task: asyncio.Task[KeyRecord | None]) -> None:
        if self._inflight.get(key_hash) is task:
            del self._inflight[key_hash]
        # Retrieve the exception so asyncio does not log "never retrieved" when every waiter
        # was cancelled; the waiters themselves get it through the shield.
        if not task.cancelled():
            task.exception()

    def _store(self, key_hash: str, record: KeyRecord | None) -> None:
        if record is None:
            ttl = self._negative_ttl
        else:
            ttl = self._ttl if self.healthy else self._degraded_ttl
        self._entries[key_hash] = _Entry(record, self._clock() + ttl)
        self._entries.move_to_end(key_hash)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
            self._evictions += 1

    # -- invalidation ---------------------------------------------------------------------

    def invalidate(self, key_hash: str) -> None:
        """Drop one cached entry (also called for each event received)."""
        self._epoch += 1
        self._invalidations += 1
        self._entries.pop(key_hash, None)

    def clear(self) -> None:
        """Drop every cached entry."""
        self._epoch += 1
        self._clears += 1
        self._entries.clear()

    async def run_invalidation(self) -> None:
        """Run until cancelled: keep a subscription to the events channel and apply events.

        Never raises except `asyncio.CancelledError`: every error is logged and counted, and the
        subscription is re-established with exponential backoff.
        """
        backoff = self._backoff_min
        while True:
            pubsub = self._redis.pubsub()
            self._pubsub = pubsub
            try:
                await pubsub.subscribe(self._registry.events_channel)
                await self._listen(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # redis-py's timeouts can turn a cancellation into a TimeoutError: honour it,
                # or shutdown waits on a task that keeps reconnecting.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from exc
                self._errors += 1
                if self._subscribed:
                    backoff = self._backoff_min  # it was working: retry quickly
                log.warning(
                    "key invalidation subscription lost (%s); retrying in %.2fs", exc, backoff
                )
            finally:
                self._subscribed = False
                self._pubsub = None
                try:
                    # bounded: a connection cancelled mid-connect may never finish closing
                    await asyncio.wait_for(pubsub.aclose(), 1.0)  # type: ignore[no-untyped-call]
                except Exception as exc:  # a dying connection may fail to close; nothing to do
                    log.debug("closing the pub/sub connection failed: %s", exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._backoff_max)

    async def _listen(self, pubsub: PubSub) -> None:
        loop = asyncio.get_running_loop()
        last_heard = loop.time()
        ping_sent_at: float | None = None
        task = asyncio.current_task()
        while True:
            message: dict[str, Any] | None = await pubsub.get_message(
                ignore_subscribe_messages=False, timeout=self._ping_interval
            )
            # redis-py turns a cancellation that races its read timeout into "no message":
            # without this check a cancelled task would listen forever (and hang shutdown).
            if task is not None and task.cancelling():
                raise asyncio.CancelledError
            now = loop.time()
            if message is None:
                if ping_sent_at is not None and now - ping_sent_at >= self._ping_interval:
                    raise ConnectionError("Redis did not answer a PING on the pub/sub connection")
                if now - last_heard >= self._ping_interval and ping_sent_at is None:
                    await pubsub.ping()
                    ping_sent_at = now
                continue
            last_heard = now
            ping_sent_at = None
            kind = message.get("type")
            if kind in ("subscribe", b"subscribe"):
                self._on_subscribed()
            elif kind in ("message", b"message"):
                self._on_event(message.get("data"))
            elif kind in ("unsubscribe", b"unsubscribe"):
                self._subscribed = False

    def _on_subscribed(self) -> None:
        # Whatever happened before this confirmation, events may have been missed.
        self._subscribed = True
        self._resubscriptions += 1
        self.clear()

    def _on_event(self, data: object) -> None:
        try:
            event = orjson.loads(data) if isinstance(data, bytes | str) else None
        except orjson.JSONDecodeError:
            event = None
        key_hash = event.get("key_hash") if isinstance(event, dict) else None
        if isinstance(key_hash, str):
            self.invalidate(key_hash)
        else:
            # Someone speaks a newer or broken dialect: the safe reading is "anything changed".
            log.warning("unreadable registry event %r: clearing the key cache", data)
            self.clear()

    # -- observability --------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """True while the invalidation subscription is live (revocations reach this replica)."""
        if not self._subscribed or self._pubsub is None:
            return False
        # redis-py types PubSub.connection as always None; it is a Connection once subscribed.
        conn: object = getattr(self._pubsub, "connection", None)
        return bool(getattr(conn, "is_connected", False))

    def stats(self) -> Mapping[str, int]:
        """Counters since start (``entries`` and ``inflight`` are current sizes, i.e. gauges)."""
        return {
            "hits": self._hits,
            "misses": self._misses,
            "negative_hits": self._negative_hits,
            "invalidations": self._invalidations,
            "clears": self._clears,
            "evictions": self._evictions,
            "errors": self._errors,
            "resubscriptions": self._resubscriptions,
            "entries": len(self._entries),
            "inflight": len(self._inflight),
        }
