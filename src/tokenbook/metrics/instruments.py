"""Every Prometheus instrument tokenbook exports, in one place, on an injected registry.

Names and labels are DESIGN.md's contract. Tests build a fresh ``CollectorRegistry()`` and read
values with ``registry.get_sample_value``; nothing registers on the global default registry.

Cardinality: `model` and the attribution labels can be influenced by clients (a model name in a
request body, an imported key's owner). Each such label has a bound on distinct values; past it,
new values are booked as ``other`` and counted in ``tokenbook_label_overflow_total{label}``, so
a hostile or buggy client cannot explode the series count.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

OVERFLOW_VALUE = "other"
_M = TypeVar("_M", bound=MetricWrapperBase)
_LABEL_VALUE_MAX = 128
_UNSAFE = re.compile(r"[^A-Za-z0-9._:/@+-]")

log = logging.getLogger(__name__)

# LLM requests last from milliseconds (cached embeddings) to minutes (long reasoning streams).
_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
_TTFT_BUCKETS = (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 1.5, 2.5, 5, 10, 30, 60)


def sanitise(value: str) -> str:
    """A label value safe to show anywhere: bounded length, no control or odd characters."""
    if not value:
        return "unknown"
    return _UNSAFE.sub("_", value[:_LABEL_VALUE_MAX])


class LabelGuard:
    """Bounds the distinct values of one label; values past the bound become ``other``."""

    def __init__(self, name: str, limit: int, overflow: Counter) -> None:
        self.name = name
        self.limit = limit
        self._seen: set[str] = set()
        # raw value -> its accepted, sanitised value: the hot path books the same few values
        # over and over, and the regex in `sanitise` is most of a guard's cost. Only accepted
        # values are remembered (an overflow must be counted every time), and only so many:
        # distinct raw spellings of one accepted value are unbounded.
        self._memo: dict[str, str] = {}
        self._memo_max = 4 * limit + 64
        self._overflow = overflow.labels(label=name)
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        hit = self._memo.get(value)
        if hit is not None:
            return hit
        raw, value = value, sanitise(value)
        if value not in self._seen:
            with self._lock:
                if value not in self._seen:
                    if len(self._seen) >= self.limit:
                        self._overflow.inc()
                        return OVERFLOW_VALUE
                    self._seen.add(value)
        if len(self._memo) < self._memo_max:
            self._memo[raw] = value
        return value


class Tally:
    """Increments of hot-path counters and gauges, applied to their children in batches.

    Why: ``Counter.inc`` costs ~1.5 µs (observability checks, a lock, the value object) and a
    JSON request made about twenty of them (a booking's token and cost series, the request
    count, stream counts and open-stream gauges). `add` is a dict update under a lock; the sums
    reach the instruments before every collection (`FlushFirst`, registered ahead of them, so a
    scrape or ``get_sample_value`` always sees every increment) and on `flush` calls (every
    0.5 s from `tokenbook.app`, for ``serve --workers``, whose ``/metrics`` reads the files the
    workers' instruments write).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[Any, float] = {}

    def add(self, child: Any, amount: float = 1.0) -> None:
        """``child.inc(amount)``, later; a counter's amount must not be negative."""
        with self._lock:
            pending = self._pending
            pending[child] = pending.get(child, 0.0) + amount

    def flush(self) -> None:
        # Applied under the lock: a scrape never sees half of a flush.
        with self._lock:
            pending, self._pending = self._pending, {}
            for child, amount in pending.items():
                try:
                    child.inc(amount)
                except ValueError:  # a negative amount for a counter: a bug, not a reason
                    log.exception("metric increment of %r refused", amount)  # to lose the rest


class FlushFirst(Collector):
    """Collects nothing; applies the `Tally` before the instruments after it are collected."""

    def __init__(self, tally: Tally) -> None:
        self._tally = tally

    def collect(self) -> Iterator[Metric]:
        self._tally.flush()
        return iter(())


class Metrics:
    """The instruments, plus the label guards that keep them bounded."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        attribution_labels: Sequence[str] = ("owner", "team", "agent", "workload", "key_id"),
        label_limits: Mapping[str, int] | None = None,
    ) -> None:
        self.registry = registry
        self.tally = Tally()
        registry.register(FlushFirst(self.tally))  # before every instrument: see `Tally`
        self.attribution_labels = tuple(attribution_labels)
        attr = list(self.attribution_labels)
        token_labels = ["token_type", "provider", "model", *attr, "source"]

        self.tokens = Counter(
            "tokenbook_tokens",
            "LLM tokens booked, by disjoint token type (they add up to the billed total).",
            token_labels,
            registry=registry,
        )
        self.cost = Counter(
            "tokenbook_cost_usd",
            "Cost of the booked tokens in US dollars (unpriced usage is never booked as $0).",
            token_labels,
            registry=registry,
        )
        self.requests = Counter(
            "tokenbook_requests",
            "LLM requests by outcome: ok, upstream_error, denied, aborted, usage_missing.",
            ["provider", "model", *attr, "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "tokenbook_request_duration_seconds",
            "From the request headers to the end of the response body.",
            ["provider", "model"],
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "tokenbook_time_to_first_token_seconds",
            "From the request headers to the first response body byte.",
            ["provider", "model"],
            buckets=_TTFT_BUCKETS,
            registry=registry,
        )
        self.price_missing = Counter(
            "tokenbook_price_missing",
            "Requests whose usage could not be priced (unknown model or provider).",
            ["provider", "model"],
            registry=registry,
        )
        self.usage_missing_reasons = Counter(
            "tokenbook_usage_missing",
            "Responses booked without provider-reported usage, by reason.",
            ["provider", "reason"],
            registry=registry,
        )
        self.unbooked = Counter(
            "tokenbook_requests_unbooked",
            "Requests the gate admitted that the meter never booked.",
            ["provider"],
            registry=registry,
        )
        self.label_overflow = Counter(
            "tokenbook_label_overflow",
            "Label values replaced by 'other' because the label reached its bound.",
            ["label"],
            registry=registry,
        )
        # tokenbook's own health
        self.extproc_streams = Counter(
            "tokenbook_extproc_streams",
            "ext_proc gRPC streams handled, by filter role.",
            ["role"],
            registry=registry,
        )
        self.extproc_open_streams = Gauge(
            "tokenbook_extproc_open_streams",
            "ext_proc gRPC streams open now, by filter role.",
            ["role"],
            registry=registry,
            # `serve --workers N` (multiprocess files): the sum over live workers; ignored
            # by a single process, as on the gauges below.
            multiprocess_mode="livesum",
        )
        self.extproc_errors = Counter(
            "tokenbook_extproc_errors",
            "Errors inside tokenbook's processors (the user's request is left alone).",
            ["role", "kind"],
            registry=registry,
        )
        self.gate_decisions = Counter(
            "tokenbook_gate_decisions",
            "Gate decisions: allowed, or denied with the reason.",
            ["provider", "decision"],
            registry=registry,
        )
        # budgets and the ledger (tokenbook/ledger/); `id` values are budgets an admin set
        self.budget_denied = Counter(
            "tokenbook_budget_denied",
            "Requests refused because a budget is used up, by the budget that refused.",
            ["scope", "id"],
            registry=registry,
        )
        self.budget_checks_skipped = Counter(
            "tokenbook_budget_checks_skipped",
            "Requests admitted without a budget check (Redis unreachable), by reason.",
            ["reason"],
            registry=registry,
        )
        self.budget_holds_expired = Counter(
            "tokenbook_budget_holds_expired",
            "Budget reservations released because their request was never booked.",
            registry=registry,
        )
        self.ledger_writes = Counter(
            "tokenbook_ledger_writes",
            "Bookings by result: written, duplicate (already booked), late (after an"
            " unbooked verdict), spooled (Redis unreachable).",
            ["result"],
            registry=registry,
        )
        self.ledger_replayed = Counter(
            "tokenbook_ledger_replayed",
            "Spooled bookings applied to Redis after an outage.",
            registry=registry,
        )
        self.ledger_dropped = Counter(
            "tokenbook_ledger_dropped",
            "Bookings or admission records that could not be kept, by reason.",
            ["reason"],
            registry=registry,
        )
        self.ledger_degraded = Gauge(
            "tokenbook_ledger_degraded",
            "1 while Redis is unreachable and bookings go to the local spool.",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.ledger_spool_bytes = Gauge(
            "tokenbook_ledger_spool_bytes",
            "Bytes of spooled bookings waiting for replay.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.ledger_pending = Gauge(
            "tokenbook_ledger_pending_admissions",
            "Admitted requests this replica is waiting to see booked.",
            registry=registry,
            multiprocess_mode="livesum",
        )

        self._children: dict[tuple[int, tuple[str, ...]], object] = {}
        limits = dict(label_limits or {})
        self.guards: dict[str, LabelGuard] = {
            name: LabelGuard(name, limits.get(name, 1000), self.label_overflow)
            for name in ("model", *self.attribution_labels)
        }

    def guard(self, label: str, value: str) -> str:
        """The bounded, sanitised value for `label` (labels without a guard are sanitised)."""
        g = self.guards.get(label)
        return g(value) if g is not None else sanitise(value)

    def child(self, metric: _M, *values: str) -> _M:
        """``metric.labels(*values)``, cached per label tuple (values in labelnames order).

        ``labels()`` validates and copies its arguments on every call (~10 µs, measured: most
        of a booking); the hot path asks for the same children again and again. The cache
        holds one entry per series that exists anyway (label values are guarded).
        """
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return cast(_M, found)


class RegistryCacheCollector(Collector):
    """Exports the key resolver's own state at scrape time.

    The resolver counts hits and misses in plain ints on the hot path (no metric call per
    lookup); this collector reads them when Prometheus scrapes:

    - ``tokenbook_registry_lookups_total{result}``: hits, misses, negative_hits, errors, ...
    - ``tokenbook_registry_cache_entries`` / ``tokenbook_registry_lookups_inflight`` (gauges)
    - ``tokenbook_registry_up``: 1 while the resolver's Redis subscription (revocation events)
      is live, 0 while Redis is unreachable (cached keys still work, see the failure policy).
    """

    _GAUGES: Mapping[str, tuple[str, str]] = {
        "entries": ("tokenbook_registry_cache_entries", "Keys in the local key cache."),
        "inflight": ("tokenbook_registry_lookups_inflight", "Registry lookups in flight."),
    }

    def __init__(self, stats: Callable[[], Mapping[str, int]], up: Callable[[], bool]) -> None:
        self._stats = stats
        self._up = up

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        family = CounterMetricFamily(
            "tokenbook_registry_lookups",
            "Key resolver lookups and cache events (hits, misses, negative_hits, errors, ...).",
            labels=["result"],
        )
        for name, value in sorted(stats.items()):
            if name not in self._GAUGES:
                family.add_metric([name], value)
        yield family
        for key, (metric, doc) in self._GAUGES.items():
            if key in stats:
                yield GaugeMetricFamily(metric, doc, value=stats[key])
        yield GaugeMetricFamily(
            "tokenbook_registry_up",
            "1 while the key registry (Redis) subscription is live, else 0.",
            value=1.0 if self._up() else 0.0,
        )


class BudgetRemainingCollector(Collector):
    """``tokenbook_budget_remaining_usd{scope,id,period}`` at scrape time, from the ledger's
    last snapshot (refreshed every few seconds; negative when a budget was overrun)."""

    def __init__(self, rows: Callable[[], Sequence[tuple[str, str, str, float]]]) -> None:
        self._rows = rows

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "tokenbook_budget_remaining_usd",
            "What is left of a budget in its current period, in US dollars.",
            labels=["scope", "id", "period"],
        )
        for scope, ident, period, remaining in self._rows():
            family.add_metric([scope, sanitise(ident), period], remaining)
        yield family
