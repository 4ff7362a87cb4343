"""KeyRecord <-> Redis hash fields (``<prefix>key:<sha256hex>``).

The hash layout is a contract (DESIGN.md "Keys and the registry"): ``key_id owner team agent
workload status created_at created_by expires_at budget_daily_usd budget_monthly_usd`` plus the
optional ``upstream_credential_ref``, ``kind``, ``provider``, ``revoked_at``, ``revoked_by``.
Timestamps are UTC ISO 8601 (``2025-01-31T12:00:00Z``); "no value" is an empty string or an
absent field. Hashes may be written by hand or by older versions, so decoding is strict about
what makes a key usable (the attribution) and names every problem it finds, for ``keys audit``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TypeAlias

from tokenbook.attribution.keys import is_key_id, name_problem
from tokenbook.attribution.model import (
    ATTRIBUTION_FIELDS,
    KIND_TOKENBOOK,
    KINDS,
    STATUSES,
    Attribution,
    KeyRecord,
    format_time,
)

#: HGETALL's answer: bytes or str depending on the client's ``decode_responses``.
Fields: TypeAlias = Mapping[bytes, bytes] | Mapping[str, str] | Mapping[bytes | str, bytes | str]


class MalformedRecord(ValueError):
    """A registry hash that cannot be a usable key; ``problems`` says why, one item per field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def normalize(fields: Fields) -> dict[str, str]:
    """HGETALL output as ``str -> str``, whether the client decodes responses or not."""
    return {_text(k): _text(v) for k, v in fields.items()}


def encode_record(record: KeyRecord) -> dict[str, str]:
    """The hash fields for ``record``. Always-present fields are written even when empty."""
    fields = {
        "key_id": record.key_id,
        **dict(record.attribution.items()),
        "status": record.status,
        "kind": record.kind,
        "created_at": format_time(record.created_at),
        "created_by": record.created_by,
        "expires_at": "" if record.expires_at is None else format_time(record.expires_at),
        "budget_daily_usd": _fmt_money(record.budget_daily_usd),
        "budget_monthly_usd": _fmt_money(record.budget_monthly_usd),
    }
    optional = {
        "upstream_credential_ref": record.upstream_credential_ref,
        "provider": record.provider,
        "revoked_at": None if record.revoked_at is None else format_time(record.revoked_at),
        "revoked_by": record.revoked_by,
    }
    fields.update({k: v for k, v in optional.items() if v is not None})
    return fields


def decode_record(fields: Fields) -> KeyRecord:
    """A KeyRecord from hash fields, or `MalformedRecord` listing every problem."""
    f = normalize(fields)
    problems: list[str] = []

    def required(name: str) -> str:
        value = f.get(name, "")
        if value == "":
            problems.append(f"missing {name}")
        return value

    key_id = required("key_id")
    if key_id and not is_key_id(key_id):
        problems.append(f"key_id {key_id!r} is not 12 lowercase base32 characters")

    names: dict[str, str] = {}
    for name in ATTRIBUTION_FIELDS:
        value = f.get(name, "")
        problem = name_problem(value)
        if problem == "missing":
            problems.append(f"missing {name}")
        elif problem is not None:
            problems.append(f"{name} {value!r} is {problem}")
        names[name] = value

    status = required("status")
    if status and status not in STATUSES:
        problems.append(f"status {status!r} is not one of {sorted(STATUSES)}")
    kind = f.get("kind") or KIND_TOKENBOOK  # DESIGN's original layout had no kind field
    if kind not in KINDS:
        problems.append(f"kind {kind!r} is not one of {sorted(KINDS)}")

    created_at = _time(f, "created_at", problems, required=True)
    expires_at = _time(f, "expires_at", problems)
    revoked_at = _time(f, "revoked_at", problems)
    daily = _money(f, "budget_daily_usd", problems)
    monthly = _money(f, "budget_monthly_usd", problems)

    if problems or created_at is None:
        raise MalformedRecord(problems or ["missing created_at"])
    return KeyRecord(
        key_id=key_id,
        attribution=Attribution(**names),
        status=status,
        kind=kind,
        created_at=created_at,
        created_by=f.get("created_by", ""),
        expires_at=expires_at,
        budget_daily_usd=daily,
        budget_monthly_usd=monthly,
        upstream_credential_ref=f.get("upstream_credential_ref") or None,
        provider=f.get("provider") or None,
        revoked_at=revoked_at,
        revoked_by=f.get("revoked_by") or None,
    )


def parse_time(text: str) -> datetime:
    """ISO 8601 date or datetime; naive values are UTC. ValueError if unparseable."""
    value = datetime.fromisoformat(text)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _time(
    f: dict[str, str], name: str, problems: list[str], *, required: bool = False
) -> datetime | None:
    text = f.get(name, "")
    if text == "":
        if required:
            problems.append(f"missing {name}")
        return None
    try:
        return parse_time(text)
    except ValueError:
        problems.append(f"{name} {text!r} is not an ISO 8601 time")
        return None


def _money(f: dict[str, str], name: str, problems: list[str]) -> float | None:
    text = f.get(name, "")
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        problems.append(f"{name} {text!r} is not a non-negative number")
        return None
    return value


def _fmt_money(value: float | None) -> str:
    return "" if value is None else repr(float(value))
