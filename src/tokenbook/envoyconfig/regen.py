"""Regenerate the shipped configs in `envoy/` (`make envoy-configs`).

    python -m tokenbook.envoyconfig.regen            # write envoy/*.yaml
    python -m tokenbook.envoyconfig.regen --check    # exit 1 if any file differs from a render

Each file is exactly what `tokenbook envoy-config <flags>` prints, plus a note saying how it was
made; a unit test fails when a file drifts from a fresh render.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tokenbook.envoyconfig.command import configure_parser, render_text, write_atomically

# The repository's envoy/ directory (src/tokenbook/envoyconfig/regen.py → repo root).
ENVOY_DIR = Path(__file__).resolve().parents[3] / "envoy"
NOTE = "shipped file: regenerate with `make envoy-configs`; do not edit by hand"

# In a container Envoy listens on every interface and finds tokenbook by its compose service name.
_COMPOSE = ("--listen", "0.0.0.0:10000", "--tokenbook", "tokenbook:50051")

SHIPPED: dict[str, tuple[str, ...]] = {
    # A standalone gateway in front of the public provider endpoints.
    "gateway.yaml": (),
    # Every provider to one local fake provider, under /<provider>/ (tests, demo, development).
    "local.yaml": ("--upstream", "*=http://127.0.0.1:8080"),
    # The two ext_proc filters and their cluster, for an existing Envoy.
    "snippet.yaml": ("--snippet",),
    # docker-compose.yaml: tokenbook by its service name, the public provider endpoints.
    "compose.yaml": _COMPOSE,
    # docker-compose.yaml's demo profile: every provider to the fake-provider service.
    "compose-demo.yaml": (*_COMPOSE, "--upstream", "*=http://fake-provider:8080"),
}


def render_shipped(name: str) -> str:
    """The current rendering of one shipped file, by its name in `SHIPPED`."""
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return render_text(parser.parse_args(list(SHIPPED[name])), note=NOTE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tokenbook.envoyconfig.regen")
    parser.add_argument("--dir", type=Path, default=ENVOY_DIR, help="target directory")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if any file is stale"
    )
    ns = parser.parse_args(argv)
    stale: list[str] = []
    for name in SHIPPED:
        path: Path = ns.dir / name
        text = render_shipped(name)
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        if ns.check:
            stale.append(str(path))
        else:
            write_atomically(path, text)
            print(f"wrote {path}")
    if stale:
        print(f"stale: {', '.join(stale)}; run `make envoy-configs`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
