"""The Redis ledger as an audit source: XRANGE over ``<prefix>ledger`` for the window.

The ledger is a Redis stream with one entry per booked request (DESIGN.md); entry ids are
``<milliseconds>-<seq>``, so the window is an id range and nothing outside it is read. Entries
are read in pages of `PAGE` so that a long window never holds one giant reply.

The entry layout belongs to `tokenbook.ledger.entry` (the writer): its `usage_record` turns an
entry into the UsageRecord mapping, and this module only maps that onto `AuditRecord`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from tokenbook.attribution.connect import redis_client
from tokenbook.audit.model import AuditRecord, SourceInfo
from tokenbook.audit.sources import SourceError, mask_url
from tokenbook.ledger.entry import OUTCOME_UNBOOKED, usage_record
from tokenbook.ledger.keyspace import Keyspace
from tokenbook.usage.types import TOKEN_TYPES, TokenUsage

PAGE = 1000
# Entries of requests that never reached a provider, or were never metered, carry no usage.
_NO_USAGE = frozenset({"denied", OUTCOME_UNBOOKED})


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def record_from_fields(fields: Mapping[Any, Any]) -> AuditRecord | None:
    """One ledger entry as a row; None for entries without usage (denied, unbooked)."""
    rec = usage_record(fields)
    if rec["outcome"] in _NO_USAGE:
        return None
    tokens = rec["tokens"]
    assert isinstance(tokens, dict)
    cost = rec.get("cost_usd")
    return AuditRecord(
        key_id=str(rec["key_id"]),
        owner=str(rec["owner"]),
        team=str(rec["team"]),
        agent=str(rec["agent"]),
        workload=str(rec["workload"]),
        provider=str(rec["provider"]),
        model=str(rec["model"]),
        tokens=TokenUsage(**{t: int(tokens[t]) for t in TOKEN_TYPES if t in tokens}),
        cost_usd=float(cost) if isinstance(cost, int | float) else None,
        requests=1,
    )


def window_start_id(since_s: float, now_s: float) -> str:
    """The first stream id inside a window of ``since_s`` seconds ending at ``now_s``."""
    return f"{max(0, int((now_s - since_s) * 1000))}-0"


def _next_id(entry_id: str) -> str:
    """The smallest id after ``entry_id`` (XRANGE's exclusive ``(`` needs Redis 6.2)."""
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


@dataclass(frozen=True, slots=True)
class LedgerSource:
    """Every ledger entry of the window."""

    url: str
    prefix: str
    since_s: float
    since: str  # the --since text, for the report
    clock: Callable[[], float] = field(default=time.time)

    def info(self) -> SourceInfo:
        where = f"{mask_url(self.url)} {Keyspace(self.prefix).ledger}"
        return SourceInfo("ledger", where, self.since, f"last {self.since}")

    def records(self) -> list[AuditRecord]:
        try:
            client = redis_client(self.url)
        except ValueError as exc:
            raise SourceError(f"--redis-url {mask_url(self.url)!r} is not usable ({exc})") from None
        return asyncio.run(self._read(client))

    async def _read(self, client: Redis) -> list[AuditRecord]:
        key = Keyspace(self.prefix).ledger
        start = window_start_id(self.since_s, self.clock())
        out: list[AuditRecord] = []
        try:
            if not await client.exists(key):
                raise SourceError(
                    f"no ledger stream {key!r} in {mask_url(self.url)}: check --redis-url and "
                    "--redis-prefix (or read --prometheus / --metrics-url instead)"
                )
            while True:
                page = await client.xrange(key, min=start, max="+", count=PAGE) or []
                last = ""
                for entry_id, raw in page:
                    last = _text(entry_id or b"")
                    record = record_from_fields(raw or {})
                    if record is not None:
                        out.append(record)
                if len(page) < PAGE or not last:
                    break
                start = _next_id(last)
        except RedisError as exc:
            raise SourceError(
                f"cannot read the ledger at {mask_url(self.url)}: {exc}; check --redis-url"
            ) from None
        finally:
            await client.aclose()
        return out
