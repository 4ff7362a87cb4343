"""UTC periods, the money unit, Redis key names."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenbook.ledger.keyspace import Keyspace
from tokenbook.ledger.periods import (
    DAILY,
    MONTHLY,
    format_usd,
    from_micro,
    period_of,
    periods_at,
    rfc3339,
    to_micro,
)


def test_daily_and_monthly_labels_and_reset_times() -> None:
    when = datetime(2026, 1, 31, 23, 59, 59, tzinfo=UTC)
    day = period_of(DAILY, when)
    month = period_of(MONTHLY, when)
    assert day.label == "d:2026-01-31"
    assert day.end == datetime(2026, 2, 1, tzinfo=UTC)
    assert month.label == "m:2026-01"
    assert month.end == datetime(2026, 2, 1, tzinfo=UTC)


def test_december_rolls_into_next_year() -> None:
    month = period_of(MONTHLY, datetime(2025, 12, 15, tzinfo=UTC))
    assert month.end == datetime(2026, 1, 1, tzinfo=UTC)


def test_periods_are_utc_whatever_the_offset() -> None:
    # 2026-03-01 01:30 in UTC+02:00 is still February 28th in UTC.
    local = datetime(2026, 3, 1, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    assert period_of(DAILY, local).label == "d:2026-02-28"
    assert period_of(MONTHLY, local).label == "m:2026-02"
    # naive means UTC
    assert period_of(DAILY, datetime(2026, 3, 1, 1, 30)).label == "d:2026-03-01"


def test_counters_outlive_their_period() -> None:
    day, month = periods_at(datetime(2026, 5, 10, 12, tzinfo=UTC).timestamp())
    assert day.expire_at == int(datetime(2026, 6, 20, tzinfo=UTC).timestamp())  # + 40 days
    assert month.expire_at > int(datetime(2027, 6, 1, tzinfo=UTC).timestamp())


def test_unknown_period_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown period kind"):
        period_of("weekly", datetime.now(UTC))


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2200, 1, 1)))
def test_every_instant_is_inside_its_periods(when: datetime) -> None:
    for kind in (DAILY, MONTHLY):
        p = period_of(kind, when)
        assert p.start <= when.replace(tzinfo=UTC) < p.end


def test_micro_dollars_round_to_nearest() -> None:
    assert to_micro(0.000307) == 307
    assert to_micro(1.5) == 1_500_000
    assert to_micro(0.0000004) == 0
    assert to_micro(0.0000006) == 1
    assert from_micro(2_500_000) == 2.5
    with pytest.raises(ValueError, match="finite"):
        to_micro(float("nan"))


@given(st.integers(min_value=0, max_value=10**13))
def test_micro_round_trip(micro: int) -> None:
    assert to_micro(from_micro(micro)) == micro


def test_format_usd() -> None:
    assert format_usd(5_000_000) == "$5.00"
    assert format_usd(1_250_000) == "$1.25"
    assert format_usd(307) == "$0.000307"
    assert format_usd(-6_210) == "-$0.00621"


def test_rfc3339_is_utc_with_milliseconds() -> None:
    t = datetime(2026, 1, 2, 3, 4, 5, 678_900, tzinfo=UTC).timestamp()
    assert rfc3339(t) == "2026-01-02T03:04:05.678Z"


def test_key_names_follow_the_design_layout() -> None:
    ks = Keyspace("tb:")
    assert ks.spend("agent", "crawler", "d:2026-01-31") == "tb:spend:agent:crawler:d:2026-01-31"
    assert ks.ledger == "tb:ledger"
    assert ks.booked("r1.a1") == "tb:booked:r1.a1"
    assert ks.control_channel == "tb:control"
    assert ks.registry_events == "tb:events"
    assert Keyspace().budgets == "tokenbook:budgets"


def test_rfc3339_agrees_with_datetime_across_seconds_and_milliseconds() -> None:
    import random

    rng = random.Random(7)
    for _ in range(5000):
        t = rng.uniform(1.7e9, 1.9e9)
        t = rng.choice([t, float(int(t)), int(t) + 0.9995, int(t) + 0.0005])
        when = datetime.fromtimestamp(t, UTC)
        want = when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"
        assert rfc3339(t) == want, t
