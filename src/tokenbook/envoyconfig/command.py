"""`tokenbook envoy-config`: print (or write) the Envoy bootstrap or the paste-in snippet.

    tokenbook envoy-config > envoy.yaml
    tokenbook envoy-config --upstream '*=http://127.0.0.1:8080' --output envoy/local.yaml
    tokenbook envoy-config --snippet

Exit codes: 0 written, 1 the output file could not be written, 2 usage error (one line on
stderr that says what to do).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import TextIO

from tokenbook.envoyconfig.addresses import parse_upstream
from tokenbook.envoyconfig.providers import PROVIDER_IDS
from tokenbook.envoyconfig.render import (
    EnvoyConfigOptions,
    render_bootstrap,
    render_snippet,
    to_yaml,
)

PROG = "tokenbook envoy-config"
_DEFAULTS = EnvoyConfigOptions()


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add the envoy-config options to `p`: the `tokenbook` CLI's subparser, or a standalone one."""
    p.description = (
        "Render an Envoy 1.40 bootstrap for tokenbook's routing contract: clients call "
        "http://<gateway>/<provider>/<the provider's own path>. Providers: "
        + ", ".join(PROVIDER_IDS)
        + "."
    )
    p.add_argument(
        "--listen",
        default=_DEFAULTS.listen,
        metavar="IP:PORT",
        help=f"gateway listener (default {_DEFAULTS.listen})",
    )
    p.add_argument(
        "--tokenbook",
        default=_DEFAULTS.tokenbook,
        metavar="HOST:PORT",
        help=f"where `tokenbook serve` listens, or unix:/path (default {_DEFAULTS.tokenbook})",
    )
    p.add_argument(
        "--admin-port",
        type=int,
        default=_DEFAULTS.admin_port,
        metavar="PORT",
        help=f"Envoy admin port on 127.0.0.1 (default {_DEFAULTS.admin_port}; 0 = any free port)",
    )
    p.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="PROVIDER=URL",
        help=(
            "send a provider elsewhere, e.g. openai=http://127.0.0.1:9000 (/openai/x goes to "
            "http://127.0.0.1:9000/x; a base path in the URL replaces the prefix); "
            "'*=URL' sends every other provider to URL/<provider>/x; an unknown id adds a "
            "route; repeatable"
        ),
    )
    p.add_argument(
        "--gate-fail-open",
        action="store_true",
        help="let requests through when tokenbook is unreachable (gate failure_mode_allow: "
        "true); default: fail closed (500), so no traffic goes unattributed",
    )
    p.add_argument(
        "--meter-fail-closed",
        action="store_true",
        help="fail responses when the meter is unreachable (not recommended; default: fail open)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=_DEFAULTS.workers,
        metavar="N",
        help="`tokenbook serve --workers N`: one ext_proc endpoint per worker, at the "
        "--tokenbook port + 0..N-1 (default 1)",
    )
    p.add_argument(
        "--snippet",
        action="store_true",
        help="print only the two ext_proc filters and the tokenbook_extproc cluster, "
        "to paste into an existing Envoy",
    )
    p.add_argument(
        "--output",
        metavar="FILE",
        help="write to FILE (atomically) instead of stdout",
    )


def options_from_args(ns: argparse.Namespace) -> EnvoyConfigOptions:
    """Build the options; ValueError says which flag is wrong and how."""
    upstreams: dict[str, str] = {}
    for spec in ns.upstream or []:
        provider, url = parse_upstream(spec)
        if provider in upstreams:
            raise ValueError(f"--upstream {provider} is given twice; pass each provider once")
        upstreams[provider] = url
    return EnvoyConfigOptions(
        listen=ns.listen,
        tokenbook=ns.tokenbook,
        admin_port=ns.admin_port,
        upstreams=upstreams,
        gate_failure_mode_allow=bool(getattr(ns, "gate_fail_open", False)),
        meter_failure_mode_allow=not getattr(ns, "meter_fail_closed", False),
        workers=getattr(ns, "workers", _DEFAULTS.workers),
    )


def command_line(ns: argparse.Namespace) -> str:
    """The flags that shaped the output, for its header comment (defaults left out)."""
    args: list[str] = []
    if ns.listen != _DEFAULTS.listen:
        args += ["--listen", ns.listen]
    if ns.tokenbook != _DEFAULTS.tokenbook:
        args += ["--tokenbook", ns.tokenbook]
    if ns.admin_port != _DEFAULTS.admin_port:
        args += ["--admin-port", str(ns.admin_port)]
    for spec in ns.upstream or []:
        args += ["--upstream", spec]
    if getattr(ns, "gate_fail_open", False):
        args.append("--gate-fail-open")
    if getattr(ns, "meter_fail_closed", False):
        args.append("--meter-fail-closed")
    if getattr(ns, "workers", _DEFAULTS.workers) != _DEFAULTS.workers:
        args += ["--workers", str(ns.workers)]
    if ns.snippet:
        args.append("--snippet")
    return shlex.join(args)


def render_text(ns: argparse.Namespace, *, note: str | None = None) -> str:
    """The YAML the command prints; `note` adds comment lines under the first one."""
    opts = options_from_args(ns)
    doc = render_snippet(opts) if ns.snippet else render_bootstrap(opts)
    header = command_line(ns)
    if note:
        header = f"{header}\n{note}"
    return to_yaml(doc, header=header)


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` in one step, so Envoy or a reviewer never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run(ns: argparse.Namespace, stdout: TextIO, *, stderr: TextIO | None = None) -> int:
    """Render and print (or write) the config; see the module docstring for exit codes."""
    err = sys.stderr if stderr is None else stderr
    try:
        text = render_text(ns)
    except ValueError as exc:
        print(f"{PROG}: error: {exc}", file=err)
        return 2
    if not ns.output:
        stdout.write(text)
        return 0
    try:
        write_atomically(Path(ns.output), text)
    except OSError as exc:
        print(f"{PROG}: error: cannot write {ns.output}: {exc.strerror or exc}", file=err)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point: `python -m tokenbook.envoyconfig.command ...`."""
    parser = argparse.ArgumentParser(prog=PROG)
    configure_parser(parser)
    return run(parser.parse_args(argv), sys.stdout)


if __name__ == "__main__":
    raise SystemExit(main())
