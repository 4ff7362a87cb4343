"""Booking: turn one finished response's extraction into priced counters.

The meter decides *what* happened (an `Extraction` and an outcome); the booker prices the usage
and writes it to the Prometheus instruments, then hands a `LedgerEntry` to the ledger sink (spend
counters, budgets, the ledger stream: `tokenbook.ledger`). Usage that cannot be priced books its
tokens, no cost, and one `tokenbook_price_missing_total` — never $0.

The sink is synchronous and never blocks: the ledger queues the entry and writes it to Redis (or
its spool) in the background, so booking costs the meter no round trip.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from tokenbook.attribution.model import UNATTRIBUTED
from tokenbook.ledger.entry import LedgerEntry, booking_id
from tokenbook.metrics.instruments import OVERFLOW_VALUE, Metrics
from tokenbook.pricing.pricer import Pricer
from tokenbook.usage.types import Extraction, Reason, Source


class Outcome(StrEnum):
    OK = "ok"
    UPSTREAM_ERROR = "upstream_error"
    DENIED = "denied"
    ABORTED = "aborted"
    USAGE_MISSING = "usage_missing"


def outcome_for(status: int, extraction: Extraction, *, end_of_stream: bool) -> Outcome:
    """The `outcome` label for a response the gate admitted."""
    if status >= 400 or extraction.reason is Reason.UPSTREAM_ERROR:
        return Outcome.UPSTREAM_ERROR
    if not end_of_stream:
        return Outcome.ABORTED
    if extraction.reason in (Reason.NONE, Reason.NOT_BILLED):
        return Outcome.OK
    return Outcome.USAGE_MISSING


@dataclass(frozen=True, slots=True)
class Booking:
    request_id: str
    provider: str
    model: str
    attribution: Mapping[str, str]  # key_id owner team agent workload
    extraction: Extraction
    outcome: Outcome
    duration_s: float | None = None
    ttft_s: float | None = None
    # The gate's admission id (dynamic metadata): with the request id, the idempotency id.
    admission_id: str = ""


@dataclass(frozen=True, slots=True)
class Booked:
    """What was booked for a request (returned for the ledger and for tests)."""

    tokens: Mapping[str, int]
    cost_usd: float | None


class _Series:
    """The metric children one (provider, model, attribution) books into.

    Resolved once per distinct label set instead of per booking: guarding five or seven label
    values and finding their children was most of a booking's CPU, and the same few label sets
    book again and again.
    """

    __slots__ = ("attr", "cost", "duration", "model", "provider", "requests", "tokens", "ttft")

    def __init__(self, m: Metrics, provider: str, model: str, attr: tuple[str, ...]) -> None:
        self.provider = provider
        self.model = model
        self.attr = attr
        self.tokens: dict[tuple[str, str], Any] = {}
        self.cost: dict[tuple[str, str], Any] = {}
        self.requests: dict[str, Any] = {}
        self.duration = m.child(m.duration, provider, model)
        self.ttft = m.child(m.ttft, provider, model)


_SERIES_MAX = 10_000


class Booker:
    def __init__(
        self,
        metrics: Metrics,
        pricer: Pricer,
        *,
        sink: Callable[[LedgerEntry], None] | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._m = metrics
        self._pricer = pricer
        self._sink = sink
        self._wall = wall
        self._series: dict[tuple[str, ...], _Series] = {}

    def _series_for(self, b: Booking) -> _Series:
        """The booking's series: its guarded labels and metric children."""
        m = self._m
        a = b.attribution
        key = (b.provider, b.model, *[a.get(n, "unattributed") for n in m.attribution_labels])
        found = self._series.get(key)
        if found is not None:
            return found
        model = m.guard("model", b.model)
        provider = m.guard("provider", b.provider)
        series = _Series(m, provider, model, tuple(self._labels(a).values()))
        # A label that overflowed must be counted in tokenbook_label_overflow_total at every
        # booking: such a series is not remembered.
        if OVERFLOW_VALUE not in (model, *series.attr):
            if len(self._series) >= _SERIES_MAX:
                self._series.clear()
            self._series[key] = series
        return series

    def _labels(self, attribution: Mapping[str, str]) -> dict[str, str]:
        return {
            name: self._m.guard(name, attribution.get(name, "unattributed"))
            for name in self._m.attribution_labels
        }

    def book(self, b: Booking) -> Booked:
        m = self._m
        tally = m.tally.add  # increments are applied in batches (`metrics.instruments.Tally`)
        series = self._series_for(b)
        provider, model, attr_values = series.provider, series.model, series.attr
        usage = b.extraction.usage
        tokens = dict(usage.items())
        source = b.extraction.source.value
        cost_total: float | None = None
        if tokens:
            price = self._pricer.price(b.provider, b.model, usage)
            if price is None:
                m.price_missing.labels(provider=provider, model=model).inc()
            else:
                cost_total = price.total_usd
            for token_type, count in tokens.items():
                tkey = (token_type, source)
                child = series.tokens.get(tkey)
                if child is None:
                    child = series.tokens[tkey] = m.child(
                        m.tokens, token_type, provider, model, *attr_values, source
                    )
                if count:  # the series exists already (`m.child`): adding 0 would be a no-op
                    tally(child, count)
                if price is not None:
                    child = series.cost.get(tkey)
                    if child is None:
                        child = series.cost[tkey] = m.child(
                            m.cost, token_type, provider, model, *attr_values, source
                        )
                    amount = price.by_type.get(token_type, 0.0)
                    if amount:
                        tally(child, amount)
        if b.extraction.reason not in (Reason.NONE, Reason.NOT_BILLED) or (
            b.extraction.source is Source.ESTIMATED
        ):
            m.usage_missing_reasons.labels(
                provider=provider, reason=b.extraction.reason.value or "estimated"
            ).inc()
        outcome = b.outcome.value
        child = series.requests.get(outcome)
        if child is None:
            child = series.requests[outcome] = m.child(
                m.requests, provider, model, *attr_values, outcome
            )
        tally(child)
        if b.duration_s is not None:
            series.duration.observe(b.duration_s)
        if b.ttft_s is not None:
            series.ttft.observe(b.ttft_s)
        if self._sink is not None:
            self._sink(self._entry(b, tokens, cost_total, source))
        return Booked(tokens=tokens, cost_usd=cost_total)

    def _entry(
        self, b: Booking, tokens: Mapping[str, int], cost: float | None, source: str
    ) -> LedgerEntry:
        a = b.attribution
        owner = a.get("owner", UNATTRIBUTED)
        return LedgerEntry(
            booking_id=booking_id(b.request_id, b.admission_id),
            request_id=b.request_id,
            booked_at=self._wall(),
            key_id=a.get("key_id", UNATTRIBUTED),
            owner=owner,
            team=a.get("team", UNATTRIBUTED),
            agent=a.get("agent", UNATTRIBUTED),
            workload=a.get("workload", UNATTRIBUTED),
            provider=b.provider,
            model=b.model,
            tokens=tokens,
            cost_usd=cost,
            outcome=b.outcome.value,
            source=source,
            # Issued keys never have an "unattributed" owner (issuance refuses it).
            attributed=owner != UNATTRIBUTED,
        )

    def book_denied(self, provider: str, attribution: Mapping[str, str], model: str) -> None:
        """A request the gate refused: counted, never priced."""
        m = self._m
        m.requests.labels(
            provider=m.guard("provider", provider),
            model=m.guard("model", model),
            outcome=Outcome.DENIED.value,
            **self._labels(attribution),
        ).inc()
