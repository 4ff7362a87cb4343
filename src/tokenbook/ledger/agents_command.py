"""``tokenbook agents suspend|resume|list``: the kill switch for one agent.

::

    tokenbook agents suspend crawler --reason "runaway loop, ticket 123"
    tokenbook agents resume crawler
    tokenbook agents list [--format table|json]

A suspension takes effect on every replica within one second (control channel event, with a
0.5 s version poll behind it; see `tokenbook.ledger.controls`): the gate answers the agent's
requests with 403 in the provider's error shape. It holds through a Redis outage on replicas
that already knew it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from typing import TextIO

from redis.asyncio import Redis

from tokenbook.attribution.keys import NAME_RE
from tokenbook.ledger.budgets import BudgetStore, ControlError, validate_scope_id
from tokenbook.ledger.cli_support import (
    EXIT_OK,
    IO,
    OperationalError,
    UsageError,
    actor,
    actor_option,
    dispatch,
    print_json,
    print_table,
    redis_options,
    run_with,
)
from tokenbook.ledger.keyspace import Keyspace


def configure_parser(p: argparse.ArgumentParser) -> None:
    common = redis_options()
    by = actor_option()
    sub = p.add_subparsers(dest="agents_command", metavar="VERB", required=True)
    s = sub.add_parser(
        "suspend",
        parents=[common, by],
        help="refuse the agent's requests (403) on every replica within a second",
    )
    s.add_argument("agent", metavar="NAME", help=NAME_RE)
    s.add_argument("--reason", metavar="TEXT", default="", help="shown to the agent's callers")
    r = sub.add_parser("resume", parents=[common, by], help="lift a suspension")
    r.add_argument("agent", metavar="NAME")
    lst = sub.add_parser("list", parents=[common], help="suspended agents")
    lst.add_argument("--format", choices=("table", "json"), default="table")


def run(
    ns: argparse.Namespace,
    stdout: TextIO,
    stderr: TextIO,
    *,
    env: Mapping[str, str] | None = None,
) -> int:
    verb: str = ns.agents_command
    io = IO(stdout, stderr, os.environ if env is None else env)
    return dispatch("agents", _VERBS, verb, ns, io, operational=(OperationalError, ControlError))


def _agent(ns: argparse.Namespace) -> str:
    try:
        validate_scope_id("agent", ns.agent)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    name: str = ns.agent
    return name


def _suspend(ns: argparse.Namespace, io: IO) -> int:
    agent = _agent(ns)
    by = actor(ns, io)
    reason = " ".join(str(ns.reason).split())[:200]

    async def action(client: Redis, ks: Keyspace) -> int:
        await BudgetStore(client, ks).suspend(agent, by=by, reason=reason)
        print(
            f"suspended agent {agent}: every replica refuses its requests within a second"
            f" (lift it with `tokenbook agents resume {agent}`)",
            file=io.stdout,
        )
        return EXIT_OK

    return run_with(ns, io, action)


def _resume(ns: argparse.Namespace, io: IO) -> int:
    agent = _agent(ns)
    actor(ns, io)  # validated for symmetry with suspend; the record is the removal itself

    async def action(client: Redis, ks: Keyspace) -> int:
        was = await BudgetStore(client, ks).resume(agent)
        if was:
            print(f"resumed agent {agent}", file=io.stdout)
        else:
            print(f"agent {agent} was not suspended; nothing changed", file=io.stdout)
        return EXIT_OK

    return run_with(ns, io, action)


def _list(ns: argparse.Namespace, io: IO) -> int:
    async def action(client: Redis, ks: Keyspace) -> int:
        rows = [s.to_public_dict() for s in await BudgetStore(client, ks).suspended()]
        if ns.format == "json":
            print_json(io, rows)
        elif rows:
            print_table(io, ("agent", "by", "at", "reason"), rows)
        else:
            print("tokenbook agents list: no agent is suspended", file=io.stderr)
        return EXIT_OK

    return run_with(ns, io, action)


_VERBS: dict[str, Callable[[argparse.Namespace, IO], int]] = {
    "suspend": _suspend,
    "resume": _resume,
    "list": _list,
}
