"""Where the audit reads usage from: a /metrics scrape, Prometheus, or tokenbook's Redis ledger.

Every source is an `AuditSource`: ``info()`` says what it reads, ``records()`` returns
`AuditRecord` rows (or raises `SourceError`, which the command turns into exit code 1).

- `MetricsSource` scrapes one or more tokenbook ``/metrics`` endpoints and sums them: totals
  since each process started, no other service needed.
- `PrometheusSource` asks Prometheus' HTTP API for ``increase(...[window])``. Prometheus'
  ``increase`` only sees what happened between two scrapes of a series, so the requests booked
  before a series' first scrape (its first request in the window, usually) are missing; the
  ledger has every request.
- `LedgerSource` reads the per-request ledger stream with XRANGE over the window
  (`tokenbook.audit.ledger`).

Rows from metrics are one per (attribution, provider, model); the ``source`` label
(reported/estimated) is summed over, and denied requests, which carry no tokens, are left out.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client.parser import text_string_to_metric_families

from tokenbook.audit.model import ATTRIBUTION, AuditRecord, SourceInfo
from tokenbook.usage.types import TOKEN_TYPES, TokenUsage

TOKENS_METRIC = "tokenbook_tokens_total"
COST_METRIC = "tokenbook_cost_usd_total"
REQUESTS_METRIC = "tokenbook_requests_total"
#: The labels a row is keyed by.
ROW_LABELS = (*ATTRIBUTION, "provider", "model")
# Requests that never reached a provider: no tokens, no cost, not part of any workload's mix.
_NOT_SPENDING = frozenset({"denied"})
_HTTP_TIMEOUT_S = 10.0


class SourceError(Exception):
    """A source could not be read (unreachable, refused, not what was expected): exit 1."""


class AuditSource(Protocol):
    def info(self) -> SourceInfo: ...

    def records(self) -> list[AuditRecord]: ...


def mask_url(url: str) -> str:
    """``url`` without a password, for messages and the report."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def http_get(url: str, what: str, *, timeout_s: float = _HTTP_TIMEOUT_S) -> bytes:
    """GET ``url``; any failure is a `SourceError` naming ``what`` and the URL."""
    request = urllib.request.Request(url, headers={"accept": "text/plain, application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            body: bytes = resp.read()
            return body
    except urllib.error.HTTPError as exc:
        detail = exc.read(300).decode(errors="replace").strip()
        raise SourceError(
            f"{what} at {mask_url(url)} answered HTTP {exc.code}: {detail or exc.reason}"
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SourceError(f"cannot reach {what} at {mask_url(url)}: {reason}") from None


# -- summing samples into rows ----------------------------------------------------------------


@dataclass
class _Row:
    tokens: dict[str, float] = field(default_factory=dict)
    cost_usd: float | None = None
    requests: float = 0.0


@dataclass
class RowBuilder:
    """Sums token, cost and request samples by `ROW_LABELS` into `AuditRecord` rows."""

    rows: dict[tuple[str, ...], _Row] = field(default_factory=dict)

    def _row(self, labels: Mapping[str, str]) -> _Row:
        key = tuple(labels.get(name, "") for name in ROW_LABELS)
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = _Row()
        return row

    def add_tokens(self, labels: Mapping[str, str], value: float) -> None:
        token_type = labels.get("token_type", "")
        if token_type not in TOKEN_TYPES or not math.isfinite(value):
            return
        row = self._row(labels)
        row.tokens[token_type] = row.tokens.get(token_type, 0.0) + value

    def add_cost(self, labels: Mapping[str, str], value: float) -> None:
        if not math.isfinite(value):
            return
        row = self._row(labels)
        row.cost_usd = (row.cost_usd or 0.0) + value

    def add_requests(self, labels: Mapping[str, str], value: float) -> None:
        if labels.get("outcome") in _NOT_SPENDING or not math.isfinite(value):
            return
        self._row(labels).requests += value

    def records(self) -> list[AuditRecord]:
        out: list[AuditRecord] = []
        for key, row in self.rows.items():
            counts = {t: round(v) for t, v in row.tokens.items()}
            requests = round(row.requests)
            if not any(counts.values()) and requests == 0 and not row.cost_usd:
                continue  # nothing happened to this series in the window
            if requests == 0 and any(counts.values()):
                requests = 1  # tokens need at least one request (an extrapolated window)
            labels = dict(zip(ROW_LABELS, key, strict=True))
            out.append(
                AuditRecord(
                    key_id=labels["key_id"],
                    owner=labels["owner"],
                    team=labels["team"],
                    agent=labels["agent"],
                    workload=labels["workload"],
                    provider=labels["provider"],
                    model=labels["model"],
                    tokens=TokenUsage(**counts),
                    cost_usd=row.cost_usd,
                    requests=requests,
                )
            )
        out.sort(key=lambda r: tuple(getattr(r, n) for n in ROW_LABELS))
        return out


def records_from_exposition(texts: Iterable[str]) -> list[AuditRecord]:
    """Rows from Prometheus text exposition (one text per scraped tokenbook process)."""
    builder = RowBuilder()
    for text in texts:
        try:
            families = list(text_string_to_metric_families(text))
        except ValueError as exc:
            raise SourceError(f"not Prometheus text exposition: {exc}") from None
        for family in families:
            for sample in family.samples:
                if sample.name == TOKENS_METRIC:
                    builder.add_tokens(sample.labels, sample.value)
                elif sample.name == COST_METRIC:
                    builder.add_cost(sample.labels, sample.value)
                elif sample.name == REQUESTS_METRIC:
                    builder.add_requests(sample.labels, sample.value)
    return builder.records()


@dataclass(frozen=True, slots=True)
class MetricsSource:
    """Scrapes tokenbook's own /metrics (every URL given; replicas are summed)."""

    urls: Sequence[str]

    def info(self) -> SourceInfo:
        where = ", ".join(mask_url(u) for u in self.urls)
        return SourceInfo("metrics", where, None, "since each tokenbook process started")

    def records(self) -> list[AuditRecord]:
        texts = [http_get(url, "tokenbook /metrics").decode(errors="replace") for url in self.urls]
        if not any("tokenbook_" in t for t in texts):
            raise SourceError(
                f"{', '.join(map(mask_url, self.urls))} serves no tokenbook metrics; "
                "point --metrics-url at `tokenbook serve --metrics-listen`"
            )
        return records_from_exposition(texts)


# -- Prometheus --------------------------------------------------------------------------------


def prometheus_queries(window: str) -> dict[str, str]:
    """The three instant queries, by metric; ``window`` is a PromQL duration such as ``24h``."""
    rows = ",".join(ROW_LABELS)
    return {
        TOKENS_METRIC: f"sum by ({rows},token_type) (increase({TOKENS_METRIC}[{window}]))",
        COST_METRIC: f"sum by ({rows}) (increase({COST_METRIC}[{window}]))",
        REQUESTS_METRIC: (
            f'sum by ({rows}) (increase({REQUESTS_METRIC}{{outcome!="denied"}}[{window}]))'
        ),
    }


def vector_samples(body: bytes, query: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of a Prometheus ``/api/v1/query`` answer of type vector."""
    try:
        doc = json.loads(body)
    except ValueError:
        raise SourceError("Prometheus answered something that is not JSON") from None
    if not isinstance(doc, dict) or doc.get("status") != "success":
        error = doc.get("error") if isinstance(doc, dict) else None
        raise SourceError(f"Prometheus refused {query!r}: {error or 'no status'}")
    data = doc.get("data") or {}
    if data.get("resultType") != "vector":
        raise SourceError(f"Prometheus answered {query!r} with {data.get('resultType')!r}")
    out: list[tuple[dict[str, str], float]] = []
    for item in data.get("result") or []:
        labels = {str(k): str(v) for k, v in (item.get("metric") or {}).items()}
        try:
            value = float(item["value"][1])
        except (KeyError, IndexError, TypeError, ValueError):
            continue
        out.append((labels, value))
    return out


@dataclass(frozen=True, slots=True)
class PrometheusSource:
    """Prometheus' HTTP API: ``increase()`` of tokenbook's counters over the window."""

    url: str  # the Prometheus base URL, e.g. http://prometheus:9090
    window: str  # a PromQL duration, e.g. 24h
    since: str  # the --since text, for the report

    def info(self) -> SourceInfo:
        return SourceInfo("prometheus", mask_url(self.url), self.since, f"last {self.since}")

    def records(self) -> list[AuditRecord]:
        builder = RowBuilder()
        adders = {
            TOKENS_METRIC: builder.add_tokens,
            COST_METRIC: builder.add_cost,
            REQUESTS_METRIC: builder.add_requests,
        }
        base = self.url.rstrip("/")
        for metric, query in prometheus_queries(self.window).items():
            url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": query})
            for labels, value in vector_samples(http_get(url, "Prometheus"), query):
                adders[metric](labels, value)
        return builder.records()
