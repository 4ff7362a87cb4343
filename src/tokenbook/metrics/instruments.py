"""Every Prometheus instrument tokenbook exports, in one place, on an injected registry.

Names and labels are DESIGN.md's contract. Tests build a fresh ``CollectorRegistry()`` and read
values with ``registry.get_sample_value``; nothing registers on the global default registry.

Cardinality: `model` and the attribution labels can be influenced by clients (a model name in a
request body, an imported key's owner). Each such label has a bound on distinct values; past it,
new values are booked as ``other`` and counted in ``tokenbook_label_overflow_total{label}``, so
a hostile or buggy client cannot explode the series count.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

OVERFLOW_VALUE = "other"
_LABEL_VALUE_MAX = 128
_UNSAFE = re.compile(r"[^A-Za-z0-9._:/@+-]")

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
        self._overflow = overflow.labels(label=name)
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        value = sanitise(value)
        if value in self._seen:
            return value
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) >= self.limit:
                self._overflow.inc()
                return OVERFLOW_VALUE
            self._seen.add(value)
            return value


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
        self.registry_up = Gauge(
            "tokenbook_registry_up",
            "1 when the key registry (Redis) answered the last lookup.",
            registry=registry,
        )

        limits = dict(label_limits or {})
        self.guards: dict[str, LabelGuard] = {
            name: LabelGuard(name, limits.get(name, 1000), self.label_overflow)
            for name in ("model", *self.attribution_labels)
        }

    def guard(self, label: str, value: str) -> str:
        """The bounded, sanitised value for `label` (labels without a guard are sanitised)."""
        g = self.guards.get(label)
        return g(value) if g is not None else sanitise(value)


class RegistryCacheCollector(Collector):
    """Exports the key resolver's own cumulative counters at scrape time.

    The resolver counts hits and misses in plain ints on the hot path (no metric call per
    lookup); this collector reads them when Prometheus scrapes.
    """

    def __init__(self, stats: Callable[[], Mapping[str, int]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "tokenbook_registry_lookups",
            "Key resolver lookups and cache events (hits, misses, negative_hits, errors, ...).",
            labels=["result"],
        )
        for name, value in sorted(self._stats().items()):
            family.add_metric([name], value)
        yield family
