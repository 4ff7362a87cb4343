"""`tokenbook audit`: the token-ROI audit report.

    tokenbook audit                                   # the Redis ledger, last 24h, as a table
    tokenbook audit --prometheus http://prometheus:9090 --since 7d --format markdown
    tokenbook audit --metrics-url http://127.0.0.1:9464/metrics --format json

Sources (one): ``--prometheus URL`` (``$TOKENBOOK_PROMETHEUS_URL``), ``--metrics-url URL``
(repeatable: one per replica; totals since each process started, so no ``--since``), or by
default the ledger in ``--redis-url`` (``$TOKENBOOK_REDIS_URL``). Exit codes: 0 report printed,
1 the source could not be read, 2 usage error; errors go to stderr in one line.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from typing import TextIO

from tokenbook.attribution.connect import DEFAULT_REDIS_URL
from tokenbook.audit.analysis import analyse
from tokenbook.audit.ledger import LedgerSource
from tokenbook.audit.render import FORMATS, SECTIONS, render
from tokenbook.audit.sources import AuditSource, MetricsSource, PrometheusSource, SourceError
from tokenbook.pricing import NO_OVERRIDES, PriceConfigError, Pricer, load_overrides

PROG = "tokenbook audit"
ENV_PROMETHEUS_URL = "TOKENBOOK_PROMETHEUS_URL"
ENV_REDIS_URL = "TOKENBOOK_REDIS_URL"
ENV_REDIS_PREFIX = "TOKENBOOK_REDIS_PREFIX"
ENV_PRICES_FILE = "TOKENBOOK_PRICES_FILE"
DEFAULT_PREFIX = "tokenbook:"
DEFAULT_SINCE = "24h"

EXIT_OK = 0
EXIT_OPERATIONAL = 1
EXIT_USAGE = 2

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")


class UsageError(Exception):
    """A bad option: exit 2."""


def parse_since(text: str) -> float:
    """A Prometheus-style duration (``30m``, ``24h``, ``7d``, ``1h30m``) in seconds."""
    spec = text.strip()
    pos = 0
    seconds = 0.0
    for match in _DURATION.finditer(spec):
        if match.start() != pos:
            break
        seconds += int(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not spec or pos != len(spec):
        raise UsageError(f"--since {text!r}: expected a duration such as 30m, 24h, 7d or 1h30m")
    if seconds < 1:
        raise UsageError(f"--since {text!r}: the window must be at least 1s")
    return seconds


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add the audit's options to ``p`` (the ``tokenbook audit`` parser)."""
    p.description = (
        "The token-ROI audit: keys ranked by spend with their share, tokens per dollar per key "
        "against its workload's band, spend by model per workload with cheaper candidates, and "
        "spend lacking attribution."
    )
    source = p.add_argument_group("source (one; default: the Redis ledger)")
    only = source.add_mutually_exclusive_group()
    only.add_argument(
        "--prometheus",
        metavar="URL",
        help=f"Prometheus base URL, e.g. http://prometheus:9090 (or ${ENV_PROMETHEUS_URL})",
    )
    only.add_argument(
        "--metrics-url",
        metavar="URL",
        action="append",
        help="scrape tokenbook's /metrics directly (repeat for each replica); totals since "
        "each process started",
    )
    only.add_argument(
        "--redis-url",
        metavar="URL",
        help=f"the ledger's Redis (default: ${ENV_REDIS_URL} or {DEFAULT_REDIS_URL})",
    )
    source.add_argument(
        "--redis-prefix",
        metavar="PREFIX",
        help=f"Redis key prefix (default: ${ENV_REDIS_PREFIX} or {DEFAULT_PREFIX!r})",
    )
    p.add_argument(
        "--since",
        metavar="DURATION",
        help=f"the window, e.g. 1h, 24h, 7d (default {DEFAULT_SINCE}; not with --metrics-url)",
    )
    p.add_argument("--format", choices=FORMATS, default="table", help="default: table")
    p.add_argument(
        "--section",
        choices=SECTIONS,
        action="append",
        help="print only this section (repeatable; table, markdown and csv)",
    )
    p.add_argument(
        "--top",
        type=_non_negative,
        default=20,
        metavar="N",
        help="key rows in table and markdown (default 20; 0 = all; outliers always shown)",
    )
    p.add_argument(
        "--alternatives",
        type=_non_negative,
        default=3,
        metavar="N",
        help="cheaper candidates per model (default 3; 0 = none)",
    )
    p.add_argument(
        "--any-provider",
        action="store_true",
        help="look for cheaper models at every provider, not only the one already used",
    )
    p.add_argument(
        "--prices-file",
        metavar="FILE",
        help=f"operator price overrides, as for `tokenbook serve` (or ${ENV_PRICES_FILE})",
    )


def build_source(ns: argparse.Namespace, env: Mapping[str, str]) -> AuditSource:
    """The source the options name (see the module docstring); UsageError if they conflict."""
    since_text: str | None = ns.since
    if ns.metrics_url:
        if since_text is not None:
            raise UsageError(
                "--since does not apply to --metrics-url, whose totals run from each process's "
                "start; use --prometheus or the ledger for a window"
            )
        return MetricsSource(tuple(ns.metrics_url))
    since = since_text or DEFAULT_SINCE
    since_s = parse_since(since)
    prometheus = ns.prometheus or (None if ns.redis_url else env.get(ENV_PROMETHEUS_URL))
    if prometheus:
        if not prometheus.startswith(("http://", "https://")):
            raise UsageError(f"--prometheus {prometheus!r}: expected an http(s):// URL")
        return PrometheusSource(prometheus, f"{int(since_s)}s", since)
    url = ns.redis_url or env.get(ENV_REDIS_URL) or DEFAULT_REDIS_URL
    prefix = ns.redis_prefix or env.get(ENV_REDIS_PREFIX) or DEFAULT_PREFIX
    return LedgerSource(url, prefix, since_s, since)


def build_pricer(ns: argparse.Namespace, env: Mapping[str, str]) -> Pricer:
    path = ns.prices_file or env.get(ENV_PRICES_FILE)
    if not path:
        return Pricer(NO_OVERRIDES)
    try:
        return Pricer(load_overrides(path))
    except OSError as exc:
        raise UsageError(f"--prices-file {path}: {exc.strerror or exc}") from None
    except PriceConfigError as exc:
        raise UsageError(str(exc)) from None


def run(
    ns: argparse.Namespace,
    stdout: TextIO,
    stderr: TextIO,
    *,
    env: Mapping[str, str] | None = None,
) -> int:
    """Print the audit report; returns the exit code."""
    environ = os.environ if env is None else env
    try:
        source = build_source(ns, environ)
        pricer = build_pricer(ns, environ)
        records = source.records()
    except UsageError as exc:
        _fail(stderr, str(exc))
        return EXIT_USAGE
    except SourceError as exc:
        _fail(stderr, str(exc))
        return EXIT_OPERATIONAL
    report = analyse(
        records,
        pricer,
        source=source.info(),
        alternatives=ns.alternatives,
        any_provider=ns.any_provider,
    )
    sections = tuple(dict.fromkeys(ns.section)) if ns.section else SECTIONS
    stdout.write(render(report, ns.format, top=ns.top, sections=sections))
    return EXIT_OK


def _fail(stderr: TextIO, message: str) -> None:
    print(f"{PROG}: {' '.join(message.split())}", file=stderr)
