"""One ledger entry: what was booked for one request, in every shape it takes.

The fields are those of ``UsageRecord`` (protos/tokenbook/v1/usage.proto): request id, time,
key id, owner, team, agent, workload, provider, model, tokens by type, cost (absent when the
usage could not be priced, never 0 for "unknown"), outcome and source. Shapes:

- the Redis stream entry (flat string fields; token counts as ``tokens_<type>``, only those the
  provider stated; ``booking_id`` added for tracing replays);
- the spool line (JSON, everything needed to redo the booking exactly);
- the export record: the proto's JSON mapping (``tokens`` nested) for JSONL, flat for CSV.

``booking_id`` is the idempotency id: ``<request_id>.<admission_id>`` when the gate admitted the
request (the admission id is random per admission, so a client that reuses an ``x-request-id``
cannot make two requests collapse into one booking), else the request id alone.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from tokenbook.ledger.periods import rfc3339, to_micro
from tokenbook.usage.types import TOKEN_TYPES

OUTCOME_UNBOOKED = "unbooked"
SPOOL_VERSION = 1

#: The plain string fields of a record, in export order.
SCALAR_FIELDS: tuple[str, ...] = (
    "request_id",
    "time",
    "key_id",
    "owner",
    "team",
    "agent",
    "workload",
    "provider",
    "model",
)
#: Export columns, in order (CSV header; the JSONL record nests the token columns).
RECORD_FIELDS: tuple[str, ...] = (
    *SCALAR_FIELDS,
    *(f"tokens_{t}" for t in TOKEN_TYPES),
    "cost_usd",
    "outcome",
    "source",
)


def booking_id(request_id: str, admission_id: str) -> str:
    if admission_id:
        return f"{request_id}.{admission_id}"
    # Without either id nothing can be deduplicated; never let such bookings collapse into one.
    return request_id or f"anonymous.{os.urandom(8).hex()}"


# (token type, its stream field), in the ledger's field order; built once, not per booking.
_TOKEN_FIELDS = tuple((t, f"tokens_{t}") for t in TOKEN_TYPES)


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    booking_id: str
    request_id: str
    booked_at: float  # Unix time; decides the spend period and the ledger ``time``
    key_id: str
    owner: str
    team: str
    agent: str
    workload: str
    provider: str
    model: str
    tokens: Mapping[str, int] = field(default_factory=dict)
    cost_usd: float | None = None
    outcome: str = "ok"
    source: str = "reported"
    # Spend is counted for the key scope only when the key is a registered one: unknown keys
    # (``unknown_keys: allow``) are fingerprints a client chooses, and must not create counters.
    attributed: bool = True

    @property
    def unbooked(self) -> bool:
        return self.outcome == OUTCOME_UNBOOKED

    @property
    def cost_micro(self) -> int:
        return 0 if self.cost_usd is None else max(0, to_micro(self.cost_usd))

    def scopes(self) -> list[tuple[str, str]]:
        """(scope, id) pairs whose spend counters this entry adds to."""
        out = [("key", self.key_id)] if self.attributed else []
        out += [("agent", self.agent), ("workload", self.workload), ("team", self.team)]
        return out

    def stream_fields(self) -> list[str]:
        """Flat field/value list for XADD."""
        f = [
            "request_id", self.request_id,
            "time", rfc3339(self.booked_at),
            "key_id", self.key_id,
            "owner", self.owner,
            "team", self.team,
            "agent", self.agent,
            "workload", self.workload,
            "provider", self.provider,
            "model", self.model,
        ]  # fmt: skip
        tokens = self.tokens
        for name, field_name in _TOKEN_FIELDS:
            count = tokens.get(name)
            if count is not None:
                f.append(field_name)
                f.append(str(int(count)))
        if self.cost_usd is not None:
            f += ["cost_usd", repr(float(self.cost_usd))]
        f += ["outcome", self.outcome, "source", self.source, "booking_id", self.booking_id]
        return f

    def to_spool(self) -> bytes:
        """One JSONL line (with the newline)."""
        data = {
            "v": SPOOL_VERSION,
            "booking_id": self.booking_id,
            "request_id": self.request_id,
            "booked_at": self.booked_at,
            "key_id": self.key_id,
            "owner": self.owner,
            "team": self.team,
            "agent": self.agent,
            "workload": self.workload,
            "provider": self.provider,
            "model": self.model,
            "tokens": dict(self.tokens),
            "cost_usd": self.cost_usd,
            "outcome": self.outcome,
            "source": self.source,
            "attributed": self.attributed,
        }
        return orjson.dumps(data) + b"\n"

    @classmethod
    def from_spool(cls, line: bytes) -> LedgerEntry:
        """Parse a spool line; ValueError if it is not one (e.g. a torn last line)."""
        try:
            d = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(d, dict) or d.get("v") != SPOOL_VERSION:
            raise ValueError("not a version-1 spool entry")
        try:
            tokens = {str(k): int(v) for k, v in (d.get("tokens") or {}).items()}
            cost = d.get("cost_usd")
            return cls(
                booking_id=str(d["booking_id"]),
                request_id=str(d["request_id"]),
                booked_at=float(d["booked_at"]),
                key_id=str(d["key_id"]),
                owner=str(d["owner"]),
                team=str(d["team"]),
                agent=str(d["agent"]),
                workload=str(d["workload"]),
                provider=str(d["provider"]),
                model=str(d["model"]),
                tokens=tokens,
                cost_usd=None if cost is None else float(cost),
                outcome=str(d["outcome"]),
                source=str(d["source"]),
                attributed=bool(d.get("attributed", True)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"incomplete spool entry: {exc}") from None


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def flat_record(fields: Mapping[Any, Any]) -> dict[str, str]:
    """A stream entry's fields as ``str -> str``, restricted to `RECORD_FIELDS` (CSV rows)."""
    f = {_text(k): _text(v) for k, v in fields.items()}
    return {name: f.get(name, "") for name in RECORD_FIELDS}


def usage_record(fields: Mapping[Any, Any]) -> dict[str, object]:
    """A stream entry as the UsageRecord proto's JSON mapping (absent values left out)."""
    f = {_text(k): _text(v) for k, v in fields.items()}
    out: dict[str, object] = {name: f.get(name, "") for name in SCALAR_FIELDS}
    tokens: dict[str, int] = {}
    for name in TOKEN_TYPES:
        raw = f.get(f"tokens_{name}")
        if raw:
            try:
                tokens[name] = int(raw)
            except ValueError:
                continue
    out["tokens"] = tokens
    if f.get("cost_usd"):
        with contextlib.suppress(ValueError):
            out["cost_usd"] = float(f["cost_usd"])
    out["outcome"] = f.get("outcome", "")
    out["source"] = f.get("source", "")
    return out
