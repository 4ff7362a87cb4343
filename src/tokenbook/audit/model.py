"""The audit's plain values: what a source reads (`AuditRecord`) and the report (`AuditReport`).

Sources turn Prometheus, a /metrics scrape or the Redis ledger into `AuditRecord` rows; the
analysis turns rows into an `AuditReport`; the renderers print it. Nothing here computes.

JSON schema ``tokenbook.audit/v1`` (``tokenbook audit --format json``): the report below,
field for field, as one object. Amounts are USD floats, unrounded; ``*_pct`` are percentages
(0-100), unrounded, and the ``share_pct`` of ``keys`` (and of ``workloads``) sum to 100 whenever
``totals.cost_usd > 0`` (all 0 otherwise). Fields are only ever added within ``v1``::

    {
      "schema": "tokenbook.audit/v1",
      "generated_at": "2026-01-01T00:00:00Z",
      "source": {"kind": "metrics|prometheus|ledger", "location": "<url, no password>",
                 "since": "24h" | null, "window": "<in words>"},
      "catalogue_version": "<genai-prices version used for the cheaper candidates>",
      "totals": {"cost_usd", "tokens", "priced_tokens", "unpriced_tokens", "requests", "keys"},
      "keys": [{"rank", "key_id", "owner", "team", "agent", "workload", "cost_usd",
                "share_pct", "cumulative_pct", "tokens", "unpriced_tokens", "requests"}],
      "concentration": {"keys_for_half", "keys_total", "cost_usd", "share_pct", "sentence"},
      "efficiency": [{"key_id", "workload", "tokens_per_usd",
                      "band": {"kind": "p25-p75|min-max", "low", "high", "keys",
                               "fence_low": float|null, "fence_high": float|null},
                      "flag": "low|high" | null}],
      "workloads": [{"workload", "cost_usd", "share_pct", "tokens": {"<token_type>": n},
                     "models": [{"provider", "model", "cost_usd": float|null,
                                 "tokens": {"<token_type>": n}, "requests",
                                 "alternatives": [{"provider", "model", "cost_usd",
                                                   "saving_usd", "saving_pct"}]}]}],
      "unattributed": {"cost_usd", "share_pct", "tokens",
                       "keys": [{"key_id", "reason", "cost_usd", "tokens", "requests"}]}
    }

``keys`` is sorted by spend (highest first; ties by key id), ``workloads`` likewise, and each
workload's ``models`` too (unpriced ones last). ``cost_usd: null`` on a model means its usage
could not be priced: never read it as $0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tokenbook.usage.types import TokenUsage

SCHEMA = "tokenbook.audit/v1"

#: The attribution labels, in the order the report shows them.
ATTRIBUTION = ("key_id", "owner", "team", "agent", "workload")

#: The owner tokenbook books traffic of unknown keys under (``unknown_keys: allow``).
UNATTRIBUTED = "unattributed"
#: The value a bounded metrics label takes past its bound (`tokenbook.metrics.instruments`).
OVERFLOW = "other"
#: What a label reads when it was not recorded (empty, or not in the configured label set).
UNKNOWN = "unknown"

# `UnattributedKey.reason` values.
REASON_UNKNOWN_KEY = "unknown_key"  # owner "unattributed": a key the registry did not know
REASON_LABEL_OVERFLOW = "label_overflow"  # a label past its cardinality bound ("other")
REASON_MISSING_LABEL = "missing_label"  # a label not recorded at all

# `Band.kind` values.
BAND_QUARTILES = "p25-p75"
BAND_RANGE = "min-max"

# `KeyEfficiency.flag` values: far fewer (low) or far more (high) tokens per dollar than the
# workload's other keys.
FLAG_LOW = "low"
FLAG_HIGH = "high"


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """Usage of one attribution and model: one ledger entry, or a sum of metric samples.

    ``cost_usd`` is ``None`` when the usage could not be priced (never $0 for "unknown").
    ``requests`` is how many requests the row stands for (1 for a ledger entry).
    """

    key_id: str
    owner: str
    team: str
    agent: str
    workload: str
    provider: str
    model: str
    tokens: TokenUsage = field(default_factory=TokenUsage)
    cost_usd: float | None = None
    requests: int = 1


@dataclass(frozen=True, slots=True)
class SourceInfo:
    kind: str  # "metrics" | "prometheus" | "ledger"
    location: str  # where it was read from (passwords masked)
    since: str | None  # the --since window, or None (metrics: totals since process start)
    window: str  # the window in words, for the report's heading


@dataclass(frozen=True, slots=True)
class Totals:
    cost_usd: float
    tokens: int
    priced_tokens: int
    unpriced_tokens: int
    requests: int
    keys: int


@dataclass(frozen=True, slots=True)
class KeySpend:
    rank: int
    key_id: str
    owner: str
    team: str
    agent: str
    workload: str
    cost_usd: float
    share_pct: float
    cumulative_pct: float
    tokens: int
    unpriced_tokens: int
    requests: int


@dataclass(frozen=True, slots=True)
class Concentration:
    """How few keys make half the bill."""

    keys_for_half: int  # the fewest top keys whose spend is at least half of the total
    keys_total: int
    cost_usd: float  # what those keys spent
    share_pct: float  # their share of the total
    sentence: str


@dataclass(frozen=True, slots=True)
class Band:
    """Tokens per dollar of a workload's keys: the middle half, or the whole range."""

    kind: str  # BAND_QUARTILES with 4 or more priced keys, else BAND_RANGE
    low: float
    high: float
    keys: int  # priced keys in the workload
    fence_low: float | None  # below it a key is an outlier (None: too few keys to judge)
    fence_high: float | None


@dataclass(frozen=True, slots=True)
class KeyEfficiency:
    key_id: str
    workload: str
    tokens_per_usd: float
    band: Band
    flag: str | None  # FLAG_LOW, FLAG_HIGH or None


@dataclass(frozen=True, slots=True)
class Alternative:
    """A cheaper model for the same traffic, at its list price."""

    provider: str
    model: str
    cost_usd: float  # what the same requests would have cost at this model's prices
    saving_usd: float  # booked cost minus cost_usd
    saving_pct: float


@dataclass(frozen=True, slots=True)
class ModelSpend:
    provider: str
    model: str
    cost_usd: float | None  # None: could not be priced
    tokens: Mapping[str, int]  # by token type
    requests: int
    alternatives: tuple[Alternative, ...] = ()


@dataclass(frozen=True, slots=True)
class WorkloadSpend:
    workload: str
    cost_usd: float
    share_pct: float
    tokens: Mapping[str, int]  # the workload's token mix, by token type
    models: tuple[ModelSpend, ...]


@dataclass(frozen=True, slots=True)
class UnattributedKey:
    key_id: str
    reason: str  # REASON_*
    cost_usd: float
    tokens: int
    requests: int


@dataclass(frozen=True, slots=True)
class Unattributed:
    cost_usd: float
    share_pct: float
    tokens: int
    keys: tuple[UnattributedKey, ...]


@dataclass(frozen=True, slots=True)
class AuditReport:
    generated_at: str  # RFC 3339, UTC
    source: SourceInfo
    catalogue_version: str
    totals: Totals
    keys: tuple[KeySpend, ...]
    concentration: Concentration
    efficiency: tuple[KeyEfficiency, ...]
    workloads: tuple[WorkloadSpend, ...]
    unattributed: Unattributed
    schema: str = SCHEMA
