"""Names of every Redis key the ledger package uses (prefix configurable, default ``tokenbook:``).

::

    <p>spend:<scope>:<id>:<period>     string  spend in integer micro-dollars (INCRBY), EXPIREAT
                                                period end + 40 days (daily) / 400 days (monthly)
    <p>reserved:<scope>:<id>:<period>  string  micro-dollars held by admitted, unsettled requests
    <p>hold:<booking_id>               hash    one request's reservation: reserved key -> amount
    <p>holds                           zset    booking ids with a hold, scored by when it expires
                                                (the safety net for a gate replica that died)
    <p>booked:<booking_id>             string  idempotency marker, ``b`` booked / ``u`` unbooked,
                                                EX ``ledger_idempotency_ttl_s`` (default 1 day)
    <p>ledger                          stream  one entry per booked request (XADD MAXLEN ~)
    <p>budgets                         hash    ``<scope>:<id>`` -> {"daily_usd", "monthly_usd", ...}
    <p>suspended                       hash    agent -> {"by", "at", "reason"}
    <p>control:version                 string  bumped by every budget / suspension change
    <p>control                         pub/sub {"type": "budget"|"suspend"|"resume", ...}

``scope`` is ``key`` (id = key_id), ``agent``, ``workload`` or ``team``. The control channel is
separate from the registry's ``<p>events`` on purpose: the key cache treats any event it cannot
read as "clear everything".

The scripts touch several keys without a common hash tag: Redis Cluster is not supported (as
for the key registry).
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "tokenbook:"


@dataclass(frozen=True, slots=True)
class Keyspace:
    prefix: str = DEFAULT_PREFIX

    def spend(self, scope: str, ident: str, period: str) -> str:
        return f"{self.prefix}spend:{scope}:{ident}:{period}"

    def reserved(self, scope: str, ident: str, period: str) -> str:
        return f"{self.prefix}reserved:{scope}:{ident}:{period}"

    def hold(self, booking_id: str) -> str:
        return f"{self.prefix}hold:{booking_id}"

    @property
    def holds(self) -> str:
        return f"{self.prefix}holds"

    def booked(self, booking_id: str) -> str:
        return f"{self.prefix}booked:{booking_id}"

    @property
    def ledger(self) -> str:
        return f"{self.prefix}ledger"

    @property
    def budgets(self) -> str:
        return f"{self.prefix}budgets"

    @property
    def suspended(self) -> str:
        return f"{self.prefix}suspended"

    @property
    def control_version(self) -> str:
        return f"{self.prefix}control:version"

    @property
    def control_channel(self) -> str:
        return f"{self.prefix}control"

    def key_record(self, key_hash: str) -> str:
        """The key registry's hash (budgets on keys live there)."""
        return f"{self.prefix}key:{key_hash}"

    def key_index(self, key_id: str) -> str:
        return f"{self.prefix}keyid:{key_id}"

    @property
    def registry_events(self) -> str:
        return f"{self.prefix}events"
