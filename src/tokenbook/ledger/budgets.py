"""Budgets and agent suspensions: the values, and the admin operations on Redis.

Where they live (see `keyspace`):

- a key's budget is part of its registry hash (``budget_daily_usd``, ``budget_monthly_usd``),
  so the gate gets it with the key record it has cached anyway; changing it publishes the
  registry's ``changed`` event, which drops the cached record on every replica;
- agent, workload and team budgets are fields ``<scope>:<id>`` of the ``<p>budgets`` hash;
- suspended agents are fields of the ``<p>suspended`` hash.

Every change to the last two is one script (`scripts.CONTROL_WRITE`) that writes the hash,
bumps ``<p>control:version`` and publishes on ``<p>control``, so a replica either sees the
event or, failing that, the new version at its next poll (`controls.Controls`).

Errors::

    ControlError
    ├── ControlUnavailable   Redis down or refusing: CLI exit 1
    └── NoSuchKey            ``--scope key`` with an unknown key id: CLI exit 1
    ValueError               a malformed scope, name or amount (usage error, CLI exit 2)
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import redis.exceptions as rex
from redis.asyncio import Redis

from tokenbook.attribution.keys import NAME_RE, is_key_id, name_problem
from tokenbook.attribution.model import format_time
from tokenbook.attribution.registry import describe_redis
from tokenbook.ledger.keyspace import Keyspace
from tokenbook.ledger.periods import (
    DAILY,
    MONTHLY,
    SCOPES,
    from_micro,
    period_of,
    to_micro,
)
from tokenbook.ledger.scripts import CONTROL_WRITE, KEY_BUDGET

#: Scopes whose budgets live in ``<p>budgets`` (a key's budget lives in its registry hash).
CONTROL_SCOPES: tuple[str, ...] = ("agent", "workload", "team")


class Keep:
    """Marker type for `BudgetStore.set_budget`: leave this limit as it is."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP = Keep()


class ControlError(Exception):
    """Base of the errors of the admin operations."""


class ControlUnavailable(ControlError):
    """Redis could not answer; the message says what to check."""


class NoSuchKey(ControlError, LookupError):
    """``--scope key`` names a key id the registry does not have."""


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def validate_scope_id(scope: str, ident: str) -> None:
    """ValueError unless ``scope`` is a budget scope and ``ident`` a well-formed id for it."""
    if scope not in SCOPES:
        raise ValueError(f"scope {scope!r} is not one of {', '.join(SCOPES)}")
    if scope == "key":
        if not is_key_id(ident):
            raise ValueError(f"{ident!r} is not a key id (12 characters a-z, 2-7)")
    else:
        problem = name_problem(ident)
        if problem is not None:
            raise ValueError(f"{scope} name {ident!r} is {problem}: it must match {NAME_RE}")


def check_usd(name: str, value: float | None) -> float | None:
    if value is not None and (not math.isfinite(value) or value < 0):
        raise ValueError(f"{name} must be a non-negative number of US dollars, not {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Budget:
    scope: str
    ident: str
    daily_usd: float | None = None
    monthly_usd: float | None = None
    updated_at: str = ""
    updated_by: str = ""

    def limit_usd(self, kind: str) -> float | None:
        return self.daily_usd if kind == DAILY else self.monthly_usd

    def limit_micro(self, kind: str) -> int | None:
        usd = self.limit_usd(kind)
        return None if usd is None else to_micro(usd)

    @property
    def empty(self) -> bool:
        return self.daily_usd is None and self.monthly_usd is None

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "daily_usd": self.daily_usd,
                "monthly_usd": self.monthly_usd,
                "updated_at": self.updated_at,
                "updated_by": self.updated_by,
            }
        )

    @classmethod
    def from_field(cls, name: str, raw: bytes | str) -> Budget | None:
        """Decode one ``<p>budgets`` field; None if unreadable (hand-written garbage)."""
        scope, _, ident = name.partition(":")
        try:
            data = orjson.loads(raw)
            daily = data.get("daily_usd")
            monthly = data.get("monthly_usd")
            return cls(
                scope=scope,
                ident=ident,
                daily_usd=None if daily is None else check_usd("daily", float(daily)),
                monthly_usd=None if monthly is None else check_usd("monthly", float(monthly)),
                updated_at=str(data.get("updated_at") or ""),
                updated_by=str(data.get("updated_by") or ""),
            )
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            return None

    def to_public_dict(self) -> dict[str, object]:
        return {
            "scope": self.scope,
            "id": self.ident,
            "daily_usd": self.daily_usd,
            "monthly_usd": self.monthly_usd,
            "updated_at": self.updated_at or None,
            "updated_by": self.updated_by or None,
        }


