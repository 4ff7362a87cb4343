"""``tokenbook keys issue|import|list|show|revoke|audit``.

`configure_parser` adds the verbs to the parser the main CLI gives it; `run` executes the parsed
namespace and returns the exit code: 0 done, 1 operational (Redis unreachable, no such key, …),
2 usage (a missing or malformed option). Every error is one line on stderr that says what to do.
Options are validated before connecting, so a usage error never writes anything.

`run` is synchronous (it runs its own event loop): call it from a synchronous ``main``.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import math
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

import orjson
from redis.asyncio import Redis

from tokenbook.attribution.codec import MalformedRecord, parse_time
from tokenbook.attribution.connect import DEFAULT_REDIS_URL, redis_client
from tokenbook.attribution.keyaudit import NOT_CHECKED, audit_registry
from tokenbook.attribution.keys import (
    AttributionError,
    is_key_id,
    parse_key_id,
    validate_actor,
    validate_attribution,
    validate_provider,
    validate_ref,
)
from tokenbook.attribution.model import ATTRIBUTION_FIELDS, Attribution, KeyRecord, format_time
from tokenbook.attribution.registry import (
    DEFAULT_PREFIX,
    DuplicateKey,
    KeyNotFound,
    KeyRegistry,
    RegistryError,
)

ENV_REDIS_URL = "TOKENBOOK_REDIS_URL"
ENV_REDIS_PREFIX = "TOKENBOOK_REDIS_PREFIX"

EXIT_OK = 0
EXIT_OPERATIONAL = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A bad option: exit 2, nothing written."""


class OperationalError(Exception):
    """The command was right but could not be done: exit 1."""


@dataclass(frozen=True, slots=True)
class _IO:
    stdout: TextIO
    stderr: TextIO
    stdin: TextIO
    env: Mapping[str, str]


# -- parser -------------------------------------------------------------------------------


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add the ``keys`` verbs to ``p`` (the ``tokenbook keys`` parser)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--redis-url",
        metavar="URL",
        help=f"the registry's Redis (default: ${ENV_REDIS_URL} or {DEFAULT_REDIS_URL})",
    )
    common.add_argument(
        "--redis-prefix",
        metavar="PREFIX",
        help=f"prefix of every registry key in Redis (default: ${ENV_REDIS_PREFIX} or"
        f" {DEFAULT_PREFIX!r})",
    )
    admin = argparse.ArgumentParser(add_help=False)
    admin.add_argument(
        "--by", metavar="NAME", help="who is doing this, for the record (default: $USER)"
    )

    attribution = argparse.ArgumentParser(add_help=False)
    group = attribution.add_argument_group("attribution (all four required)")
    for name in ATTRIBUTION_FIELDS:
        group.add_argument(f"--{name}", metavar="NAME", help="[a-z0-9][a-z0-9._-]{0,62}")
    limits = attribution.add_argument_group("limits")
    limits.add_argument("--budget-daily-usd", metavar="USD", help="daily spend limit")
    limits.add_argument("--budget-monthly-usd", metavar="USD", help="monthly spend limit")
    limits.add_argument(
        "--expires",
        metavar="WHEN",
        help="ISO date or datetime, UTC unless it has an offset; a date means 00:00 UTC that day",
    )

    sub = p.add_subparsers(dest="keys_command", metavar="VERB", required=True)
    issue = sub.add_parser(
        "issue",
        parents=[common, admin, attribution],
        help="create a key (printed once)",
        description="Create a tokenbook key. It is printed once and cannot be shown again.",
    )
    issue.add_argument(
        "--upstream-credential-ref",
        metavar="NAME",
        help="the configured provider credential the gate sets for this key",
    )
    issue.add_argument("--format", choices=("text", "json"), default="text")

    imp = sub.add_parser(
        "import",
        parents=[common, admin, attribution],
        help="register a provider key (read from stdin) for attribution",
        description="Register a provider's own key so that traffic still using it is attributed."
        " The key is read from stdin or --key-file, never from the command line (which other"
        " users can see in ps).",
    )
    imp.add_argument("--provider", metavar="ID", help="provider id, e.g. openai (required)")
    imp.add_argument("--key-file", metavar="PATH", help="read the provider key from this file")
    imp.add_argument("--format", choices=("text", "json"), default="text")

    lst = sub.add_parser("list", parents=[common], help="list keys (never secrets)")
    lst.add_argument("--format", choices=("table", "json"), default="table")

    show = sub.add_parser("show", parents=[common], help="show one key (never its secret)")
    show.add_argument("key_id", metavar="KEY_ID")
    show.add_argument("--format", choices=("text", "json"), default="text")

    revoke = sub.add_parser(
        "revoke", parents=[common, admin], help="revoke a key on every replica within a second"
    )
    revoke.add_argument("key_id", metavar="KEY_ID")

    audit = sub.add_parser("audit", parents=[common], help="keys that need attention")
    audit.add_argument("--format", choices=("table", "json"), default="table")


