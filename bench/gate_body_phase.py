"""What the gate's buffered-body round trip costs in time to first byte, and what sending the
body with the headers would save: a measurement for issue 6's TTFB target.

    .venv/bin/python bench/gate_body_phase.py [--samples 200]

Why: tokenbook's gate asks for the buffered request body of OpenAI-style chat requests (to add
``stream_options.include_usage``) with a ``mode_override`` in its request-headers answer, so
Envoy makes two round trips to the processor before the request goes upstream. Envoy can
instead send a statically configured ``BUFFERED`` body right after the headers, without
waiting for their answer (``send_body_without_waiting_for_header_response``), which would
leave one round trip. This measures, with the no-op processor on tokenbook's ``h2``
transport and the bench's streaming upstream (first event 5 ms after the request), single
streams of one chat request each, interleaved in rounds:

- ``plain``: Envoy without ext_proc;
- ``headers_only``: the gate answers request headers only (no body phase at all);
- ``override``: the shipped config, the body asked for by ``mode_override`` (two round trips);
- ``with_headers``: the body configured ``BUFFERED`` and sent without waiting for the
  headers' answer.

It prints p50 / p90 time to first byte per setup and the difference to ``plain``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import envoy_setups
import ttfb
from run import PATH, start_envoy, tcp_open

from tokenbook.testing.stack import ManagedProcess, free_port, http_get

REPO = Path(__file__).resolve().parent.parent
BODY = json.dumps(
    {
        "model": "gpt-4o-mini",
        "stream": True,
        "messages": [{"role": "user", "content": "Summarise the news about OpenLLMetry."}],
    }
).encode()
HEADERS = {
    "authorization": "Bearer not-checked-by-the-no-op",
    "content-type": "application/json",
    envoy_setups.UPSTREAM_HEADER: "stream",
}


def _gate(doc: dict[str, Any]) -> dict[str, Any]:
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    for f in hcm["typed_config"]["http_filters"]:
        if f["name"] == "tokenbook.gate":
            gate: dict[str, Any] = f["typed_config"]
            return gate
    raise LookupError("no tokenbook.gate filter in the rendered config")


def _noop(work: Path, name: str, env: dict[str, str]) -> tuple[ManagedProcess, str]:
    port = free_port()
    proc = ManagedProcess(
        name,
        [
            sys.executable,
            str(REPO / "bench" / "noop_extproc.py"),
            "--listen",
            f"127.0.0.1:{port}",
            "--transport",
            "h2",
            "--uvloop",
        ],
        work,
        env=env,
    ).start()
    proc.wait_ready(lambda: tcp_open(port), 30)
    return proc, f"127.0.0.1:{port}"


def _gate_messages(admin_port: int) -> str:
    """Messages Envoy sent the gate per stream (its ext_proc stats): 2 = headers and body."""
    _, body = http_get(f"http://127.0.0.1:{admin_port}/stats?filter=tokenbook_gate")
    stats = dict(line.split(": ", 1) for line in body.decode().splitlines() if ": " in line)
    prefix = "http.tokenbook_gateway.ext_proc.tokenbook_gate."
    started = int(stats.get(prefix + "streams_started", 0))
    sent = int(stats.get(prefix + "stream_msgs_sent", 0))
    answered = int(stats.get(prefix + "stream_msgs_received", 0))
    return f"{sent / started:.1f} sent, {answered / started:.1f} answered" if started else "–"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--samples", type=int, default=200, help="streams per setup")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    ns = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="gate-body-phase-"))
    procs: list[ManagedProcess] = []
    try:
        stream_port = free_port()
        procs.append(
            ManagedProcess(
                "stream-upstream",
                [
                    sys.executable,
                    str(REPO / "bench" / "stream_upstream.py"),
                    "--port",
                    str(stream_port),
                    "--corpus",
                    str(REPO / "tests" / "corpus"),
                ],
                work,
            ).start()
        )
        procs[-1].wait_ready(lambda: tcp_open(stream_port), 30)
        noop, noop_addr = _noop(work, "noop", {})
        no_body, no_body_addr = _noop(work, "noop-no-body", {"TOKENBOOK_NOOP_NO_BODY": "1"})
        sent, sent_addr = _noop(work, "noop-body-sent", {"TOKENBOOK_NOOP_BODY_SENT": "1"})
        procs += [noop, no_body, sent]
        setups: dict[str, int] = {}
        admins: dict[str, int] = {}
        for name, extproc in (
            ("plain", None),
            ("headers_only", no_body_addr),
            ("override", noop_addr),
            ("with_headers", sent_addr),
        ):
            port, admin = free_port(), free_port()
            doc = envoy_setups.gateway_config(
                listen_port=port,
                admin_port=admin,
                upstream_port=free_port(),  # the direct-response upstream: not used here
                stream_port=stream_port,
                extproc=extproc,
            )
            if name == "with_headers":
                gate = _gate(doc)
                gate["processing_mode"]["request_body_mode"] = "BUFFERED"
                gate["send_body_without_waiting_for_header_response"] = True
            cfg = envoy_setups.write_yaml(work / f"gateway-{name}.yaml", doc)
            procs.append(start_envoy(f"envoy-{name}", cfg, admin, work))
            setups[name] = port
            admins[name] = admin
        samples: dict[str, list[float]] = {name: [] for name in setups}
        per_round = max(1, ns.samples // ns.rounds)
        for _ in range(ns.rounds):
            for name, port in setups.items():
                timings = asyncio.run(
                    ttfb.probe(
                        "127.0.0.1", port, PATH, BODY, HEADERS, concurrency=1, rounds=per_round
                    )
                )
                bad = [t.status for t in timings if t.status != 200]
                if bad:
                    raise RuntimeError(f"{name}: HTTP {bad[0]} ({len(bad)} of {len(timings)})")
                samples[name] += [1000 * t.ttfb_s for t in timings]
        plain = statistics.median(samples["plain"])
        print(f"time to first byte, {per_round * ns.rounds} single streams per setup, ms")
        print(f"{'setup':<14} {'p50':>6} {'p90':>6} {'p50 - plain':>12}  gate messages per request")
        for name, values in samples.items():
            values.sort()
            p50 = statistics.median(values)
            p90 = values[int(0.9 * (len(values) - 1))]
            gate = _gate_messages(admins[name])
            print(f"{name:<14} {p50:6.2f} {p90:6.2f} {p50 - plain:+12.2f}  {gate}")
        return 0
    finally:
        for proc in reversed(procs):
            proc.stop()


if __name__ == "__main__":
    raise SystemExit(main())
