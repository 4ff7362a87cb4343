"""What the ``budgets``, ``agents`` and ``ledger`` commands share: Redis options, errors, output.

Exit codes (DESIGN.md "Command line"): 0 success, 1 operational error (Redis unreachable, no
such key, ...), 2 usage error. Every error is one line on stderr that says what to do; options
are checked before connecting, so a usage error never writes anything.
"""

from __future__ import annotations

import argparse
import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TextIO, TypeVar

import orjson
from redis.asyncio import Redis

from tokenbook.attribution.command import actor_name
from tokenbook.attribution.connect import DEFAULT_REDIS_URL, redis_client
from tokenbook.ledger.keyspace import DEFAULT_PREFIX, Keyspace

ENV_REDIS_URL = "TOKENBOOK_REDIS_URL"
ENV_REDIS_PREFIX = "TOKENBOOK_REDIS_PREFIX"

EXIT_OK = 0
EXIT_OPERATIONAL = 1
EXIT_USAGE = 2

T = TypeVar("T")


class UsageError(Exception):
    """A bad option: exit 2, nothing written."""


class OperationalError(Exception):
    """The command was right but could not be done: exit 1."""


@dataclass(frozen=True, slots=True)
class IO:
    stdout: TextIO
    stderr: TextIO
    env: Mapping[str, str]


def redis_options() -> argparse.ArgumentParser:
    """A parent parser with ``--redis-url`` and ``--redis-prefix``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--redis-url",
        metavar="URL",
        help=f"tokenbook's Redis (default: ${ENV_REDIS_URL} or {DEFAULT_REDIS_URL})",
    )
    common.add_argument(
        "--redis-prefix",
        metavar="PREFIX",
        help=f"prefix of every tokenbook key in Redis (default: ${ENV_REDIS_PREFIX} or"
        f" {DEFAULT_PREFIX!r})",
    )
    return common


def actor_option() -> argparse.ArgumentParser:
    admin = argparse.ArgumentParser(add_help=False)
    admin.add_argument(
        "--by", metavar="NAME", help="who is doing this, for the record (default: $USER)"
    )
    return admin


def actor(ns: argparse.Namespace, io: IO) -> str:
    try:
        return actor_name(ns.by, io.env)
    except ValueError as exc:
        raise UsageError(f"--by: {exc}") from exc


def _mask(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        _, _, host = rest.rpartition("@")
        return f"{scheme}://***@{host}"
    return url


def connect(ns: argparse.Namespace, io: IO, *, timeout_s: float = 2.0) -> tuple[Redis, Keyspace]:
    url = ns.redis_url or io.env.get(ENV_REDIS_URL) or DEFAULT_REDIS_URL
    prefix = ns.redis_prefix or io.env.get(ENV_REDIS_PREFIX) or DEFAULT_PREFIX
    try:
        client = redis_client(url, timeout_s=timeout_s)
    except ValueError as exc:
        raise UsageError(f"--redis-url {_mask(url)!r} is not usable ({exc})") from exc
    return client, Keyspace(prefix)


def run_with(
    ns: argparse.Namespace,
    io: IO,
    action: Callable[[Redis, Keyspace], Awaitable[T]],
    *,
    timeout_s: float = 2.0,
) -> T:
    """Connect, run ``action`` in a fresh event loop, close the client."""
    client, keyspace = connect(ns, io, timeout_s=timeout_s)

    async def go() -> T:
        try:
            return await action(client, keyspace)
        finally:
            await client.aclose()

    return asyncio.run(go())


def dispatch(
    command: str,
    verbs: Mapping[str, Callable[[argparse.Namespace, IO], int]],
    verb: str,
    ns: argparse.Namespace,
    io: IO,
    *,
    operational: tuple[type[BaseException], ...] = (OperationalError,),
    quiet_exits: tuple[type[BaseException], ...] = (),
) -> int:
    """Run one verb of a subcommand and map its errors onto the exit codes: `UsageError` -> 2,
    `operational` -> 1 (one line on stderr each), `quiet_exits` -> 0 without a word."""
    try:
        return verbs[verb](ns, io)
    except UsageError as exc:
        fail(io, f"{command} {verb}", str(exc))
        return EXIT_USAGE
    except operational as exc:
        fail(io, f"{command} {verb}", str(exc))
        return EXIT_OPERATIONAL
    except quiet_exits:
        return EXIT_OK


def money_arg(flag: str, text: str | None) -> float | str | None:
    """``--daily-usd`` values: a number, ``none`` to clear, or None when not given."""
    if text is None:
        return None
    if text.strip().lower() in {"none", "off", "-"}:
        return "none"
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise UsageError(
            f"{flag} {text!r} must be a non-negative number of US dollars (e.g. 25), or"
            " 'none' to remove the limit"
        )
    return value


def fail(io: IO, command: str, message: str) -> None:
    print(f"tokenbook {command}: {' '.join(message.split())}", file=io.stderr)


def print_json(io: IO, value: object) -> None:
    io.stdout.write(orjson.dumps(value).decode() + "\n")


def cell(value: object) -> str:
    if value is None or value == "":
        return "-"
    return str(value)


def print_table(io: IO, columns: Sequence[str], rows: Sequence[Mapping[str, object]]) -> None:
    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    header = "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))
    print(header.rstrip(), file=io.stdout)
    for r in cells:
        print(
            "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip(), file=io.stdout
        )
