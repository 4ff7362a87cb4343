"""`Ledger`: the ledger package wired together for `tokenbook serve`, and its background work.

The app builds one `Ledger` and hands `Ledger.admission` to the gate and `Ledger.record` to the
booker. `run` keeps, until cancelled:

- the writer (`writer.LedgerWriter`: bookings -> Redis, or the spool and a replay later);
- the control cache (`controls.Controls`: budgets and suspensions, pub/sub + 0.5 s poll);
- a 1 s sweep: admitted requests past ``unbooked_timeout_s`` become ``unbooked`` bookings, and
  every 10 s reservations whose deadline passed are released (`scripts.RELEASE_EXPIRED`: the
  safety net for a gate replica that died with requests in flight);
- a 5 s snapshot of every known budget's remaining amount, which
  ``tokenbook_budget_remaining_usd`` reports at scrape time.

`drain` (on SIGTERM, after the gRPC server stopped and the meter booked what it could) writes
what is still queued, to Redis or the spool, before Redis is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import redis.exceptions as rex
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tokenbook.attribution.connect import redis_client
from tokenbook.ledger.admission import AdmissionControl, Estimator, PendingAdmissions
from tokenbook.ledger.budgets import BudgetStore
from tokenbook.ledger.controls import Controls
from tokenbook.ledger.entry import LedgerEntry
from tokenbook.ledger.keyspace import Keyspace
from tokenbook.ledger.periods import DAILY, MONTHLY, from_micro, period_of, to_micro
from tokenbook.ledger.scripts import RELEASE_EXPIRED
from tokenbook.ledger.spool import Spool
from tokenbook.ledger.writer import LedgerWriter
from tokenbook.metrics.instruments import Metrics
from tokenbook.settings import Settings

log = logging.getLogger(__name__)

#: (scope, id, period, remaining USD) rows for tokenbook_budget_remaining_usd
RemainingRow = tuple[str, str, str, float]


class Ledger:
    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        metrics: Metrics,
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """``redis`` is the app's client (control subscription and reads). Budget checks get
        their own client whose pool *waits* for a free connection (redis-py's default pool
        fails at once past 100 connections, which a burst of parallel requests reaches: the
        checks would fail open). The writer gets its own client with a longer timeout, so a
        slow batch never holds up a gate check."""
        self.settings = settings
        self.keyspace = Keyspace(settings.redis_prefix)
        self.metrics = metrics
        self._wall = wall
        self._redis = redis
        self._writer_redis = redis_client(settings.redis_url, timeout_s=2.0)
        self._gate_redis = _waiting_client(settings.redis_url, max_connections=32, timeout_s=0.5)
        self.spool = Spool(
            settings.ledger_spool_dir,
            max_bytes=settings.ledger_spool_max_bytes,
            fsync_entries=settings.ledger_spool_fsync_entries,
            fsync_interval_s=settings.ledger_spool_fsync_interval_s,
        )
        self.writer = LedgerWriter(
            self._writer_redis,
            self.keyspace,
            self.spool,
            metrics,
            maxlen=settings.ledger_maxlen,
            idempotency_ttl_s=int(settings.ledger_idempotency_ttl_s),
        )
        self.store = BudgetStore(redis, self.keyspace)
        self.controls = Controls(self.store, redis)
        self.pending = PendingAdmissions(
            settings.unbooked_timeout_s,
            max_entries=settings.unbooked_max_pending,
            on_overflow=metrics.ledger_dropped.labels(reason="pending_full").inc,
        )
        self.estimator = Estimator(to_micro(settings.budget_reservation_usd))
        self.admission = AdmissionControl(
            self._gate_redis, self.keyspace, self.controls, self.pending, self.estimator, metrics
        )
        self.controls.listeners.append(self.admission.forget_exhausted)
        self._release_expired = self._writer_redis.register_script(RELEASE_EXPIRED)
        self._remaining: list[RemainingRow] = []

    # -- the booker's sink (synchronous, in the event loop) -------------------------------

    def record(self, entry: LedgerEntry) -> None:
        """One booking from the meter: forget its admission record, learn its cost, queue it."""
        self.pending.discard(entry.booking_id)
        if entry.cost_usd is not None and entry.attributed:
            self.estimator.observe(entry.key_id, entry.cost_micro)
        self.writer.submit(entry)

    # -- background work ------------------------------------------------------------------

    async def run(self) -> None:
        writer = asyncio.create_task(self.writer.run(), name="tokenbook-ledger-writer")
        tasks = [
            writer,
            asyncio.create_task(self.controls.run(), name="tokenbook-ledger-controls"),
            asyncio.create_task(self._sweep(), name="tokenbook-ledger-sweep"),
        ]
        try:
            # `wait`, not `gather`: a cancelled gather cancels its tasks, the writer included,
            # and the writer must be stopped, not cancelled (see `LedgerWriter.stop`).
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                exc = None if t.cancelled() else t.exception()
                if exc is not None:
                    raise exc
        finally:
            # The writer gets a moment to finish the step it is in, and is cancelled only if
            # it does not; the other tasks are cancelled at once.
            self.writer.stop()
            for t in tasks[1:]:
                t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait({writer}, timeout=1.0)
            for t in tasks:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    async def drain(self, timeout_s: float = 5.0) -> None:
        await self.writer.drain(timeout_s)

    async def aclose(self) -> None:
        for client in (self._writer_redis, self._gate_redis):
            with contextlib.suppress(Exception):
                await client.aclose()

    async def _sweep(self) -> None:
        tick = 0
        while True:
            await asyncio.sleep(1.0)
            tick += 1
            try:
                self.sweep_unbooked()
                self.metrics.ledger_pending.set(len(self.pending))
                if tick % 10 == 0 and not self.writer.degraded:
                    await self.release_expired_holds()
                if tick % 5 == 1:
                    await self.refresh_remaining()
            except asyncio.CancelledError:
                raise
            except (rex.RedisError, OSError, TimeoutError) as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():  # a cancel redis-py turned into an error
                    raise asyncio.CancelledError from exc
                log.debug("ledger sweep: Redis unavailable (%s)", exc)
            except Exception:
                log.exception("ledger sweep failed")

    def sweep_unbooked(self) -> int:
        """Turn admission records past their deadline into ``unbooked`` bookings."""
        now = self._wall()
        n = 0
        for bid, pending in self.pending.overdue():
            self.writer.submit(pending.unbooked_entry(bid, now))
            n += 1
        return n

    async def release_expired_holds(self) -> int:
        now_ms = int(self._wall() * 1000)
        released = int(
            await self._release_expired(
                keys=[self.keyspace.holds],
                args=[str(now_ms), "500", f"{self.keyspace.prefix}hold:"],
            )
        )
        if released:
            self.metrics.budget_holds_expired.inc(released)
            log.warning("released %d budget reservations whose request was never booked", released)
        return released

    # -- tokenbook_budget_remaining_usd ---------------------------------------------------

    def _budget_slots(self) -> Iterable[tuple[str, str, str, int]]:
        for b in self.controls.budgets():
            for kind in (DAILY, MONTHLY):
                limit = b.limit_micro(kind)
                if limit is not None:
                    yield b.scope, b.ident, kind, limit
        for key_id, (daily, monthly) in list(self.admission.key_budgets.items()):
            for kind, usd in ((DAILY, daily), (MONTHLY, monthly)):
                if usd is not None:
                    yield "key", key_id, kind, to_micro(usd)

    async def refresh_remaining(self) -> None:
        slots = list(self._budget_slots())
        if not slots:
            self._remaining = []
            return
        now = datetime.fromtimestamp(self._wall(), UTC)
        labels = {kind: period_of(kind, now).label for kind in (DAILY, MONTHLY)}
        names = [self.keyspace.spend(s, i, labels[k]) for s, i, k, _ in slots]
        values = await self._redis.mget(names)
        self._remaining = [
            (scope, ident, kind, from_micro(limit - int(v or 0)))
            for (scope, ident, kind, limit), v in zip(slots, values, strict=True)
        ]

    def remaining(self) -> list[RemainingRow]:
        """The last snapshot (read by the metrics collector at scrape time)."""
        return list(self._remaining)


def _waiting_client(url: str, *, max_connections: int, timeout_s: float) -> Redis:
    """A client whose pool waits up to ``timeout_s`` for a free connection instead of failing."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )
    client: Redis = Redis(connection_pool=pool)
    return client
