"""Label values are sanitised and bounded: past the bound, new values book as `other`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from tokenbook.metrics.instruments import OVERFLOW_VALUE, Metrics, sanitise


def test_bound_and_overflow_counter() -> None:
    reg = CollectorRegistry()
    m = Metrics(reg, label_limits={"model": 3})
    values = [m.guard("model", f"model-{i}") for i in range(10_000)]
    assert values[:3] == ["model-0", "model-1", "model-2"]
    assert set(values[3:]) == {OVERFLOW_VALUE}
    assert m.guard("model", "model-1") == "model-1"  # known values stay
    assert reg.get_sample_value("tokenbook_label_overflow_total", {"label": "model"}) == 9997.0


def test_sanitise() -> None:
    assert sanitise("") == "unknown"
    assert sanitise("gpt-4o-2024-08-06") == "gpt-4o-2024-08-06"
    assert sanitise('a"b\nc{d}') == "a_b_c_d_"
    assert len(sanitise("x" * 1000)) == 128