# -- run ----------------------------------------------------------------------------------


def run(
    ns: argparse.Namespace,
    stdout: TextIO,
    stderr: TextIO,
    *,
    stdin: TextIO | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Execute a parsed ``keys`` command; returns the exit code."""
    verb: str = ns.keys_command
    io = _IO(
        stdout, stderr, sys.stdin if stdin is None else stdin, os.environ if env is None else env
    )
    try:
        return _VERBS[verb](ns, io)
    except (UsageError, AttributionError) as exc:
        _fail(io, verb, _flagged(exc))
        return EXIT_USAGE
    except (OperationalError, RegistryError) as exc:
        _fail(io, verb, str(exc))
        return EXIT_OPERATIONAL


def _fail(io: _IO, verb: str, message: str) -> None:
    print(f"tokenbook keys {verb}: {' '.join(message.split())}", file=io.stderr)


def _flagged(exc: Exception) -> str:
    """Name the option, not the field: ``team is missing`` -> ``--team is missing``."""
    message = str(exc)
    if isinstance(exc, AttributionError) and message.startswith(exc.field):
        return "--" + exc.field.replace("_", "-") + message[len(exc.field) :]
    return message


def _connect(ns: argparse.Namespace, io: _IO) -> tuple[Redis, KeyRegistry]:
    url = ns.redis_url or io.env.get(ENV_REDIS_URL) or DEFAULT_REDIS_URL
    prefix = ns.redis_prefix or io.env.get(ENV_REDIS_PREFIX) or DEFAULT_PREFIX
    try:
        client = redis_client(url)
    except ValueError as exc:
        raise UsageError(f"--redis-url {_mask(url)!r} is not usable ({exc})") from exc
    return client, KeyRegistry(client, prefix=prefix)


def _mask(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        creds, _, host = rest.rpartition("@")
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else f"{scheme}://{user}@{host}"
    return url


def _with_registry(
    ns: argparse.Namespace, io: _IO, action: Callable[[KeyRegistry], Awaitable[int]]
) -> int:
    client, registry = _connect(ns, io)

    async def go() -> int:
        try:
            return await action(registry)
        finally:
            await client.aclose()

    return asyncio.run(go())


# -- option parsing (before any connection) -----------------------------------------------


def _attribution(ns: argparse.Namespace) -> Attribution:
    return validate_attribution(ns.owner, ns.team, ns.agent, ns.workload)


def _money(flag: str, text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"{flag} {text!r} must be a non-negative number of US dollars, e.g. 25")
    return value


def _expires(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        when = parse_time(text)
    except ValueError as exc:
        raise UsageError(
            f"--expires {text!r} is not an ISO date or datetime, e.g. 2026-01-31 or"
            " 2026-01-31T18:00:00Z"
        ) from exc
    if when <= datetime.now(UTC):
        raise UsageError(f"--expires {text!r} is in the past: give a future date")
    return when


def actor_name(by: str | None, env: Mapping[str, str]) -> str:
    """Who performs an admin action: ``--by``, else $USER / $LOGNAME, else the login name;
    validated (`AttributionError` when unusable). Shared by every admin CLI."""
    name = by or env.get("USER") or env.get("LOGNAME")
    if not name:
        try:
            name = getpass.getuser()
        except (OSError, KeyError):
            name = "unknown"
    return validate_actor(name)


def _actor(ns: argparse.Namespace, io: _IO) -> str:
    return actor_name(ns.by, io.env)


def _key_id_arg(text: str) -> str:
    if not is_key_id(text):
        raise UsageError(
            f"{text!r} is not a key id (12 characters a-z, 2-7): see `tokenbook keys list`"
        )
    return text


def _read_provider_key(ns: argparse.Namespace, io: _IO) -> str:
    if ns.key_file:
        try:
            with open(ns.key_file, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read --key-file {ns.key_file}: {exc}") from exc
    elif io.stdin.isatty():
        text = getpass.getpass("provider key (not echoed): ", stream=io.stderr)
    else:
        text = io.stdin.read()
    key = text.strip()
    if not key:
        raise UsageError("no provider key given: pipe it on stdin or pass --key-file PATH")
    if "\n" in key or not key.isprintable() or " " in key:
        raise UsageError("the input must be exactly one provider key on one line")
    if parse_key_id(key) is not None:
        raise UsageError("that is a tokenbook key, not a provider key: it is already registered")
    return key


# -- verbs --------------------------------------------------------------------------------


def _issue(ns: argparse.Namespace, io: _IO) -> int:
    attribution = _attribution(ns)
    daily = _money("--budget-daily-usd", ns.budget_daily_usd)
    monthly = _money("--budget-monthly-usd", ns.budget_monthly_usd)
    expires = _expires(ns.expires)
    ref = ns.upstream_credential_ref
    if ref is not None:
        validate_ref("upstream_credential_ref", ref)
    by = _actor(ns, io)

    async def action(registry: KeyRegistry) -> int:
        key, record = await registry.issue(
            attribution,
            created_by=by,
            expires_at=expires,
            budget_daily_usd=daily,
            budget_monthly_usd=monthly,
            upstream_credential_ref=ref,
        )
        if ns.format == "json":
            _json(io, {"key": key, "key_id": record.key_id})
        else:
            print(f"key:    {key}", file=io.stdout)
            print(f"key id: {record.key_id}", file=io.stdout)
            print(_who(record), file=io.stdout)
        print(
            "tokenbook keys issue: store this key now: it is shown only once and cannot be"
            " recovered (tokenbook keeps only its hash)",
            file=io.stderr,
        )
        return EXIT_OK

    return _with_registry(ns, io, action)


def _import(ns: argparse.Namespace, io: _IO) -> int:
    attribution = _attribution(ns)
    if not ns.provider:
        raise UsageError("--provider is missing: name the provider the key belongs to, e.g. openai")
    provider = validate_provider(ns.provider)
    daily = _money("--budget-daily-usd", ns.budget_daily_usd)
    monthly = _money("--budget-monthly-usd", ns.budget_monthly_usd)
    expires = _expires(ns.expires)
    by = _actor(ns, io)
    provider_key = _read_provider_key(ns, io)

    async def action(registry: KeyRegistry) -> int:
        try:
            record = await registry.import_key(
                provider_key,
                attribution,
                provider=provider,
                created_by=by,
                expires_at=expires,
                budget_daily_usd=daily,
                budget_monthly_usd=monthly,
            )
        except DuplicateKey as exc:
            raise OperationalError(
                f"this provider key is already registered as {exc.key_id}; nothing changed"
                f" (see `tokenbook keys show {exc.key_id}`)"
            ) from exc
        if ns.format == "json":
            _json(io, record.to_public_dict())
        else:
            print(f"imported {provider} key as key id {record.key_id}", file=io.stdout)
            print(_who(record), file=io.stdout)
        return EXIT_OK

    return _with_registry(ns, io, action)


_LIST_COLUMNS = ("key_id", "kind", "state", *ATTRIBUTION_FIELDS, "provider", "expires_at")


def _list(ns: argparse.Namespace, io: _IO) -> int:
    async def action(registry: KeyRegistry) -> int:
        entries = await registry.raw_entries()
        records = await registry.list_keys()
        now = datetime.now(UTC)
        rows = [_public(r, now) for r in records]
        if ns.format == "json":
            _json(io, rows)
        elif rows:
            _table(io, _LIST_COLUMNS, rows)
        else:
            print(
                "tokenbook keys list: no keys yet (create one with `tokenbook keys issue`)",
                file=io.stderr,
            )
        skipped = len(entries) - len(records)
        if skipped > 0:
            print(
                f"tokenbook keys list: {skipped} malformed registry entries not shown:"
                " see `tokenbook keys audit`",
                file=io.stderr,
            )
        return EXIT_OK

    return _with_registry(ns, io, action)


def _show(ns: argparse.Namespace, io: _IO) -> int:
    key_id = _key_id_arg(ns.key_id)

    async def action(registry: KeyRegistry) -> int:
        try:
            record = await registry.get_by_id(key_id, strict=True)
        except MalformedRecord as exc:
            raise OperationalError(
                f"key {key_id} exists but its record is malformed ({exc}): see"
                " `tokenbook keys audit`"
            ) from exc
        if record is None:
            raise OperationalError(f"no key with id {key_id}: see `tokenbook keys list`")
        row = _public(record, datetime.now(UTC))
        if ns.format == "json":
            _json(io, row)
        else:
            width = max(len(k) for k in row)
            for name, value in row.items():
                print(f"{name:<{width}}  {_cell(value)}", file=io.stdout)
        return EXIT_OK

    return _with_registry(ns, io, action)


def _revoke(ns: argparse.Namespace, io: _IO) -> int:
    key_id = _key_id_arg(ns.key_id)
    by = _actor(ns, io)

    async def action(registry: KeyRegistry) -> int:
        try:
            record = await registry.revoke(key_id, by=by)
        except KeyNotFound as exc:
            raise OperationalError(f"no key with id {key_id}: see `tokenbook keys list`") from exc
        except MalformedRecord as exc:
            raise OperationalError(
                f"key {key_id} is revoked but its record is malformed ({exc}): see"
                " `tokenbook keys audit`"
            ) from exc
        print(
            f"revoked {record.key_id} ({_who(record)}): every replica refuses it within a second",
            file=io.stdout,
        )
        return EXIT_OK

    return _with_registry(ns, io, action)


def _audit(ns: argparse.Namespace, io: _IO) -> int:
    async def action(registry: KeyRegistry) -> int:
        entries = await registry.raw_entries()
        index = await registry.raw_index()
        findings = audit_registry(entries, index, datetime.now(UTC))
        if ns.format == "json":
            _json(
                io,
                {
                    "entries": len(entries),
                    "findings": [f.to_dict() for f in findings],
                    "not_checked": list(NOT_CHECKED),
                },
            )
        else:
            if findings:
                _table(io, ("subject", "problem", "detail"), [f.to_dict() for f in findings])
            else:
                print(f"no findings in {len(entries)} registry entries", file=io.stdout)
            for item in NOT_CHECKED:
                print(f"tokenbook keys audit: not checked: {item}", file=io.stderr)
        return EXIT_OK

    return _with_registry(ns, io, action)


_VERBS: dict[str, Callable[[argparse.Namespace, _IO], int]] = {
    "issue": _issue,
    "import": _import,
    "list": _list,
    "show": _show,
    "revoke": _revoke,
    "audit": _audit,
}


# -- output -------------------------------------------------------------------------------


def _public(record: KeyRecord, now: datetime) -> dict[str, object]:
    row = record.to_public_dict()
    row["state"] = record.denial_reason(now) or "active"  # status plus expiry, as the gate sees it
    return row


def _who(record: KeyRecord) -> str:
    return " ".join(f"{k}={v}" for k, v in record.attribution.items())


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return format_time(value)
    return str(value)


def _table(io: _IO, columns: Sequence[str], rows: Sequence[Mapping[str, object]]) -> None:
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print(
        "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip(),
        file=io.stdout,
    )
    for r in cells:
        print(
            "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip(), file=io.stdout
        )


def _json(io: _IO, value: object) -> None:
    io.stdout.write(orjson.dumps(value).decode() + "\n")
