"""`Tally`: batched increments are never lost and always visible to a collection."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, generate_latest

from tokenbook.metrics.instruments import Metrics


def test_an_increment_is_visible_to_the_next_collection() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry)
    child = m.gate_decisions.labels(provider="openai", decision="allowed")
    m.tally.add(child)
    m.tally.add(child, 2)
    labels = {"provider": "openai", "decision": "allowed"}
    assert registry.get_sample_value("tokenbook_gate_decisions_total", labels) == 3
    assert b'tokenbook_gate_decisions_total{decision="allowed",provider="openai"} 3.0' in (
        generate_latest(registry)
    )


def test_a_refused_increment_does_not_take_the_others_with_it() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry)
    good = m.gate_decisions.labels(provider="openai", decision="allowed")
    bad = m.gate_decisions.labels(provider="openai", decision="unknown_key")
    m.tally.add(bad, -1)  # a counter cannot go down
    m.tally.add(good, 5)
    labels = {"provider": "openai", "decision": "allowed"}
    assert registry.get_sample_value("tokenbook_gate_decisions_total", labels) == 5


def test_scrapes_during_increments_lose_nothing() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry)
    child = m.gate_decisions.labels(provider="openai", decision="allowed")
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            generate_latest(registry)

    scrapers = [threading.Thread(target=scrape) for _ in range(2)]
    for t in scrapers:
        t.start()
    for _ in range(20_000):
        m.tally.add(child)
    stop.set()
    for t in scrapers:
        t.join()
    labels = {"provider": "openai", "decision": "allowed"}
    assert registry.get_sample_value("tokenbook_gate_decisions_total", labels) == 20_000
