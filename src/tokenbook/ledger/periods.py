"""Spend periods (UTC days and months) and the money unit of the spend counters.

Money: spend counters, reservations and budgets in Redis are **integer micro-dollars**
(1 USD = 1,000,000). Redis adds them with INCRBY, exactly and atomically, with no float drift
however many requests are added; a request's cost is rounded to the nearest micro-dollar once,
when it is booked (so a counter is off by at most 0.5 µ$ per request, while the ledger keeps
each request's exact cost). Lua compares them as doubles, exactly up to 2^53 µ$ ($9e9).

Periods are UTC: ``d:YYYY-MM-DD`` and ``m:YYYY-MM``. A period resets at 00:00 UTC of the next
day / month; that instant is what a budget refusal tells the client.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

MICRO_PER_USD = 1_000_000

DAILY = "daily"
MONTHLY = "monthly"
PERIOD_KINDS: tuple[str, ...] = (DAILY, MONTHLY)

#: Scopes that spend is counted for and budgets can be set on (DESIGN.md "Keys and the registry").
SCOPES: tuple[str, ...] = ("key", "agent", "workload", "team")

# How long a finished period's counter stays readable (reports of "last month", daily detail).
_RETENTION = {DAILY: timedelta(days=40), MONTHLY: timedelta(days=400)}


def to_micro(usd: float) -> int:
    """US dollars -> integer micro-dollars, rounded to nearest (ValueError if not finite)."""
    if not math.isfinite(usd):
        raise ValueError(f"not a finite amount of money: {usd!r}")
    return round(usd * MICRO_PER_USD)


def from_micro(micro: int) -> float:
    return micro / MICRO_PER_USD


def format_usd(micro: int) -> str:
    """``$1.25``, ``$0.000307``: cents when whole cents, else every significant micro-dollar."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO_PER_USD)
    if frac % 10_000 == 0:
        return f"{sign}${whole}.{frac // 10_000:02d}"
    return f"{sign}${whole}.{frac:06d}".rstrip("0")


@dataclass(frozen=True, slots=True)
class Period:
    """One UTC day or month."""

    kind: str  # DAILY | MONTHLY
    start: datetime
    end: datetime  # exclusive: when the period resets

    @property
    def label(self) -> str:
        """The ``<period>`` part of a Redis key: ``d:2025-01-31`` or ``m:2025-01``."""
        if self.kind == DAILY:
            return "d:" + self.start.strftime("%Y-%m-%d")
        return "m:" + self.start.strftime("%Y-%m")

    @property
    def expire_at(self) -> int:
        """Unix time at which a counter of this period may disappear."""
        return int((self.end + _RETENTION[self.kind]).timestamp())


def period_of(kind: str, when: datetime) -> Period:
    """The period of ``kind`` containing ``when`` (timezone-aware; naive means UTC)."""
    t = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    if kind == DAILY:
        start = t.replace(hour=0, minute=0, second=0, microsecond=0)
        return Period(DAILY, start, start + timedelta(days=1))
    if kind == MONTHLY:
        start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        nxt = start.replace(year=start.year + 1, month=1) if start.month == 12 else None
        end = nxt or start.replace(month=start.month + 1)
        return Period(MONTHLY, start, end)
    raise ValueError(f"unknown period kind {kind!r}; expected one of {PERIOD_KINDS}")


def periods_at(unix_time: float) -> tuple[Period, Period]:
    """(day, month) containing a Unix time."""
    when = datetime.fromtimestamp(unix_time, UTC)
    return period_of(DAILY, when), period_of(MONTHLY, when)


_last_second: list[tuple[int, str]] = [(-1, "")]


def rfc3339(unix_time: float) -> str:
    """``2025-01-31T12:00:00.123Z``: the ledger's timestamp format (UTC, milliseconds)."""
    ms = round(unix_time * 1_000_000) // 1000  # as fromtimestamp rounds: to the microsecond
    second, frac = divmod(ms, 1000)
    cached_second, prefix = _last_second[0]
    if cached_second != second:  # strftime once per second: per booking it was 6 µs
        prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _last_second[0] = (second, prefix)
    return f"{prefix}{frac:03d}Z"
