"""``keys audit``: what in the registry needs an admin's attention. Pure over raw entries.

Checked: records that cannot be a usable key (e.g. hashes written by hand without an owner),
revoked and expired keys still stored, records the key_id index does not reach (``keys show`` and
``keys revoke`` cannot address them) and index entries pointing at nothing.

Not checked yet (TODO, needs the ledger's data, see `NOT_CHECKED`): idle keys and keys over
budget.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from tokenbook.attribution.codec import MalformedRecord, decode_record
from tokenbook.attribution.model import DENIED_EXPIRED, DENIED_REVOKED, format_time
from tokenbook.attribution.registry import RawEntry

_HASH_HEX = re.compile(r"[0-9a-f]{64}")

MALFORMED = "malformed"
UNINDEXED = "unindexed"
DANGLING_INDEX = "dangling_index"
REVOKED = DENIED_REVOKED
EXPIRED = DENIED_EXPIRED

# Most urgent first: a malformed record is a key nobody can attribute.
_ORDER = {MALFORMED: 0, UNINDEXED: 1, DANGLING_INDEX: 2, EXPIRED: 3, REVOKED: 4}

NOT_CHECKED: tuple[str, ...] = (
    "idle keys: needs last-use data from the ledger (TODO)",
    "keys over budget: needs spend counters from the ledger (TODO)",
)


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem. ``subject`` is the key_id, or the Redis key name if no key_id is readable."""

    subject: str
    problem: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"subject": self.subject, "problem": self.problem, "detail": self.detail}


def audit_registry(
    entries: Sequence[RawEntry], index: Mapping[str, str | None], now: datetime
) -> list[Finding]:
    """Findings over the registry's raw entries and key_id index, most urgent first."""
    findings: list[Finding] = []
    hashes = {e.key_hash for e in entries}
    for entry in entries:
        findings.extend(_check_entry(entry, index, now))
    for key_id, key_hash in index.items():
        if key_hash is None or key_hash not in hashes:
            findings.append(
                Finding(key_id, DANGLING_INDEX, "the key_id index points at no record: delete it")
            )
    findings.sort(key=lambda f: (_ORDER[f.problem], f.subject))
    return findings


def _check_entry(entry: RawEntry, index: Mapping[str, str | None], now: datetime) -> list[Finding]:
    if entry.fields is None:
        return [Finding(entry.redis_key, MALFORMED, "not a hash: delete it or rewrite it")]
    if _HASH_HEX.fullmatch(entry.key_hash) is None:
        return [Finding(entry.redis_key, MALFORMED, "the name is not key:<sha256hex>: delete it")]
    try:
        record = decode_record(entry.fields)
    except MalformedRecord as exc:
        subject = entry.fields.get("key_id") or entry.redis_key
        detail = (
            f"{exc}: the gate treats it as an unknown key; fix the fields or revoke and reissue"
        )
        return [Finding(subject, MALFORMED, detail)]
    found: list[Finding] = []
    if index.get(record.key_id) != entry.key_hash:
        found.append(
            Finding(
                record.key_id,
                UNINDEXED,
                f"no {record.key_id} entry in the key_id index points at this record, so"
                " `keys show`/`keys revoke` cannot reach it",
            )
        )
    reason = record.denial_reason(now)
    if reason == DENIED_REVOKED:
        when = format_time(record.revoked_at) if record.revoked_at else "an unknown time"
        found.append(
            Finding(
                record.key_id,
                REVOKED,
                f"revoked at {when} by {record.revoked_by or 'unknown'} and still stored (refused)",
            )
        )
    elif reason == DENIED_EXPIRED and record.expires_at is not None:
        found.append(
            Finding(
                record.key_id,
                EXPIRED,
                f"expired at {format_time(record.expires_at)} and still stored (refused)",
            )
        )
    return found
