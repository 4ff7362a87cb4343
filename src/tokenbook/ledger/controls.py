"""Each replica's local copy of the agent/workload/team budgets and the suspended agents.

The gate reads them on every request, so they are plain dict lookups here; `run` keeps them
current:

- it subscribes to ``<p>control`` and reloads the whole snapshot (`BudgetStore.load`, one MULTI)
  on every event and on every (re)subscription (events sent while it was not subscribed are
  lost, so a subscription always starts with a reload);
- every ``refresh_s`` (default 0.5 s) it reads ``<p>control:version``, one GET, and reloads
  when the version moved. That is the bound behind "a suspension takes effect on every replica
  within one second": pub/sub delivers in milliseconds (measured: 6 ms), and the poll covers a
  lost message or a silently dead subscription in at most ``refresh_s`` plus a round trip.

While Redis is unreachable the last snapshot stays in force (a suspended agent stays suspended
through an outage). A replica that starts while Redis is down knows no budgets or suspensions
until it can read them: it admits, and says so in the log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from tokenbook.ledger.budgets import Budget, BudgetStore, ControlState, Suspension

log = logging.getLogger(__name__)


class Controls:
    def __init__(
        self,
        store: BudgetStore,
        redis: Redis,
        *,
        refresh_s: float = 0.5,
        backoff_s: tuple[float, float] = (0.05, 2.0),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``redis`` is used for the subscription only (one connection of its pool)."""
        self._store = store
        self._redis = redis
        self._refresh = refresh_s
        self._backoff_min, self._backoff_max = backoff_s
        self._clock = clock
        self._state = ControlState(-1, {}, {})
        self.loaded = False
        self._live = False  # subscribed and answering
        self.reloads = 0
        self.listeners: list[Callable[[], None]] = []  # called after each reload

    # -- hot path -------------------------------------------------------------------------

    def budget(self, scope: str, ident: str) -> Budget | None:
        return self._state.budgets.get((scope, ident))

    def suspension(self, agent: str) -> Suspension | None:
        return self._state.suspended.get(agent)

    def budgets(self) -> Iterable[Budget]:
        return self._state.budgets.values()

    @property
    def version(self) -> int:
        return self._state.version

    # -- keeping current ------------------------------------------------------------------

    async def refresh(self) -> None:
        """Reload the snapshot now (raises redis errors)."""
        state = await self._store.load()
        changed = state.version != self._state.version
        self._state = state
        self.reloads += 1
        if not self.loaded:
            log.info(
                "controls loaded: %d budgets, %d suspended agents",
                len(state.budgets),
                len(state.suspended),
            )
        self.loaded = True
        if changed:
            for listener in self.listeners:
                listener()

    async def run(self) -> None:
        """Run until cancelled; never raises anything else (errors are logged, then retried)."""
        backoff = self._backoff_min
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._store.keyspace.control_channel)
                await self._listen(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _reraise_if_cancelling()
                if self._live:
                    backoff = self._backoff_min  # it was working: retry quickly
                self._live = False
                log.warning(
                    "budget/suspension updates lost (%s); keeping the last known ones, retrying"
                    " in %.2fs",
                    exc,
                    backoff,
                )
            finally:
                try:
                    # bounded: a connection cancelled mid-connect may never finish closing
                    await asyncio.wait_for(pubsub.aclose(), 1.0)  # type: ignore[no-untyped-call]
                except Exception as exc:  # a dying connection may fail to close
                    log.debug("closing the control subscription failed: %s", exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._backoff_max)

    async def _listen(self, pubsub: PubSub) -> None:
        last_poll = self._clock()
        task = asyncio.current_task()
        while True:
            message: dict[str, Any] | None = await pubsub.get_message(
                ignore_subscribe_messages=False, timeout=self._refresh
            )
            # redis-py turns a cancellation that races its read timeout into "no message".
            if task is not None and task.cancelling():
                raise asyncio.CancelledError
            if message is not None and message.get("type") in (
                "subscribe",
                b"subscribe",
                "message",
                b"message",
            ):
                await self.refresh()
                self._live = True
                last_poll = self._clock()
                continue
            if self._clock() - last_poll >= self._refresh:
                last_poll = self._clock()
                if await self._store.version() != self._state.version:
                    await self.refresh()


def _reraise_if_cancelling() -> None:
    """redis-py's timeouts can turn a cancellation into a TimeoutError; honour the cancel."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
