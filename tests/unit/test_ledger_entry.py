"""LedgerEntry in its shapes: stream fields, spool line, UsageRecord JSON, CSV row."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tokenbook.ledger.entry import (
    RECORD_FIELDS,
    LedgerEntry,
    booking_id,
    flat_record,
    usage_record,
)
from tokenbook.v1 import usage_pb2

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()


def _entry(**kw: object) -> LedgerEntry:
    base: dict[str, object] = {
        "booking_id": "req-1.ab01",
        "request_id": "req-1",
        "booked_at": T0,
        "key_id": "abcdefghijkl",
        "owner": "alice",
        "team": "search",
        "agent": "crawler",
        "workload": "indexing",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "tokens": {"input": 125, "cached_input": 1024, "output": 353},
        "cost_usd": 0.00030705,
    }
    base.update(kw)
    return LedgerEntry(**base)  # type: ignore[arg-type]


def _pairs(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def test_booking_id_includes_the_admission_id() -> None:
    assert booking_id("req-1", "ab01") == "req-1.ab01"
    assert booking_id("req-1", "") == "req-1"
    # neither id: unique, never collapsing two bookings into one
    assert booking_id("", "") != booking_id("", "")


def test_stream_fields_have_the_usage_record_fields() -> None:
    f = _pairs(_entry().stream_fields())
    assert f["time"] == "2026-01-02T03:04:05.000Z"
    assert f["tokens_input"] == "125"
    assert "tokens_reasoning" not in f  # not stated, not zero
    assert float(f["cost_usd"]) == pytest.approx(0.00030705)
    assert f["outcome"] == "ok"
    assert f["source"] == "reported"
    assert f["booking_id"] == "req-1.ab01"


def test_unpriced_has_no_cost_field() -> None:
    f = _pairs(_entry(cost_usd=None).stream_fields())
    assert "cost_usd" not in f
    assert _entry(cost_usd=None).cost_micro == 0
    assert _entry().cost_micro == 307


def test_spool_round_trip() -> None:
    e = _entry(attributed=False, outcome="aborted", source="estimated")
    line = e.to_spool()
    assert line.endswith(b"\n")
    assert LedgerEntry.from_spool(line) == e


@pytest.mark.parametrize(
    "line",
    [b'{"v":1,"booking_id":"x"', b"[]", b'{"v":2}', b'{"v":1,"booking_id":"x"}'],
)
def test_bad_spool_lines_are_refused(line: bytes) -> None:
    with pytest.raises(ValueError, match=r"JSON|spool entry"):
        LedgerEntry.from_spool(line)


def test_scopes_skip_the_key_of_unattributed_traffic() -> None:
    assert _entry().scopes()[0] == ("key", "abcdefghijkl")
    assert [s for s, _ in _entry(attributed=False).scopes()] == ["agent", "workload", "team"]


def test_usage_record_is_the_proto_json_mapping() -> None:
    stream = {k.encode(): v.encode() for k, v in _pairs(_entry().stream_fields()).items()}
    record = usage_record(stream)
    # It parses as the proto itself: same field names, same nesting.
    from google.protobuf import json_format

    msg = json_format.ParseDict(record, usage_pb2.UsageRecord())
    assert msg.tokens.cached_input == 1024
    assert not msg.tokens.HasField("reasoning")
    assert msg.HasField("cost_usd")
    assert msg.key_id == "abcdefghijkl"
    unpriced = usage_record(_pairs(_entry(cost_usd=None).stream_fields()))
    assert "cost_usd" not in unpriced


def test_flat_record_has_every_csv_column() -> None:
    row = flat_record(_pairs(_entry().stream_fields()))
    assert list(row) == list(RECORD_FIELDS)
    assert row["tokens_reasoning"] == ""
    assert row["tokens_output"] == "353"
