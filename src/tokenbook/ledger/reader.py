"""Reading the ledger stream: the last entries, new entries as they come, a time range.

Stream ids are the time Redis appended an entry, which is the booking time except for entries
replayed from a spool after an outage: those are appended later than they were booked. So a
time range is selected on each entry's own ``time`` field, scanning from the range's start
(less ``CLOCK_SKEW_S`` for clocks that disagree between tokenbook and Redis) to the end of the
stream; the stream is capped (``ledger_maxlen``), which bounds the scan.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from tokenbook.ledger.keyspace import Keyspace

CLOCK_SKEW_S = 300
_PAGE = 1000

Entry = tuple[str, dict[str, str]]


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _entry(raw_id: Any, fields: Any) -> Entry:
    return _text(raw_id), {_text(k): _text(v) for k, v in fields.items()}


def entry_time(fields: dict[str, str]) -> datetime | None:
    try:
        when = datetime.fromisoformat(fields.get("time", ""))
    except ValueError:
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


async def last(client: Redis, ks: Keyspace, n: int) -> list[Entry]:
    """The last ``n`` entries, oldest first."""
    if n <= 0:
        return []
    raw: list[Any] = await client.xrevrange(ks.ledger, "+", "-", count=n) or []
    return [_entry(i, f) for i, f in reversed(raw)]


async def follow(
    client: Redis, ks: Keyspace, after: str = "$", *, block_ms: int = 1000
) -> AsyncIterator[Entry]:
    """Entries appended after ``after`` (a stream id, ``$`` = from now), forever."""
    last_id = after
    while True:
        reply: Any = await client.xread({ks.ledger: last_id}, count=_PAGE, block=block_ms)
        for _stream, entries in reply or ():
            for raw_id, fields in entries:
                entry = _entry(raw_id, fields)
                last_id = entry[0]
                yield entry


async def between(
    client: Redis, ks: Keyspace, since: datetime | None, until: datetime | None
) -> AsyncIterator[Entry]:
    """Entries booked in ``[since, until)`` (either end open when None), in stream order."""
    start = "-" if since is None else f"{max(0, int(since.timestamp()) - CLOCK_SKEW_S) * 1000}-0"
    while True:
        page: list[Any] = await client.xrange(ks.ledger, start, "+", count=_PAGE) or []
        if not page:
            return
        for raw_id, fields in page:
            entry = _entry(raw_id, fields)
            when = entry_time(entry[1])
            if when is None:
                continue
            if since is not None and when < since:
                continue
            if until is not None and when >= until:
                continue
            yield entry
        start = "(" + _text(page[-1][0])
