"""Booking: turn one finished response's extraction into priced counters.

The meter decides *what* happened (an `Extraction` and an outcome); the booker prices the usage
and writes it to the Prometheus instruments. Usage that cannot be priced books its tokens, no
cost, and one `tokenbook_price_missing_total` — never $0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from tokenbook.metrics.instruments import Metrics
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


@dataclass(frozen=True, slots=True)
class Booked:
    """What was booked for a request (returned for the ledger and for tests)."""

    tokens: Mapping[str, int]
    cost_usd: float | None


class Booker:
    def __init__(self, metrics: Metrics, pricer: Pricer) -> None:
        self._m = metrics
        self._pricer = pricer

    def _labels(self, attribution: Mapping[str, str]) -> dict[str, str]:
        return {
            name: self._m.guard(name, attribution.get(name, "unattributed"))
            for name in self._m.attribution_labels
        }

    def book(self, b: Booking) -> Booked:
        m = self._m
        model = m.guard("model", b.model)
        provider = m.guard("provider", b.provider)
        attr = self._labels(b.attribution)
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
                m.tokens.labels(
                    token_type=token_type, provider=provider, model=model, source=source, **attr
                ).inc(count)
                if price is not None:
                    m.cost.labels(
                        token_type=token_type, provider=provider, model=model, source=source, **attr
                    ).inc(price.by_type.get(token_type, 0.0))
        if b.extraction.reason not in (Reason.NONE, Reason.NOT_BILLED) or (
            b.extraction.source is Source.ESTIMATED
        ):
            m.usage_missing_reasons.labels(
                provider=provider, reason=b.extraction.reason.value or "estimated"
            ).inc()
        m.requests.labels(provider=provider, model=model, outcome=b.outcome.value, **attr).inc()
        if b.duration_s is not None:
            m.duration.labels(provider=provider, model=model).observe(b.duration_s)
        if b.ttft_s is not None:
            m.ttft.labels(provider=provider, model=model).observe(b.ttft_s)
        return Booked(tokens=tokens, cost_usd=cost_total)

    def book_denied(self, provider: str, attribution: Mapping[str, str], model: str) -> None:
        """A request the gate refused: counted, never priced."""
        m = self._m
        m.requests.labels(
            provider=m.guard("provider", provider),
            model=m.guard("model", model),
            outcome=Outcome.DENIED.value,
            **self._labels(attribution),
        ).inc()
