"""The ledger writer: bookings -> Redis (spend, holds, ledger stream), or the spool when it cannot.

`submit` is synchronous and never blocks or raises: the meter books from inside the ext_proc
handlers and must not wait for Redis. A background task (`run`) takes what was submitted in
batches (whatever has queued up within ``linger_s`` of the first, up to ``batch_max``) and
applies each batch as one `scripts.BOOK` call: one round trip and one argument for the whole
batch, because redis-py's per-command encoding and parsing, not Redis, was the cost.

States::

    normal   --(Redis unreachable / refusing writes)-->  degraded
    degraded: every batch is appended to the spool; Redis is probed with PING, backing off
              from 0.1 s to 2 s; ``tokenbook_ledger_degraded`` is 1
    degraded --(PING answered)-->  normal: the spool file is sealed and replayed in the
              background, a chunk between batches, oldest file first

Exactly once: each booking carries its idempotency id (`LedgerEntry.booking_id`); the script
writes nothing when ``<p>booked:<id>`` exists, so a replayed line, a pipeline retried after a
dropped connection, or a file replayed twice books at most once (within
``idempotency_ttl_s``, default 1 day: a spool replayed later than that could count twice).

Nothing is dropped silently: a line the spool cannot keep (full, or the disk refuses it) and a
booking Redis rejects for good (e.g. WRONGTYPE on a key someone wrote by hand) are counted in
``tokenbook_ledger_dropped_total{reason}`` (``spool_full``, ``spool_error``, ``rejected``,
``spool_corrupt``) and logged.

Health: a degraded ledger keeps the gRPC health SERVING on purpose. The gate still decides
correctly from its caches, and NOT_SERVING would make Envoy refuse every request (the gate
fails closed) for what is a bookkeeping delay: the state is visible in the log and in
``tokenbook_ledger_degraded`` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import redis.exceptions as rex
from redis._parsers.base import BaseParser
from redis.asyncio import Redis

from tokenbook.ledger.entry import LedgerEntry
from tokenbook.ledger.keyspace import Keyspace
from tokenbook.ledger.periods import periods_at
from tokenbook.ledger.scripts import BOOK
from tokenbook.ledger.spool import Spool, SpoolError, SpoolReader
from tokenbook.metrics.instruments import Metrics

log = logging.getLogger(__name__)

# Results of scripts.BOOK
DUPLICATE, BOOKED, LATE = 0, 1, 2

_TRANSIENT_PREFIXES = ("BUSY", "LOADING", "MASTERDOWN", "NOREPLICAS", "CLUSTERDOWN", "TRYAGAIN")


_parse_error: Callable[[str], Exception] = BaseParser.parse_error


def _results(raw: Sequence[Any], n: int) -> list[Any]:
    """`scripts.BOOK`'s reply as one result per booking: an int, or, for a booking Redis
    refused, the exception redis-py would have raised for it (so `transient` classifies it)."""
    codes = raw[0].decode() if isinstance(raw[0], bytes) else str(raw[0])
    if len(codes) != n:
        raise rex.ResponseError(f"the booking script answered {len(codes)} results for {n}")
    errors = iter(raw[1:])
    out: list[Any] = []
    for c in codes:
        if c == "E":
            msg = next(errors, b"")
            text = msg.decode("utf-8", "replace") if isinstance(msg, bytes) else str(msg)
            out.append(_parse_error(text or "ERR unknown"))
        else:
            out.append(int(c))
    return out


class RedisDown(Exception):
    """Redis cannot take writes right now (unreachable, read-only, out of memory, ...)."""


def transient(exc: BaseException) -> bool:
    """True for errors that a later retry can cure (spool and replay), False for a rejection."""
    if isinstance(exc, rex.ConnectionError | rex.TimeoutError | OSError | TimeoutError):
        return True
    if isinstance(
        exc,
        rex.ReadOnlyError
        | rex.OutOfMemoryError
        | rex.MasterDownError
        | rex.TryAgainError
        | rex.NoPermissionError
        | rex.AuthenticationError
        | rex.NoScriptError,
    ):
        return True
    return isinstance(exc, rex.ResponseError) and str(exc).startswith(_TRANSIENT_PREFIXES)


class LedgerWriter:
    def __init__(
        self,
        redis: Redis,
        keyspace: Keyspace,
        spool: Spool,
        metrics: Metrics,
        *,
        maxlen: int = 1_000_000,
        idempotency_ttl_s: int = 86_400,
        batch_max: int = 256,
        linger_s: float = 0.02,
        replay_batch: int = 256,
        queue_max: int = 100_000,
        tick_s: float = 0.2,
        write_timeout_s: float = 5.0,
        backoff_s: tuple[float, float] = (0.1, 2.0),
        rescan_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._ks = keyspace
        self._spool = spool
        self._m = metrics
        self._maxlen = str(maxlen)
        self._ttl = str(int(idempotency_ttl_s))
        self._batch_max = batch_max
        self._linger = linger_s
        self._replay_batch = replay_batch
        self._tick = tick_s
        self._write_timeout = write_timeout_s
        self._backoff_min, self._backoff_max = backoff_s
        self._clock = clock
        self._book = redis.register_script(BOOK)  # EVALSHA, loading the script on NOSCRIPT
        # UTC day number -> (day label, month label, their EXPIREATs): strftime per booking
        # was a tenth of the writer's CPU.
        self._periods: dict[int, tuple[str, str, str, str]] = {}
        self._spend_keys: dict[tuple[object, ...], list[str]] = {}
        self._queue: asyncio.Queue[LedgerEntry] = asyncio.Queue(maxsize=queue_max)
        self._inflight: list[LedgerEntry] = []
        self._degraded = False
        self._stopping = False
        self._backoff = self._backoff_min
        self._next_probe = 0.0
        self._reader: SpoolReader | None = None
        # Files left by an earlier run are replayed as soon as Redis answers; the directory is
        # looked at again every ``rescan_s`` for files another replica left behind.
        self._replay_pending = spool.has_sealed()
        self._rescan_s = rescan_s
        self._next_rescan = clock() + rescan_s
        self._spool_full_logged = False
        self._m.ledger_degraded.set(0)

    # -- API ------------------------------------------------------------------------------

    @property
    def degraded(self) -> bool:
        return self._degraded

    @property
    def queued(self) -> int:
        return self._queue.qsize() + len(self._inflight)

    def submit(self, entry: LedgerEntry) -> None:
        """Queue a booking; never blocks. A full queue spills straight to the spool."""
        try:
            self._queue.put_nowait(entry)
        except asyncio.QueueFull:
            self._to_spool([entry])
            self._replay_pending = True

    def stop(self) -> None:
        """Ask `run` to return after the step in progress (within ``tick_s`` when idle).

        Shutdown stops the writer this way rather than by cancelling it: a cancel that lands
        while redis-py is still opening its connection (a `serve` stopped right after it
        started) could leave the task waiting forever, measured 1 run in 6 (`test_app_stop`).
        """
        self._stopping = True

    async def run(self) -> None:
        """Run until `stop` (or cancelled). Never raises anything else: every error is logged
        and counted."""
        await self._probe()
        while not self._stopping:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not stop the ledger: keep what was in flight
                task = asyncio.current_task()
                if task is not None and task.cancelling():  # a cancel redis-py turned into an error
                    self._spool_inflight()
                    raise asyncio.CancelledError from None
                log.exception("ledger writer step failed; spooling the batch in flight")
                self._spool_inflight()

    async def drain(self, timeout_s: float) -> None:
        """Write what is queued (to Redis, or else to the spool) and fsync the spool.

        For shutdown: called while `run` is still running; whatever is left after
        ``timeout_s`` is spooled here, so the caller may cancel `run` afterwards.
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout_s)
        leftover = list(self._inflight)
        while not self._queue.empty():
            leftover.append(self._queue.get_nowait())
            self._queue.task_done()
        if leftover:
            self._to_spool(leftover)
        self._inflight = []
        await self._spool.sync()
        self._spool.seal()
        self._close_reader()

    # -- the loop -------------------------------------------------------------------------

    async def _step(self) -> None:
        replaying = self._replay_pending and not self._degraded
        batch = await self._take(0.0 if replaying else self._tick)
        if batch:
            self._inflight = batch
            try:
                await self._handle(batch)
            finally:
                self._inflight = []
                for _ in batch:
                    self._queue.task_done()
        if self._spool.sync_due():
            await self._spool.sync()
        if self._degraded:
            if self._clock() >= self._next_probe:
                await self._probe()
        elif self._replay_pending:
            await self._replay_step()
        elif self._clock() >= self._next_rescan:
            self._next_rescan = self._clock() + self._rescan_s
            self._replay_pending = self._spool.has_sealed()
        self._m.ledger_spool_bytes.set(self._spool.size)

    async def _take(self, wait_s: float) -> list[LedgerEntry]:
        """What has queued up (at most ``batch_max``), waiting up to ``wait_s`` for a first."""
        batch: list[LedgerEntry] = []
        if self._queue.empty():
            if wait_s <= 0:
                return batch
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), wait_s))
            except TimeoutError:
                return batch
            if self._linger > 0:
                # Let a burst gather: a batch costs about the same whatever its size.
                await asyncio.sleep(self._linger)
        while len(batch) < self._batch_max and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    async def _handle(self, batch: list[LedgerEntry]) -> None:
        if self._degraded:
            self._to_spool(batch)
            return
        try:
            results = await self._write(batch)
        except RedisDown as exc:
            self._enter_degraded(exc)
            self._to_spool(batch)
            return
        retry = self._account(batch, results, replayed=False)
        if retry:
            self._enter_degraded(RedisDown("Redis refused some writes"))
            self._to_spool(retry)

    # -- Redis ----------------------------------------------------------------------------

    def _period_labels(self, booked_at: float) -> tuple[str, str, str, str]:
        day_number = int(booked_at // 86_400)
        found = self._periods.get(day_number)
        if found is None:
            day, month = periods_at(booked_at)
            found = (day.label, month.label, str(day.expire_at), str(month.expire_at))
            if len(self._periods) > 64:
                self._periods.clear()
            self._periods[day_number] = found
        return found

    def _booking(self, e: LedgerEntry) -> list[object]:
        """One element of `scripts.BOOK`'s batch argument."""
        ks = self._ks
        day, month, day_expire, month_expire = self._period_labels(e.booked_at)
        who = (e.attributed, e.key_id, e.agent, e.workload, e.team, day, month)
        spend = self._spend_keys.get(who)
        if spend is None:  # the same few attributions book again and again
            spend = []
            for scope, ident in e.scopes():
                spend += [ks.spend(scope, ident, day), ks.spend(scope, ident, month)]
            if len(self._spend_keys) >= 4096:
                self._spend_keys.clear()
            self._spend_keys[who] = spend
        return [
            "u" if e.unbooked else "b",
            ks.booked(e.booking_id),
            ks.hold(e.booking_id),
            e.booking_id,
            str(e.cost_micro),
            day_expire,
            month_expire,
            spend,
            e.stream_fields(),
        ]

    async def _write(self, batch: Sequence[LedgerEntry]) -> list[Any]:
        """One round trip; per-entry results (ints, or exceptions for refused entries)."""
        if not batch:
            return []
        try:
            async with asyncio.timeout(self._write_timeout):
                payload = orjson.dumps([self._booking(e) for e in batch])
                raw = await self._book(
                    keys=[self._ks.holds, self._ks.ledger], args=[self._ttl, self._maxlen, payload]
                )
        except (rex.RedisError, OSError, TimeoutError) as exc:
            if transient(exc):
                raise RedisDown(str(exc) or type(exc).__name__) from exc
            raise
        return _results(raw, len(batch))

    def _account(
        self, batch: Sequence[LedgerEntry], results: Sequence[Any], *, replayed: bool
    ) -> list[LedgerEntry]:
        """Count per-entry results; returns the entries to retry (transient errors)."""
        m = self._m
        retry: list[LedgerEntry] = []
        # Counted per batch, not per entry: `labels()` costs more than the increment.
        written = {"written": 0, "late": 0, "duplicate": 0}
        for e, r in zip(batch, results, strict=True):
            if isinstance(r, Exception):
                if transient(r):
                    retry.append(e)
                else:
                    m.ledger_dropped.labels(reason="rejected").inc()
                    log.error("Redis rejected the booking of %s for good: %s", e.booking_id, r)
                continue
            code = int(r)
            if code == DUPLICATE:
                written["duplicate"] += 1
                continue
            written["late" if code == LATE else "written"] += 1
            if e.unbooked:
                # Confirmed by the script: nobody (on any replica) booked it.
                m.unbooked.labels(provider=m.guard("provider", e.provider)).inc()
        for result, n in written.items():
            if n:
                m.child(m.ledger_writes, result).inc(n)
        if replayed and (n := written["written"] + written["late"]):
            m.ledger_replayed.inc(n)
        return retry

    async def _probe(self) -> None:
        try:
            async with asyncio.timeout(self._write_timeout):
                await self._redis.ping()
        except (rex.RedisError, OSError, TimeoutError) as exc:
            self._enter_degraded(exc)
            self._next_probe = self._clock() + self._backoff
            self._backoff = min(self._backoff * 2, self._backoff_max)
            return
        if self._degraded:
            log.warning("Redis is back: replaying the ledger spool")
        self._degraded = False
        self._backoff = self._backoff_min
        self._spool_full_logged = False
        self._m.ledger_degraded.set(0)
        self._spool.seal()
        self._replay_pending = self._replay_pending or self._spool.has_sealed()

    def _enter_degraded(self, exc: BaseException) -> None:
        if not self._degraded:
            log.warning(
                "ledger degraded: Redis is unreachable (%s); bookings go to the spool in %s and"
                " are replayed when it is back",
                exc,
                self._spool.directory,
            )
        self._degraded = True
        self._m.ledger_degraded.set(1)
        self._close_reader()
        self._replay_pending = True
        if self._clock() >= self._next_probe:
            self._next_probe = self._clock() + self._backoff

    # -- spool ----------------------------------------------------------------------------

    def _to_spool(self, entries: Sequence[LedgerEntry]) -> None:
        m = self._m
        try:
            kept = self._spool.append([e.to_spool() for e in entries])
        except SpoolError as exc:
            m.ledger_dropped.labels(reason="spool_error").inc(len(entries))
            log.error("ledger: %d bookings lost: %s", len(entries), exc)
            return
        if kept:
            m.ledger_writes.labels(result="spooled").inc(kept)
        lost = len(entries) - kept
        if lost:
            m.ledger_dropped.labels(reason="spool_full").inc(lost)
            if not self._spool_full_logged:
                self._spool_full_logged = True
                log.error(
                    "ledger spool %s is full (%d bytes): bookings are being dropped and counted"
                    ' in tokenbook_ledger_dropped_total{reason="spool_full"}',
                    self._spool.directory,
                    self._spool.max_bytes,
                )

    def _spool_inflight(self) -> None:
        batch, self._inflight = self._inflight, []
        if batch:
            self._to_spool(batch)

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()  # the file stays: it is replayed again from its start
            self._reader = None

    async def _replay_step(self) -> None:
        if self._reader is None:
            # Not degraded: an open spool file holds only queue overflow; make it replayable.
            self._spool.seal()
            self._reader = next(self._spool.readers(), None)
            if self._reader is None:
                self._replay_pending = False
                self._spool.forget_size()
                return
            log.info("replaying ledger spool %s", self._reader.path.name)
        reader = self._reader
        batch = reader.batch(self._replay_batch)
        if not batch:
            if reader.corrupt:
                self._m.ledger_dropped.labels(reason="spool_corrupt").inc(reader.corrupt)
            reader.remove()
            self._reader = None
            self._spool.forget_size()
            log.info("ledger spool %s replayed", reader.path.name)
            return
        try:
            results = await self._write(batch)
        except RedisDown as exc:
            self._enter_degraded(exc)
            return
        if self._account(batch, results, replayed=True):
            # Some lines could not be applied now: the file is kept and replayed again later
            # (the lines already applied are skipped as duplicates then).
            self._enter_degraded(RedisDown("Redis refused some replayed writes"))
