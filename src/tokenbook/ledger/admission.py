"""The gate's side of the ledger: suspensions, budget checks with reservations, admission records.

Per admitted request, in order:

1. **Suspension** — a dict lookup in `Controls`: a suspended agent gets 403 in the provider's
   shape.
2. **Budgets** — every budget that applies (the key's, from its cached record; its agent's,
   workload's and team's, from `Controls`; daily and monthly) is a *slot*. No slot: no Redis at
   all. Otherwise one `scripts.RESERVE` call checks every slot and reserves an estimate of the
   request's cost in each; the booking later releases the reservation and adds the real cost
   (`scripts.BOOK`). A refusal is a 429 naming the budget and when it resets. A slot whose spend
   already reached its limit is remembered until its period ends (or the limit changes), so an
   over-budget client is refused without a Redis round trip, even during an outage.
3. **Admission record** — the request is remembered in memory (`PendingAdmissions`) until the
   meter books it; see "Lost observations" below.

Overrun bound (what a burst of parallel requests can spend beyond a budget ``B``). Each
admitted, unsettled request holds a reservation ``r_i``: its estimate, this key's recent
average cost on this replica, never below ``budget_reservation_usd`` (the floor ``r``). A
request is admitted only if ``spent + held + r_i <= B`` in every budget that applies (when the
estimate does not fit but nothing is in flight, the floor is tried instead, so one expensive
request cannot lock a budget). So at the last admission of a period the reservations in flight
fit in the budget, and what the period can spend beyond ``B`` is what those requests cost beyond
what they reserved::

    overrun <= N * max(0, c_max - r),   N = floor(B / r)  (the most requests in flight)

with ``c_max`` the largest cost of one request. Requests that cost no more than they reserve
never overrun a budget; the floor trades concurrency near a small budget (at most ``B / r``
requests in flight) for a tighter bound. Measured (tests/e2e/test_budgets.py, 200 parallel
requests through Envoy at B = $0.003, r = $0.0001, c = $0.000307): 30 admitted, overrun $0.00621
= the bound exactly (every request was admitted before any was booked, the worst case).

Outside the bound: requests admitted while Redis was unreachable (budgets cannot be checked:
they are let through and counted in ``tokenbook_budget_checks_skipped_total``; their spend is
replayed from the spool, so the budget refuses the next request once Redis is back), and
unpriced usage, which adds no spend (it is counted in ``tokenbook_price_missing_total``). Spend
is counted in the UTC period in which a request is *booked*; its reservation was made in the
period it was admitted in.

Lost observations: the admission record is kept **in memory on the replica whose gate admitted
the request**, not in Redis, so that a request with no budget costs no Redis round trip at all.
When the meter on the same replica books the request the record is dropped at once. A record
still there after ``unbooked_timeout_s`` (default 10 min: LLM streams can be long) becomes an
``unbooked`` booking; the booking script writes it (ledger ``outcome="unbooked"``, no cost,
the reservation released) only if no replica booked that request id, and only then is
``tokenbook_requests_unbooked_total{provider}`` counted, so a meter stream that landed on another
replica is not mistaken for a lost one. Limits: a replica that dies loses its records (its
admitted requests can no longer be declared unbooked; their reservations are still released by
the hold expiry sweep), and records take memory (about 400 bytes each with their ids, measured),
bounded by ``unbooked_max_pending`` (the overflow is counted as
``tokenbook_ledger_dropped_total{reason="pending_full"}``). With several replicas most records
wait the full timeout (their meter stream went to another replica): a replica admitting 1,000
requests/s holds up to 600,000 records (~240 MB) with the default 10 minutes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import redis.exceptions as rex
from redis.asyncio import Redis

from tokenbook.attribution.model import Attribution
from tokenbook.ledger.batcher import ScriptBatcher
from tokenbook.ledger.controls import Controls
from tokenbook.ledger.entry import OUTCOME_UNBOOKED, LedgerEntry, booking_id
from tokenbook.ledger.keyspace import Keyspace
from tokenbook.ledger.periods import (
    DAILY,
    MONTHLY,
    Period,
    format_usd,
    period_of,
    to_micro,
)
from tokenbook.ledger.scripts import RESERVE
from tokenbook.metrics.instruments import Metrics
from tokenbook.providers import ErrorReply, error_reply

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Ticket:
    """An admitted request: the meter books it under ``booking_id(request_id, admission_id)``."""

    admission_id: str


@dataclass(frozen=True, slots=True)
class Refusal:
    reply: ErrorReply
    decision: str  # the gate_decisions label


@dataclass(frozen=True, slots=True)
class Slot:
    """One budget that applies to a request: a scope, a period and its limit."""

    scope: str
    ident: str
    period: Period
    limit: int  # micro-dollars


def _with_headers(reply: ErrorReply, *extra: tuple[str, str]) -> ErrorReply:
    return ErrorReply(reply.status, reply.body, (*reply.headers, *extra))


# -- lost observations --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pending:
    request_id: str
    provider: str
    key_id: str
    attribution: Attribution
    attributed: bool
    deadline: float  # on the monotonic clock

    def unbooked_entry(self, bid: str, booked_at: float) -> LedgerEntry:
        return LedgerEntry(
            booking_id=bid,
            request_id=self.request_id,
            booked_at=booked_at,
            key_id=self.key_id,
            owner=self.attribution.owner,
            team=self.attribution.team,
            agent=self.attribution.agent,
            workload=self.attribution.workload,
            provider=self.provider,
            model="unknown",
            outcome=OUTCOME_UNBOOKED,
            source="estimated",
            attributed=self.attributed,
        )


class PendingAdmissions:
    """Admitted requests not booked yet, oldest first (every record has the same timeout, so
    insertion order is deadline order and the sweep only looks at the front)."""

    def __init__(
        self,
        timeout_s: float,
        *,
        max_entries: int = 1_000_000,
        on_overflow: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout_s = timeout_s
        self._max = max_entries
        self._on_overflow = on_overflow
        self._clock = clock
        self._items: OrderedDict[str, Pending] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def add(
        self,
        bid: str,
        *,
        request_id: str,
        provider: str,
        key_id: str,
        attribution: Attribution,
        attributed: bool,
    ) -> None:
        if len(self._items) >= self._max:
            self._on_overflow()
            return
        self._items[bid] = Pending(
            request_id, provider, key_id, attribution, attributed, self._clock() + self.timeout_s
        )

    def discard(self, bid: str) -> None:
        self._items.pop(bid, None)

    def overdue(self, limit: int = 10_000) -> Iterator[tuple[str, Pending]]:
        """Pop and yield the records whose deadline passed (at most ``limit``)."""
        now = self._clock()
        for _ in range(limit):
            if not self._items:
                return
            bid, first = next(iter(self._items.items()))
            if first.deadline > now:
                return
            del self._items[bid]
            yield bid, first


# -- estimates ----------------------------------------------------------------------------


class Estimator:
    """The reservation for a key's next request: its recent average cost (EWMA over the
    bookings this replica saw), never below the configured floor."""

    def __init__(self, floor_micro: int, *, alpha: float = 0.2, max_keys: int = 100_000) -> None:
        self.floor = floor_micro
        self._alpha = alpha
        self._max = max_keys
        self._avg: OrderedDict[str, float] = OrderedDict()

    def observe(self, key_id: str, cost_micro: int) -> None:
        prev = self._avg.get(key_id)
        self._avg[key_id] = (
            float(cost_micro) if prev is None else prev + self._alpha * (cost_micro - prev)
        )
        self._avg.move_to_end(key_id)
        while len(self._avg) > self._max:
            self._avg.popitem(last=False)

    def estimate(self, key_id: str) -> int:
        avg = self._avg.get(key_id)
        return self.floor if avg is None else max(self.floor, round(avg))


# -- admission ----------------------------------------------------------------------------


class AdmissionControl:
    def __init__(
        self,
        redis: Redis,
        keyspace: Keyspace,
        controls: Controls,
        pending: PendingAdmissions,
        estimator: Estimator,
        metrics: Metrics,
        *,
        check_timeout_s: float = 0.5,
        breaker_s: float = 1.0,
        hold_grace_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._ks = keyspace
        self.controls = controls
        self.pending = pending
        self.estimator = estimator
        self._m = metrics
        self._check_timeout = check_timeout_s
        self._breaker_s = breaker_s
        self._clock = clock
        self._wall = wall
        # Concurrent checks share pipelined round trips (see `batcher`).
        self._reserve = ScriptBatcher(redis, RESERVE)
        self._hold_s = pending.timeout_s + hold_grace_s
        self._breaker_until = 0.0
        self._nonce = os.urandom(4).hex()
        self._counter = itertools.count(1)
        # (scope, id, period label, limit) -> spent, for budgets known to be used up
        self._exhausted: dict[tuple[str, str, str, int], int] = {}
        # key_id -> (daily, monthly) of budgeted keys seen, for tokenbook_budget_remaining_usd
        self.key_budgets: OrderedDict[str, tuple[float | None, float | None]] = OrderedDict()

    def new_admission_id(self) -> str:
        return f"{self._nonce}{next(self._counter):x}"

    async def admit(
        self,
        *,
        provider: str,
        request_id: str,
        key_id: str,
        attribution: Attribution,
        attributed: bool,
        key_budget: tuple[float | None, float | None] = (None, None),
    ) -> Ticket | Refusal:
        suspension = self.controls.suspension(attribution.agent)
        if suspension is not None:
            by = f" by {suspension.by}" if suspension.by else ""
            why = f" ({suspension.reason})" if suspension.reason else ""
            reply = error_reply(
                provider,
                403,
                "agent_suspended",
                f"agent {attribution.agent!r} is suspended{by}{why}; an operator can lift it"
                f" with `tokenbook agents resume {attribution.agent}`",
            )
            return Refusal(_with_headers(reply, ("x-should-retry", "false")), "agent_suspended")
        admission_id = self.new_admission_id()
        bid = booking_id(request_id, admission_id)
        slots = self._slots(key_id, attribution, attributed, key_budget)
        if slots:
            refusal = await self._check(provider, bid, key_id, slots)
            if refusal is not None:
                return refusal
        self.pending.add(
            bid,
            request_id=request_id,
            provider=provider,
            key_id=key_id,
            attribution=attribution,
            attributed=attributed,
        )
        return Ticket(admission_id)

    def _slots(
        self,
        key_id: str,
        attribution: Attribution,
        attributed: bool,
        key_budget: tuple[float | None, float | None],
    ) -> list[Slot]:
        # The common case, no budget at all, costs three dict lookups and no date arithmetic.
        limits: list[tuple[str, str, float | None, float | None]] = []
        if attributed and key_budget != (None, None):
            self._note_key_budget(key_id, key_budget)
            limits.append(("key", key_id, key_budget[0], key_budget[1]))
        for scope, ident in (
            ("agent", attribution.agent),
            ("workload", attribution.workload),
            ("team", attribution.team),
        ):
            budget = self.controls.budget(scope, ident)
            if budget is not None:
                limits.append((scope, ident, budget.daily_usd, budget.monthly_usd))
        if not limits:
            return []
        when = datetime.fromtimestamp(self._wall(), UTC)
        day, month = period_of(DAILY, when), period_of(MONTHLY, when)
        slots: list[Slot] = []
        for scope, ident, daily, monthly in limits:
            for period, usd in ((day, daily), (month, monthly)):
                if usd is not None:
                    slots.append(Slot(scope, ident, period, to_micro(usd)))
        return slots

    def _note_key_budget(self, key_id: str, budget: tuple[float | None, float | None]) -> None:
        self.key_budgets[key_id] = budget
        self.key_budgets.move_to_end(key_id)
        while len(self.key_budgets) > 100_000:
            self.key_budgets.popitem(last=False)

    async def _check(
        self, provider: str, bid: str, key_id: str, slots: list[Slot]
    ) -> Refusal | None:
        for slot in slots:
            spent = self._exhausted.get((slot.scope, slot.ident, slot.period.label, slot.limit))
            if spent is not None:
                if self._wall() < slot.period.end.timestamp():
                    return self._refuse(provider, slot, spent, 0)
                self._exhausted.clear()  # a period ended: forget them all, cheaply
        if self._clock() < self._breaker_until:
            self._m.budget_checks_skipped.labels(reason="redis_down").inc()
            return None
        ks = self._ks
        amount = self.estimator.estimate(key_id)
        floor = self.estimator.floor
        keys = [ks.hold(bid), ks.holds]
        limits: list[str] = []
        expire: list[str] = []
        for s in slots:
            label = s.period.label
            keys += [ks.spend(s.scope, s.ident, label), ks.reserved(s.scope, s.ident, label)]
            limits.append(str(s.limit))
            expire.append(str(int(s.period.end.timestamp() + self._hold_s)))
        deadline_ms = int((self._wall() + self._hold_s) * 1000)
        args = [
            str(amount),
            str(floor),
            str(deadline_ms),
            str(int(self._hold_s) + 86_400),  # the hash outlives its zset deadline
            bid,
            str(len(slots)),
            *limits,
            *expire,
        ]
        try:
            async with asyncio.timeout(self._check_timeout):
                result = await self._reserve(keys, args)
        except (rex.RedisError, OSError, TimeoutError) as exc:
            # A check that timed out may still reserve: harmless, the booking releases the
            # hold of its booking id whatever the gate decided.
            if self._clock() >= self._breaker_until:
                log.warning(
                    "budgets cannot be checked (%s): admitting without a budget check for"
                    " %.1fs at a time until Redis answers",
                    exc or type(exc).__name__,
                    self._breaker_s,
                )
            self._breaker_until = self._clock() + self._breaker_s
            self._m.budget_checks_skipped.labels(reason="redis_down").inc()
            return None
        index = int(result[0])
        if index == 0:
            return None
        slot = slots[index - 1]
        spent, held = int(result[1]), int(result[2])
        if spent + floor > slot.limit:  # not even the floor fits: used up for this period
            if len(self._exhausted) > 10_000:
                self._exhausted.clear()
            self._exhausted[(slot.scope, slot.ident, slot.period.label, slot.limit)] = spent
        return self._refuse(provider, slot, spent, held)

    def _refuse(self, provider: str, slot: Slot, spent: int, held: int) -> Refusal:
        m = self._m
        m.budget_denied.labels(scope=slot.scope, id=m.guard("budget_id", slot.ident)).inc()
        kind = slot.period.kind
        resets = slot.period.end.strftime("%Y-%m-%dT%H:%M:%SZ")
        who = f"{slot.scope} {slot.ident!r}"
        if spent + self.estimator.floor > slot.limit:
            message = (
                f"the {kind} budget of {who} is used up ({format_usd(spent)} spent of"
                f" {format_usd(slot.limit)}); it resets at {resets}"
            )
            wait = max(1, int(slot.period.end.timestamp() - self._wall()))
            extra: tuple[tuple[str, str], ...] = (
                ("retry-after", str(wait)),
                ("x-should-retry", "false"),
            )
        else:
            message = (
                f"the {kind} budget of {who} is nearly used up ({format_usd(spent)} spent and"
                f" {format_usd(held)} reserved by requests in flight, of"
                f" {format_usd(slot.limit)}); retry in a few seconds, or wait until it resets"
                f" at {resets}"
            )
            extra = (("retry-after", "2"),)
        reply = error_reply(provider, 429, "budget_exceeded", message)
        return Refusal(_with_headers(reply, *extra), "budget_exceeded")

    def forget_exhausted(self) -> None:
        """Budgets changed (a control event): refusals cached locally may no longer hold."""
        self._exhausted.clear()
