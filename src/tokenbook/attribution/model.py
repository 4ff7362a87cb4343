"""Value types of the key registry: who a key belongs to, and what the registry knows about it.

Plain frozen values, no I/O: the registry builds them from Redis hashes (`codec`), the gate reads
them on every request, the CLI prints them. Nothing here ever holds a secret or a key hash.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

#: The four attribution dimensions, in the order they appear in headers, labels and tables.
ATTRIBUTION_FIELDS: tuple[str, ...] = ("owner", "team", "agent", "workload")

#: The value every attribution field takes for traffic whose key the registry does not know
#: (when the gate's unknown-key policy is ``allow``). `validate_attribution` refuses it, so no
#: issued key can pass itself off as unattributed traffic.
UNATTRIBUTED = "unattributed"

#: key_id booked for unattributed traffic that carried no key at all.
NO_KEY_ID = "none"

STATUS_ACTIVE = "active"
STATUS_REVOKED = "revoked"
STATUSES: frozenset[str] = frozenset({STATUS_ACTIVE, STATUS_REVOKED})

#: A key tokenbook generated (``tb_…``): the gate removes it and may set a provider credential.
KIND_TOKENBOOK = "tokenbook"
#: A provider's own key registered for attribution: it is the credential and passes through.
KIND_IMPORTED = "imported"
KINDS: frozenset[str] = frozenset({KIND_TOKENBOOK, KIND_IMPORTED})

DENIED_REVOKED = "revoked"
DENIED_EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Attribution:
    """Who is spending: every key carries all four, validated at issuance."""

    owner: str
    team: str
    agent: str
    workload: str

    def items(self) -> Iterator[tuple[str, str]]:
        """(field, value) in `ATTRIBUTION_FIELDS` order."""
        yield "owner", self.owner
        yield "team", self.team
        yield "agent", self.agent
        yield "workload", self.workload


UNATTRIBUTED_ATTRIBUTION = Attribution(UNATTRIBUTED, UNATTRIBUTED, UNATTRIBUTED, UNATTRIBUTED)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One registered key (tokenbook-issued or imported), as stored in ``<prefix>key:<sha256>``."""

    key_id: str
    attribution: Attribution
    status: str  # STATUS_ACTIVE | STATUS_REVOKED
    kind: str  # KIND_TOKENBOOK | KIND_IMPORTED
    created_at: datetime
    created_by: str
    expires_at: datetime | None = None
    budget_daily_usd: float | None = None
    budget_monthly_usd: float | None = None
    upstream_credential_ref: str | None = None
    provider: str | None = None  # imported keys: the provider the key belongs to
    revoked_at: datetime | None = None
    revoked_by: str | None = None

    def denial_reason(self, now: datetime) -> str | None:
        """Why the gate must refuse this key at ``now`` (timezone-aware), or None if usable.

        Budgets are not checked here: spend lives in the ledger, and the gate combines both.
        """
        if self.status != STATUS_ACTIVE:
            return DENIED_REVOKED
        if self.expires_at is not None and now >= self.expires_at:
            return DENIED_EXPIRED
        return None

    def to_public_dict(self) -> dict[str, object]:
        """JSON-ready view for list/show/audit. Holds no secret and no hash, by construction."""
        out: dict[str, object] = {"key_id": self.key_id, "kind": self.kind, "status": self.status}
        out.update(self.attribution.items())
        out.update(
            provider=self.provider,
            created_at=_iso(self.created_at),
            created_by=self.created_by,
            expires_at=_iso(self.expires_at),
            budget_daily_usd=self.budget_daily_usd,
            budget_monthly_usd=self.budget_monthly_usd,
            upstream_credential_ref=self.upstream_credential_ref,
            revoked_at=_iso(self.revoked_at),
            revoked_by=self.revoked_by,
        )
        return out


@dataclass(frozen=True, slots=True)
class Unattributed:
    """The subject of a request whose key is unknown, when the gate lets it through anyway.

    Quacks like a `KeyRecord` where the gate needs it (``key_id``, ``attribution``), so headers,
    metadata and metric labels are built the same way for both. ``key_id`` is the key's
    `fingerprint` (or `NO_KEY_ID`), so repeated unknown keys can be told apart without storing
    them.
    """

    key_id: str
    attribution: Attribution = UNATTRIBUTED_ATTRIBUTION


def _iso(value: datetime | None) -> str | None:
    return None if value is None else format_time(value)


def format_time(value: datetime) -> str:
    """UTC, second precision, ``Z`` suffix: the one timestamp format the registry writes."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
