"""``tokenbook budgets set|unset|list``: spend limits per key, agent, workload and team.

::

    tokenbook budgets set --scope agent --id crawler --daily-usd 5 --monthly-usd 100
    tokenbook budgets set --scope key --id abcdefghijkl --daily-usd none   # remove one limit
    tokenbook budgets unset --scope team --id search
    tokenbook budgets list [--format table|json]

A limit that is not given is left as it is; ``none`` removes it. Budgets are in US dollars per
UTC day / month. Every replica applies a change within a second (agent/workload/team budgets
through the control channel, key budgets through the key registry's change event). ``list``
shows each budget with what was spent in the current day and month.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from typing import TextIO

from redis.asyncio import Redis

from tokenbook.attribution.codec import MalformedRecord
from tokenbook.attribution.registry import KeyRegistry, RegistryError
from tokenbook.ledger.budgets import (
    KEEP,
    Budget,
    BudgetStore,
    ControlError,
    Keep,
    validate_scope_id,
)
from tokenbook.ledger.cli_support import (
    EXIT_OK,
    IO,
    OperationalError,
    UsageError,
    actor,
    actor_option,
    dispatch,
    money_arg,
    print_json,
    print_table,
    redis_options,
    run_with,
)
from tokenbook.ledger.keyspace import Keyspace
from tokenbook.ledger.periods import DAILY, MONTHLY, SCOPES, format_usd, from_micro

_SCOPE_HELP = "key (id = key id), agent, workload or team"


def configure_parser(p: argparse.ArgumentParser) -> None:
    common = redis_options()
    by = actor_option()
    target = argparse.ArgumentParser(add_help=False)
    target.add_argument("--scope", choices=SCOPES, help=_SCOPE_HELP)
    target.add_argument("--id", dest="ident", metavar="ID", help="the key id or the name")

    sub = p.add_subparsers(dest="budgets_command", metavar="VERB", required=True)
    s = sub.add_parser(
        "set",
        parents=[common, by, target],
        help="set a daily and/or monthly limit",
        description="Set spend limits (US dollars per UTC day / month). A limit not given is"
        " kept; 'none' removes it.",
    )
    s.add_argument("--daily-usd", metavar="USD", help="daily limit, or 'none'")
    s.add_argument("--monthly-usd", metavar="USD", help="monthly limit, or 'none'")
    s.add_argument("--format", choices=("text", "json"), default="text")

    u = sub.add_parser("unset", parents=[common, by, target], help="remove both limits")
    u.add_argument("--format", choices=("text", "json"), default="text")

    lst = sub.add_parser(
        "list", parents=[common], help="every budget, with this day's and month's spend"
    )
    lst.add_argument("--scope", choices=SCOPES, help="only this scope")
    lst.add_argument("--format", choices=("table", "json"), default="table")


def run(
    ns: argparse.Namespace,
    stdout: TextIO,
    stderr: TextIO,
    *,
    env: Mapping[str, str] | None = None,
) -> int:
    verb: str = ns.budgets_command
    io = IO(stdout, stderr, os.environ if env is None else env)
    return dispatch(
        "budgets",
        _VERBS,
        verb,
        ns,
        io,
        operational=(OperationalError, ControlError, RegistryError),
    )


def _target(ns: argparse.Namespace) -> tuple[str, str]:
    if not ns.scope:
        raise UsageError(f"--scope is missing: {_SCOPE_HELP}")
    if not ns.ident:
        raise UsageError("--id is missing: the key id, or the agent/workload/team name")
    try:
        validate_scope_id(ns.scope, ns.ident)
    except ValueError as exc:
        raise UsageError(f"--id: {exc}") from exc
    return ns.scope, ns.ident


def _limit(flag: str, text: str | None) -> float | Keep | None:
    value = money_arg(flag, text)
    if value is None:
        return KEEP
    if value == "none":
        return None
    assert isinstance(value, float)
    return value


def _describe(b: Budget) -> str:
    def usd(v: float | None) -> str:
        return "none" if v is None else f"${v:g}"

    return f"{b.scope} {b.ident}: daily {usd(b.daily_usd)}, monthly {usd(b.monthly_usd)}"


def _set(ns: argparse.Namespace, io: IO) -> int:
    scope, ident = _target(ns)
    daily = _limit("--daily-usd", ns.daily_usd)
    monthly = _limit("--monthly-usd", ns.monthly_usd)
    if isinstance(daily, Keep) and isinstance(monthly, Keep):
        raise UsageError("give --daily-usd and/or --monthly-usd (a number, or 'none')")
    by = actor(ns, io)

    async def action(client: Redis, ks: Keyspace) -> int:
        budget = await BudgetStore(client, ks).set_budget(
            scope, ident, daily_usd=daily, monthly_usd=monthly, by=by
        )
        if ns.format == "json":
            print_json(io, budget.to_public_dict())
        else:
            print(f"{_describe(budget)} (every replica applies it within a second)", file=io.stdout)
        return EXIT_OK

    return run_with(ns, io, action)


def _unset(ns: argparse.Namespace, io: IO) -> int:
    scope, ident = _target(ns)
    by = actor(ns, io)

    async def action(client: Redis, ks: Keyspace) -> int:
        store = BudgetStore(client, ks)
        removed = await store.unset_budget(scope, ident, by=by)
        if ns.format == "json":
            print_json(io, {"scope": scope, "id": ident, "removed": removed})
        elif removed:
            print(f"removed the budget of {scope} {ident}", file=io.stdout)
        else:
            print(f"{scope} {ident} had no budget; nothing changed", file=io.stdout)
        return EXIT_OK

    return run_with(ns, io, action)


async def _key_budgets(client: Redis, ks: Keyspace) -> list[Budget]:
    registry = KeyRegistry(client, prefix=ks.prefix)
    out = []
    for record in await registry.list_keys():
        if record.budget_daily_usd is None and record.budget_monthly_usd is None:
            continue
        out.append(Budget("key", record.key_id, record.budget_daily_usd, record.budget_monthly_usd))
    return out


_COLUMNS = (
    "scope",
    "id",
    "daily_usd",
    "spent_today_usd",
    "monthly_usd",
    "spent_this_month_usd",
    "updated_by",
)


def _list(ns: argparse.Namespace, io: IO) -> int:
    async def action(client: Redis, ks: Keyspace) -> int:
        store = BudgetStore(client, ks)
        try:
            budgets = await _key_budgets(client, ks) + await store.budgets()
        except MalformedRecord as exc:  # list_keys skips these; be safe anyway
            raise OperationalError(f"a registry entry is malformed ({exc})") from exc
        if ns.scope:
            budgets = [b for b in budgets if b.scope == ns.scope]
        rows: list[tuple[dict[str, object], dict[str, int]]] = []
        for b in budgets:
            spent = await store.spend(b.scope, b.ident)
            row = b.to_public_dict()
            row["spent_today_usd"] = from_micro(spent[DAILY])
            row["spent_this_month_usd"] = from_micro(spent[MONTHLY])
            rows.append((row, spent))
        if ns.format == "json":
            print_json(io, [r for r, _ in rows])
        elif rows:
            print_table(io, _COLUMNS, [_display(r, s) for r, s in rows])
        else:
            print(
                "tokenbook budgets list: no budgets yet (set one with `tokenbook budgets set`)",
                file=io.stderr,
            )
        return EXIT_OK

    return run_with(ns, io, action)


def _display(row: dict[str, object], spent: Mapping[str, int]) -> dict[str, object]:
    out = dict(row)
    for name in ("daily_usd", "monthly_usd"):
        value = out.get(name)
        out[name] = None if value is None else f"${value:g}"
    out["spent_today_usd"] = format_usd(spent[DAILY])
    out["spent_this_month_usd"] = format_usd(spent[MONTHLY])
    return out


_VERBS: dict[str, Callable[[argparse.Namespace, IO], int]] = {
    "set": _set,
    "unset": _unset,
    "list": _list,
}
