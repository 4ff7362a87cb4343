"""The audit's sources: tokenbook's own /metrics (booked by the real Booker), Prometheus'
answers, and the Redis ledger as the ledger package writes it (real redis-server)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest

from tests.support.redis_server import free_port
from tokenbook.audit.ledger import LedgerSource, record_from_fields
from tokenbook.audit.model import AuditRecord
from tokenbook.audit.sources import (
    MetricsSource,
    SourceError,
    mask_url,
    prometheus_queries,
    records_from_exposition,
    vector_samples,
)
from tokenbook.booking import Booker, Booking, Outcome
from tokenbook.ledger.entry import LedgerEntry
from tokenbook.metrics.instruments import Metrics
from tokenbook.pricing import Pricer
from tokenbook.usage.types import Extraction, TokenUsage


def _attr(key_id: str, owner: str = "alice", workload: str = "indexing") -> dict[str, str]:
    return {
        "key_id": key_id,
        "owner": owner,
        "team": "search",
        "agent": "bot",
        "workload": workload,
    }


def _booked_registry() -> tuple[CollectorRegistry, dict[str, float | None]]:
    """A registry with bookings made by the real Booker; returns it and the cost per key."""
    registry = CollectorRegistry()
    booker = Booker(Metrics(registry), Pricer())
    costs: dict[str, float | None] = {}

    def book(key_id: str, model: str, usage: TokenUsage, outcome: Outcome = Outcome.OK) -> None:
        booked = booker.book(
            Booking("r", "openai", model, _attr(key_id), Extraction(usage=usage), outcome)
        )
        if booked.cost_usd is None:
            costs.setdefault(key_id, None)
        else:
            costs[key_id] = (costs.get(key_id) or 0.0) + booked.cost_usd

    for _ in range(3):
        book("k1", "gpt-4o", TokenUsage(input=1000, cached_input=200, output=300))
    book("k2", "gpt-4o-mini", TokenUsage(input=50, output=5))
    book("k3", "no-such-model", TokenUsage(input=70, output=7))
    booker.book_denied("openai", _attr("k4"), "gpt-4o")
    return registry, costs


def test_records_from_exposition_match_what_the_booker_booked() -> None:
    registry, costs = _booked_registry()
    text = generate_latest(registry).decode()
    rows = {r.key_id: r for r in records_from_exposition([text])}
    assert set(rows) == {"k1", "k2", "k3"}  # the denied request has no usage
    k1 = rows["k1"]
    assert (k1.owner, k1.team, k1.agent, k1.workload) == ("alice", "search", "bot", "indexing")
    assert (k1.provider, k1.model, k1.requests) == ("openai", "gpt-4o", 3)
    assert k1.tokens == TokenUsage(input=3000, cached_input=600, output=900)
    assert k1.cost_usd == pytest.approx(costs["k1"])
    assert rows["k2"].cost_usd == pytest.approx(costs["k2"])
    assert rows["k3"].cost_usd is None  # unpriced: no cost series, never $0
    assert rows["k3"].tokens == TokenUsage(input=70, output=7)


def test_replicas_are_summed() -> None:
    registry, _ = _booked_registry()
    text = generate_latest(registry).decode()
    one = {r.key_id: r for r in records_from_exposition([text])}
    two = {r.key_id: r for r in records_from_exposition([text, text])}
    assert two["k1"].tokens.total() == 2 * one["k1"].tokens.total()
    assert two["k1"].requests == 6
    assert two["k1"].cost_usd == pytest.approx(2 * (one["k1"].cost_usd or 0))


def test_garbage_is_not_exposition() -> None:
    with pytest.raises(SourceError, match="not Prometheus text"):
        records_from_exposition(['tokenbook_tokens_total{a="b" 1\n'])


class _Serve(BaseHTTPRequestHandler):
    body = b""
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("content-type", "text/plain")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[tuple[type[_Serve], str]]:
    """A tiny HTTP server answering what the test puts in the handler class, and its URL."""
    handler = type("Handler", (_Serve,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}/metrics"
    server.shutdown()
    server.server_close()


def test_metrics_source_scrapes_over_http(serve: tuple[type[_Serve], str]) -> None:
    handler, url = serve
    registry, costs = _booked_registry()
    handler.body = generate_latest(registry)
    source = MetricsSource((url,))
    rows = {r.key_id: r for r in source.records()}
    assert rows["k1"].cost_usd == pytest.approx(costs["k1"])
    info = source.info()
    assert (info.kind, info.location, info.since) == ("metrics", url, None)


def test_metrics_source_errors_say_what_to_do(serve: tuple[type[_Serve], str]) -> None:
    handler, url = serve
    handler.body = b"# just some other exporter\nfoo_total 1\n"
    with pytest.raises(SourceError, match="serves no tokenbook metrics"):
        MetricsSource((url,)).records()
    handler.status = 503
    with pytest.raises(SourceError, match="answered HTTP 503"):
        MetricsSource((url,)).records()
    closed = f"http://127.0.0.1:{free_port()}/metrics"
    with pytest.raises(SourceError, match="cannot reach tokenbook /metrics"):
        MetricsSource((closed,)).records()


def test_prometheus_queries_cover_the_window_and_skip_denied() -> None:
    q = prometheus_queries("86400s")
    assert q["tokenbook_tokens_total"] == (
        "sum by (key_id,owner,team,agent,workload,provider,model,token_type) "
        "(increase(tokenbook_tokens_total[86400s]))"
    )
    assert "increase(tokenbook_cost_usd_total[86400s])" in q["tokenbook_cost_usd_total"]
    assert 'outcome!="denied"' in q["tokenbook_requests_total"]


def test_vector_answers_and_refusals() -> None:
    body = json.dumps(
        {
            "status": "success",
            "data": {
                "resultType": "vector",
                "result": [
                    {"metric": {"key_id": "k1"}, "value": [1.0, "12.5"]},
                    {"metric": {"key_id": "k2"}, "value": [1.0, "NaN"]},
                    {"metric": {"key_id": "k3"}},
                ],
            },
        }
    ).encode()
    samples = vector_samples(body, "q")
    assert samples[0] == ({"key_id": "k1"}, 12.5)
    assert len(samples) == 2  # NaN is kept here and dropped when summed; no value is skipped
    refused = json.dumps({"status": "error", "error": "parse error at char 3"}).encode()
    with pytest.raises(SourceError, match="parse error at char 3"):
        vector_samples(refused, "q")
    with pytest.raises(SourceError, match="not JSON"):
        vector_samples(b"<html>", "q")


def test_mask_url_hides_the_password() -> None:
    assert mask_url("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert mask_url("http://u:p@prom:9090") == "http://u:***@prom:9090"
    assert mask_url("http://prom:9090") == "http://prom:9090"


# -- the ledger -----------------------------------------------------------------------------


def _entry(key_id: str, cost: float | None, outcome: str = "ok", **tokens: int) -> LedgerEntry:
    return LedgerEntry(
        booking_id=f"b-{key_id}",
        request_id=f"r-{key_id}",
        booked_at=time.time(),
        key_id=key_id,
        owner="alice",
        team="search",
        agent="bot",
        workload="indexing",
        provider="anthropic",
        model="claude-sonnet-4-5",
        tokens=tokens,
        cost_usd=cost,
        outcome=outcome,
    )


def test_record_from_a_ledger_entry_as_the_ledger_writes_it() -> None:
    fields = _entry("k1", 0.25, input=10, cache_write=5, output=3).stream_fields()
    raw = {k.encode(): v.encode() for k, v in zip(fields[::2], fields[1::2], strict=True)}
    rec = record_from_fields(raw)
    assert rec == AuditRecord(
        "k1",
        "alice",
        "search",
        "bot",
        "indexing",
        "anthropic",
        "claude-sonnet-4-5",
        TokenUsage(input=10, cache_write=5, output=3),
        0.25,
        1,
    )
    unpriced = _entry("k2", None, input=4).stream_fields()
    got = record_from_fields(dict(zip(unpriced[::2], unpriced[1::2], strict=True)))
    assert got is not None
    assert got.cost_usd is None
    for outcome in ("denied", "unbooked"):
        no_usage = _entry("k3", None, outcome=outcome).stream_fields()
        assert record_from_fields(dict(zip(no_usage[::2], no_usage[1::2], strict=True))) is None


def _xadd(client: redis.Redis, entry: LedgerEntry, entry_id: str = "*") -> None:
    fields = entry.stream_fields()
    client.xadd("tb:ledger", dict(zip(fields[::2], fields[1::2], strict=True)), id=entry_id)


def test_ledger_source_reads_the_window_by_booking_time(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    now = time.time()
    two_hours_ago = replace(_entry("old", 9.0, input=1), booked_at=now - 7200)
    _xadd(client, two_hours_ago, f"{int((now - 7200) * 1000)}-0")  # appended then, too
    # more than one page (the reader's page is 1000 entries) inside the last hour
    pipe = client.pipeline(transaction=False)
    for i in range(2100):
        f = _entry(f"k{i % 3}", 0.5, input=100, output=10).stream_fields()
        pipe.xadd("tb:ledger", dict(zip(f[::2], f[1::2], strict=True)))
    pipe.execute()
    # booked two hours ago, appended now: replayed from a spool after an outage
    _xadd(client, replace(_entry("replayed", 7.0, input=1), booked_at=now - 7200))
    _xadd(client, _entry("k0", None, outcome="denied"))
    source = LedgerSource(redis_url, "tb:", 3600, "1h")
    rows = source.records()
    assert len(rows) == 2100  # the old, the replayed-but-old and the denied entries left out
    assert {r.key_id for r in rows} == {"k0", "k1", "k2"}
    assert sum(r.cost_usd or 0 for r in rows) == pytest.approx(1050.0)
    assert source.info().location.endswith(" tb:ledger")
    wider = {r.key_id for r in LedgerSource(redis_url, "tb:", 3 * 3600, "3h").records()}
    assert wider == {"k0", "k1", "k2", "old", "replayed"}


def test_ledger_source_errors(redis_url: str) -> None:
    with pytest.raises(SourceError, match="no ledger stream 'tokenbook:ledger'"):
        LedgerSource(redis_url, "tokenbook:", 3600, "1h").records()
    down = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(SourceError, match="cannot read the ledger"):
        LedgerSource(down, "tokenbook:", 3600, "1h").records()
    with pytest.raises(SourceError, match="not usable"):
        LedgerSource("http://nope", "tokenbook:", 3600, "1h").records()
