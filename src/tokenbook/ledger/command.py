"""``tokenbook ledger tail|export``: the per-request ledger, for people and for chargeback.

::

    tokenbook ledger tail [-n 20] [--follow] [--format jsonl|csv]
    tokenbook ledger export --since 2026-01-01 --until 2026-02-01 --format csv > jan.csv

Records carry the fields of ``UsageRecord`` (protos/tokenbook/v1/usage.proto). JSONL is the
proto's JSON mapping (``tokens`` nested, ``cost_usd`` absent when the usage could not be
priced); CSV is flat, one ``tokens_<type>`` column per token type, empty when not stated.
``--since``/``--until`` are ISO dates or datetimes, UTC unless an offset is given, and select on
the booking time (``until`` exclusive). ``--follow`` runs until interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TextIO

import orjson
import redis.exceptions as rex
from redis.asyncio import Redis

from tokenbook.attribution.codec import parse_time
from tokenbook.ledger import reader
from tokenbook.ledger.cli_support import (
    EXIT_OK,
    IO,
    OperationalError,
    UsageError,
    dispatch,
    redis_options,
    run_with,
)
from tokenbook.ledger.entry import RECORD_FIELDS, flat_record, usage_record
from tokenbook.ledger.keyspace import Keyspace


def configure_parser(p: argparse.ArgumentParser) -> None:
    common = redis_options()
    fmt = argparse.ArgumentParser(add_help=False)
    fmt.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    sub = p.add_subparsers(dest="ledger_command", metavar="VERB", required=True)
    t = sub.add_parser("tail", parents=[common, fmt], help="the last entries (and new ones)")
    t.add_argument("-n", type=int, default=10, metavar="N", help="how many (default 10)")
    t.add_argument("--follow", "-f", action="store_true", help="keep printing new entries")
    e = sub.add_parser("export", parents=[common, fmt], help="entries booked in a time range")
    e.add_argument("--since", metavar="WHEN", help="ISO date/datetime (inclusive)")
    e.add_argument("--until", metavar="WHEN", help="ISO date/datetime (exclusive)")


def run(
    ns: argparse.Namespace,
    stdout: TextIO,
    stderr: TextIO,
    *,
    env: Mapping[str, str] | None = None,
) -> int:
    verb: str = ns.ledger_command
    io = IO(stdout, stderr, os.environ if env is None else env)
    # Ctrl-C is the way out of --follow; a broken pipe is `| head`: both are a normal end.
    return dispatch(
        "ledger", _VERBS, verb, ns, io, quiet_exits=(KeyboardInterrupt, BrokenPipeError)
    )


class _Out:
    """Writes records in the chosen format (CSV header first)."""

    def __init__(self, io: IO, fmt: str) -> None:
        self._io = io
        self._csv = csv.writer(io.stdout, lineterminator="\n") if fmt == "csv" else None
        if self._csv is not None:
            self._csv.writerow(RECORD_FIELDS)

    def write(self, fields: Mapping[str, str]) -> None:
        if self._csv is not None:
            row = flat_record(fields)
            self._csv.writerow([row[name] for name in RECORD_FIELDS])
        else:
            self._io.stdout.write(orjson.dumps(usage_record(fields)).decode() + "\n")

    def flush(self) -> None:
        self._io.stdout.flush()


def _redis_failure(exc: Exception) -> OperationalError:
    return OperationalError(
        f"Redis is unreachable or refused the read ({exc or type(exc).__name__}): start it, or"
        " point --redis-url / TOKENBOOK_REDIS_URL at a running Redis"
    )


def _tail(ns: argparse.Namespace, io: IO) -> int:
    if ns.n < 0:
        raise UsageError(f"-n {ns.n} must be 0 or more")

    async def action(client: Redis, ks: Keyspace) -> int:
        out = _Out(io, ns.format)
        try:
            entries = await reader.last(client, ks, ns.n)
            for _, fields in entries:
                out.write(fields)
            out.flush()
            if ns.follow:
                after = entries[-1][0] if entries else "$"
                async for _, fields in reader.follow(client, ks, after):
                    out.write(fields)
                    out.flush()
        except (rex.RedisError, OSError) as exc:
            raise _redis_failure(exc) from exc
        except asyncio.CancelledError:
            return EXIT_OK
        return EXIT_OK

    return run_with(ns, io, action, timeout_s=5.0)


def _when(flag: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        raise UsageError(
            f"{flag} {text!r} is not an ISO date or datetime, e.g. 2026-01-31 or"
            " 2026-01-31T18:00:00Z"
        ) from exc


def _export(ns: argparse.Namespace, io: IO) -> int:
    since = _when("--since", ns.since)
    until = _when("--until", ns.until)
    if since is not None and until is not None and since >= until:
        raise UsageError("--since must be before --until")

    async def action(client: Redis, ks: Keyspace) -> int:
        out = _Out(io, ns.format)
        try:
            async for _, fields in reader.between(client, ks, since, until):
                out.write(fields)
        except (rex.RedisError, OSError) as exc:
            raise _redis_failure(exc) from exc
        out.flush()
        return EXIT_OK

    return run_with(ns, io, action, timeout_s=5.0)


_VERBS: dict[str, Callable[[argparse.Namespace, IO], int]] = {
    "tail": _tail,
    "export": _export,
}
