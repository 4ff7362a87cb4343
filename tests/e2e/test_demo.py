"""`make demo` end to end: it runs, prints the audit and a fired runaway-agent alert, and leaves
nothing running after it ends."""

from __future__ import annotations

import re
import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_demo_runs_end_to_end_and_cleans_up() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tokenbook.demo", "--duration", "40"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = done.stdout
    assert done.returncode == 0, done.stderr[-3000:]
    assert "== tokenbook audit ==" in out
    assert "1. Keys by spend" in out
    assert "0 failed" in out
    assert re.search(r"\[firing\] TokenbookRunawayAgent \(agent=looper\)", out), out[-3000:]
    assert "stopped everything the demo started" in out
    ports = [int(p) for p in re.findall(r"http://127\.0\.0\.1:(\d+)", out)]
    assert len(ports) >= 3
    still = [p for p in ports if _listening(p)]
    assert not still, f"ports still listening after the demo: {still}"
