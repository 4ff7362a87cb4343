"""The Redis ledger as an audit source: every entry booked in the window.

The ledger is a Redis stream with one entry per booked request (DESIGN.md), written and laid
out by `tokenbook.ledger`; this module reads it through that package's own reader
(`tokenbook.ledger.reader.between`: XRANGE in pages from the window's start, each entry kept by
its own booking ``time``, so entries replayed from a spool after an outage count in the window
they were booked in) and maps each entry (`tokenbook.ledger.entry.usage_record`) onto an
`AuditRecord`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from tokenbook.attribution.connect import redis_client
from tokenbook.audit.model import AuditRecord, SourceInfo
from tokenbook.audit.sources import SourceError, mask_url
from tokenbook.ledger.entry import OUTCOME_UNBOOKED, usage_record
from tokenbook.ledger.keyspace import Keyspace
from tokenbook.ledger.reader import between
from tokenbook.usage.types import TOKEN_TYPES, TokenUsage

# Entries of requests that never reached a provider, or were never metered, carry no usage.
_NO_USAGE = frozenset({"denied", OUTCOME_UNBOOKED})


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
        keyspace = Keyspace(self.prefix)
        since = datetime.fromtimestamp(self.clock() - self.since_s, UTC)
        out: list[AuditRecord] = []
        try:
            if not await client.exists(keyspace.ledger):
                raise SourceError(
                    f"no ledger stream {keyspace.ledger!r} in {mask_url(self.url)}: check "
                    "--redis-url and --redis-prefix (or read --prometheus / --metrics-url instead)"
                )
            async for _entry_id, fields in between(client, keyspace, since, None):
                record = record_from_fields(fields)
                if record is not None:
                    out.append(record)
        except RedisError as exc:
            raise SourceError(
                f"cannot read the ledger at {mask_url(self.url)}: {exc}; check --redis-url"
            ) from None
        finally:
            await client.aclose()
        return out