@dataclass(frozen=True, slots=True)
class Suspension:
    agent: str
    by: str = ""
    at: str = ""
    reason: str = ""

    def to_json(self) -> bytes:
        return orjson.dumps({"by": self.by, "at": self.at, "reason": self.reason})

    @classmethod
    def from_field(cls, agent: str, raw: bytes | str) -> Suspension:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        return cls(
            agent=agent,
            by=str(data.get("by") or ""),
            at=str(data.get("at") or ""),
            reason=str(data.get("reason") or ""),
        )

    def to_public_dict(self) -> dict[str, object]:
        return {"agent": self.agent, "by": self.by, "at": self.at, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class ControlState:
    """One consistent snapshot of budgets and suspensions (read in one MULTI)."""

    version: int
    budgets: Mapping[tuple[str, str], Budget]
    suspended: Mapping[str, Suspension]


class BudgetStore:
    """Admin and read operations on budgets, suspensions and spend. Holds no cache."""

    def __init__(self, redis: Redis, keyspace: Keyspace | None = None) -> None:
        self._redis = redis
        self.keyspace = keyspace or Keyspace()
        self._write = redis.register_script(CONTROL_WRITE)
        self._key_budget = redis.register_script(KEY_BUDGET)
        self._where = describe_redis(redis)

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except (rex.ConnectionError, rex.TimeoutError, OSError) as exc:
            raise ControlUnavailable(
                f"Redis at {self._where} is unreachable while {doing}"
                f" ({exc or type(exc).__name__}): start it, or point --redis-url /"
                " TOKENBOOK_REDIS_URL at a running Redis"
            ) from exc
        except rex.RedisError as exc:
            raise ControlUnavailable(
                f"Redis at {self._where} refused {doing} ({exc}): check that it is a writable"
                " primary and that the user's ACL allows it"
            ) from exc

    async def _control(
        self, hash_key: str, fieldname: str, value: bytes, event: dict[str, str]
    ) -> bool:
        ks = self.keyspace
        result = await self._write(
            keys=[hash_key, ks.control_version],
            args=[fieldname, value, ks.control_channel, orjson.dumps(event)],
        )
        return bool(int(result[1]))

    # -- budgets --------------------------------------------------------------------------

    async def get_budget(self, scope: str, ident: str) -> Budget | None:
        validate_scope_id(scope, ident)
        ks = self.keyspace
        with self._errors("reading a budget"):
            if scope == "key":
                h = await self._redis.get(ks.key_index(ident))
                if h is None:
                    return None
                fields = await self._redis.hmget(
                    ks.key_record(_text(h)), ["budget_daily_usd", "budget_monthly_usd"]
                )
                daily, monthly = (_money(v) for v in fields)
                return Budget(scope, ident, daily, monthly)
            raw = await self._redis.hget(ks.budgets, f"{scope}:{ident}")
        return None if raw is None else Budget.from_field(f"{scope}:{ident}", raw)

    async def set_budget(
        self,
        scope: str,
        ident: str,
        *,
        daily_usd: float | Keep | None = KEEP,
        monthly_usd: float | Keep | None = KEEP,
        by: str,
    ) -> Budget:
        """Set (a number), clear (None) or keep (`KEEP`) each limit. Returns the result."""
        validate_scope_id(scope, ident)
        for name, value in (("daily", daily_usd), ("monthly", monthly_usd)):
            if not isinstance(value, Keep):
                check_usd(name, value)
        if scope == "key":
            return await self._set_key_budget(ident, daily_usd, monthly_usd)
        current = await self.get_budget(scope, ident) or Budget(scope, ident)
        budget = Budget(
            scope,
            ident,
            current.daily_usd if isinstance(daily_usd, Keep) else daily_usd,
            current.monthly_usd if isinstance(monthly_usd, Keep) else monthly_usd,
            updated_at=format_time(datetime.now(UTC)),
            updated_by=by,
        )
        stored = b"" if budget.empty else budget.to_json()
        with self._errors("writing a budget"):
            await self._control(
                self.keyspace.budgets,
                f"{scope}:{ident}",
                stored,
                {"type": "budget", "scope": scope, "id": ident},
            )
        return budget

    async def _set_key_budget(
        self, key_id: str, daily: float | Keep | None, monthly: float | Keep | None
    ) -> Budget:
        ks = self.keyspace
        pairs: list[str] = []
        for name, value in (("budget_daily_usd", daily), ("budget_monthly_usd", monthly)):
            if not isinstance(value, Keep):
                # The registry codec's format: repr(float), "" for none.
                pairs += [name, "" if value is None else repr(float(value))]
        if pairs:
            with self._errors("writing a key budget"):
                found = await self._key_budget(
                    keys=[ks.key_index(key_id)],
                    args=[f"{ks.prefix}key:", ks.registry_events, *pairs],
                )
            if not found:
                raise NoSuchKey(f"no key with id {key_id}: see `tokenbook keys list`")
        budget = await self.get_budget("key", key_id)
        if budget is None:
            raise NoSuchKey(f"no key with id {key_id}: see `tokenbook keys list`")
        return budget

    async def unset_budget(self, scope: str, ident: str, *, by: str) -> bool:
        """Remove both limits; True if there was a budget."""
        before = await self.get_budget(scope, ident)
        if before is None or before.empty:
            return False
        await self.set_budget(scope, ident, daily_usd=None, monthly_usd=None, by=by)
        return True

    async def budgets(self) -> list[Budget]:
        """Agent, workload and team budgets (key budgets: see ``keys list`` / `key_budgets`)."""
        with self._errors("listing budgets"):
            raw = await self._redis.hgetall(self.keyspace.budgets)
        out = [Budget.from_field(_text(k), v) for k, v in raw.items()]
        return sorted((b for b in out if b is not None), key=lambda b: (b.scope, b.ident))

    # -- suspensions ----------------------------------------------------------------------

    async def suspend(self, agent: str, *, by: str, reason: str = "") -> Suspension:
        validate_scope_id("agent", agent)
        s = Suspension(agent, by=by, at=format_time(datetime.now(UTC)), reason=reason)
        with self._errors("suspending an agent"):
            await self._control(
                self.keyspace.suspended, agent, s.to_json(), {"type": "suspend", "agent": agent}
            )
        return s

    async def resume(self, agent: str) -> bool:
        """Lift a suspension; True if the agent was suspended."""
        validate_scope_id("agent", agent)
        with self._errors("resuming an agent"):
            return await self._control(
                self.keyspace.suspended, agent, b"", {"type": "resume", "agent": agent}
            )

    async def suspended(self) -> list[Suspension]:
        with self._errors("listing suspended agents"):
            raw = await self._redis.hgetall(self.keyspace.suspended)
        return sorted(
            (Suspension.from_field(_text(k), v) for k, v in raw.items()), key=lambda s: s.agent
        )

    # -- reads for replicas and reports ---------------------------------------------------

    async def load(self) -> ControlState:
        """Budgets and suspensions as one consistent snapshot (raises redis errors as is)."""
        ks = self.keyspace
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(ks.control_version)
            pipe.hgetall(ks.budgets)
            pipe.hgetall(ks.suspended)
            version, budgets_raw, suspended_raw = await pipe.execute()
        budgets: dict[tuple[str, str], Budget] = {}
        for k, v in budgets_raw.items():
            b = Budget.from_field(_text(k), v)
            if b is not None and b.scope in CONTROL_SCOPES and not b.empty:
                budgets[(b.scope, b.ident)] = b
        suspended = {_text(k): Suspension.from_field(_text(k), v) for k, v in suspended_raw.items()}
        return ControlState(int(version or 0), budgets, suspended)

    async def version(self) -> int:
        return int(await self._redis.get(self.keyspace.control_version) or 0)

    async def spend(self, scope: str, ident: str, when: datetime | None = None) -> dict[str, int]:
        """Spend (micro-dollars) of one scope in the day and month containing ``when``."""
        t = when or datetime.now(UTC)
        ks = self.keyspace
        names = [ks.spend(scope, ident, period_of(k, t).label) for k in (DAILY, MONTHLY)]
        with self._errors("reading spend"):
            values = await self._redis.mget(names)
        return {k: int(v or 0) for k, v in zip((DAILY, MONTHLY), values, strict=True)}


def _money(raw: bytes | str | None) -> float | None:
    if raw is None:
        return None
    text = _text(raw)
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


__all__ = [
    "CONTROL_SCOPES",
    "KEEP",
    "Budget",
    "BudgetStore",
    "ControlError",
    "ControlState",
    "ControlUnavailable",
    "Keep",
    "NoSuchKey",
    "Suspension",
    "check_usd",
    "from_micro",
    "validate_scope_id",
]
