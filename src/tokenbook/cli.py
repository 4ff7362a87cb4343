"""The `tokenbook` command: one command, subcommands, a main you can call.

Exit codes: 0 success, 1 operational error (Redis unreachable, port in use, ...), 2 usage error.
Errors go to stderr as one line that says what to do.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import TextIO

from tokenbook import __version__


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in one line with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"tokenbook: {message} (see `{self.prog} --help`)\n")


def _serve_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML settings file (env TOKENBOOK_CONFIG)")
    p.add_argument("--listen", help="ext_proc gRPC address HOST:PORT (default 127.0.0.1:50051)")
    p.add_argument(
        "--transport",
        choices=["grpcio", "h2"],
        help="ext_proc server: h2 (tokenbook's own HTTP/2, the default) or grpcio (grpc.aio)",
    )
    p.add_argument(
        "--loop",
        dest="event_loop",
        choices=["auto", "uvloop", "asyncio"],
        help="event loop: auto (uvloop when installed, the default), uvloop or asyncio",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="worker processes, on ports --listen .. --listen+N-1, one aggregated /metrics "
        "(default 1; render Envoy's cluster with `tokenbook envoy-config --workers N`)",
    )
    # set by the --workers supervisor on the processes it starts
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    p.add_argument("--metrics-listen", help="/metrics address HOST:PORT (default 127.0.0.1:9464)")
    p.add_argument("--redis-url", help="key registry (default redis://127.0.0.1:6379/0)")
    p.add_argument("--redis-prefix", help="Redis key prefix (default tokenbook:)")
    p.add_argument(
        "--admin-token-file",
        help="file holding the admin API token (or env TOKENBOOK_ADMIN_TOKEN)",
    )
    admin = p.add_mutually_exclusive_group()
    admin.add_argument(
        "--admin",
        dest="admin",
        action="store_true",
        default=None,
        help="serve the KeyRegistry admin API (needs the admin token)",
    )
    admin.add_argument(
        "--no-admin",
        dest="admin",
        action="store_false",
        help="do not serve the admin API even when a token is set",
    )
    p.add_argument("--unknown-keys", choices=["deny", "allow"])
    p.add_argument("--registry-down", choices=["deny", "allow"])
    p.add_argument(
        "--credential-swap",
        action="store_true",
        default=None,
        help="replace tokenbook keys with the configured provider credential",
    )
    p.add_argument(
        "--drain-timeout",
        dest="drain_timeout_s",
        type=float,
        help="seconds open streams get to finish on SIGTERM (default 20)",
    )
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])


# Subcommands implemented in their own packages: name -> (module, help). Each module has
# `configure_parser(p)` and `run(ns, stdout, stderr) -> int`; imported only when present, so a
# command is listed exactly when its implementation ships.
_SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "keys": ("tokenbook.attribution.command", "issue, import, list, show, revoke, audit keys"),
    "budgets": ("tokenbook.ledger.budget_command", "set and list agent/workload/team budgets"),
    "agents": ("tokenbook.ledger.agents_command", "suspend or resume an agent (kill switch)"),
    "ledger": ("tokenbook.ledger.command", "tail or export the per-request ledger"),
    "audit": ("tokenbook.audit.command", "the token-ROI audit report"),
}


def _load(module: str) -> ModuleType | None:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    from tokenbook.envoyconfig import command as envoy_command

    parser = _Parser(
        prog="tokenbook",
        description="Attribute, count, price and watch every LLM token crossing an Envoy gateway.",
    )
    parser.add_argument("--version", action="version", version=f"tokenbook {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _serve_parser(sub.add_parser("serve", help="run the ext_proc service and /metrics"))
    envoy_command.configure_parser(
        sub.add_parser("envoy-config", help="print an Envoy bootstrap for tokenbook's routes")
    )
    for name, (module, help_text) in _SUBCOMMANDS.items():
        mod = _load(module)
        if mod is not None:
            mod.configure_parser(sub.add_parser(name, help=help_text))
    return parser


def _run_serve(
    ns: argparse.Namespace, environ: Mapping[str, str], stderr: TextIO, argv: Sequence[str]
) -> int:
    from tokenbook.app import serve
    from tokenbook.loop import run_loop
    from tokenbook.settings import SettingsError, load_settings, read_admin_token_file

    flags = {
        name: getattr(ns, name)
        for name in (
            "listen",
            "transport",
            "event_loop",
            "workers",
            "metrics_listen",
            "redis_url",
            "redis_prefix",
            "admin",
            "unknown_keys",
            "registry_down",
            "credential_swap",
            "drain_timeout_s",
            "log_level",
        )
    }
    try:
        if ns.admin_token_file:
            flags["admin_token"] = read_admin_token_file(ns.admin_token_file)
        settings = load_settings(flags, environ, ns.config)
    except SettingsError as exc:
        print(f"tokenbook serve: {exc}", file=stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        stream=stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        if ns.worker_index is not None:
            from tokenbook.workers import run_worker, worker_settings

            index = ns.worker_index
            run_loop(run_worker(worker_settings(settings, index), environ, index), settings)
        elif settings.workers > 1:
            from tokenbook.workers import supervise

            return supervise(settings, argv, environ, stderr)
        else:
            run_loop(serve(settings, environ), settings)
    except SettingsError as exc:
        print(f"tokenbook serve: {exc}", file=stderr)
        return 2
    except OSError as exc:
        print(f"tokenbook serve: {exc} (is another process using the port?)", file=stderr)
        return 1
    return 0


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    import os

    env = os.environ if environ is None else environ
    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr
    parser = build_parser()
    try:
        ns = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if ns.command == "serve":
        return _run_serve(ns, env, err, sys.argv[1:] if argv is None else argv)
    if ns.command == "envoy-config":
        from tokenbook.envoyconfig import command as envoy_command

        return envoy_command.run(ns, out)
    if ns.command in _SUBCOMMANDS:
        mod = _load(_SUBCOMMANDS[ns.command][0])
        assert mod is not None  # the parser only offers commands whose module loaded
        code: int = mod.run(ns, out, err)
        return code
    print(f"tokenbook: unknown command {ns.command!r}", file=err)
    return 2


if __name__ == "__main__":
    sys.exit(main())
