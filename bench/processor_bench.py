"""tokenbook's own work per request, without Envoy or a transport: CPU µs of the processors.

    make bench-processors                                     # ~30 s, prints a table
    .venv/bin/python bench/processor_bench.py --requests 20000 --profile out.prof

Why: `make bench` measures the whole process under Envoy, where tokenbook's logic is one part
among framing, syscalls and the event loop, and every run takes minutes. This drives the very
objects `tokenbook serve` builds (`tokenbook.app.App`: gate, meter, booker, pricer, metrics,
ledger writer to a real `redis-server` on a free port) with the protobuf messages Envoy sends for
one JSON chat request (gate: request headers + buffered body; meter: response headers with
the request as attributes, the response body), as serialized bytes, and answers serialized
back; so the figure is comparable with the no-op processor's, which this also measures
(parse every message, answer the same phases with empty answers).

Per request, reported separately (process CPU time, `time.process_time`):
- ``noop``: parse + empty answers (the transport-independent part of the no-op processor);
- ``gate``, ``meter``: tokenbook's processors for each stream (parse and answers included),
  the meter for the JSON response;
- ``meter_sse``, ``meter_stream``: the meter for `make bench`'s 30-event SSE body, in one body
  message and in 30 (``chunk`` = the difference per further message);
- ``ledger``: the writer's Redis work per booking, measured while it drains.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import sys
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, cast

import benchkey
import stream_upstream
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2

from tokenbook.app import App
from tokenbook.extproc.h2_transport import _resume
from tokenbook.extproc.streams import MeterStream
from tokenbook.settings import load_settings
from tokenbook.testing.stack import ManagedProcess, executable, free_port, wait_until

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "tests" / "corpus"
JSON_FIXTURE = CORPUS / "openai/chat/nonstream_prompt_cache_hit.json"
SSE_EVENTS = 30  # as `make bench`: the stream fixture's events, each its own body message
REQUEST = json.dumps(
    {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Summarise the news about OpenLLMetry."}],
    }
).encode()
ATTRS = "envoy.filters.http.ext_proc"


def header_map(pairs: list[tuple[str, str]]) -> base_pb2.HeaderMap:
    return base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs]
    )


def attributes(request_id: str) -> dict[str, struct_pb2.Struct]:
    s = struct_pb2.Struct()
    s.update({"xds.route_name": "openai", "request.id": request_id})
    return {ATTRS: s}


def meter_attributes(request_id: str) -> dict[str, struct_pb2.Struct]:
    """The meter's `response_attributes` as Envoy 1.40 sends them (measured)."""
    s = struct_pb2.Struct()
    s.update(
        {
            "xds.route_name": "openai",
            "request.id": request_id,
            "request.path": "/openai/v1/chat/completions",
            "request.method": "POST",
            "request.time": "2026-12-03T22:33:23.827313+00:00",
            "response.code_details": "via_upstream",
        }
    )
    return {ATTRS: s}


def request_headers(key: str, request_id: str) -> list[tuple[str, str]]:
    """What Envoy 1.40 sends for a wrk POST (the order and the set it forwards)."""
    return [
        (":authority", "127.0.0.1:10000"),
        (":path", "/openai/v1/chat/completions"),
        (":method", "POST"),
        (":scheme", "http"),
        ("authorization", f"Bearer {key}"),
        ("content-type", "application/json"),
        ("content-length", str(len(REQUEST))),
        ("user-agent", "wrk"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", request_id),
    ]


def response_headers(body: bytes, content_type: str) -> list[tuple[str, str]]:
    return [
        (":status", "200"),
        ("content-type", content_type),
        ("content-length", str(len(body))),
        ("date", "Thu, 03 Dec 2026 20:00:00 GMT"),
        ("server", "envoy"),
        ("x-envoy-upstream-service-time", "0"),
    ]


class Messages:
    """One request's four ext_proc messages, serialized, with a fresh request id each time."""

    def __init__(self, key: str, body: bytes) -> None:
        self.key = key
        self.body = body

    def gate(self, rid: str) -> list[bytes]:
        return [
            pb.ProcessingRequest(
                request_headers=pb.HttpHeaders(headers=header_map(request_headers(self.key, rid))),
                attributes=attributes(rid),
            ).SerializeToString(),
            pb.ProcessingRequest(
                request_body=pb.HttpBody(body=REQUEST, end_of_stream=True)
            ).SerializeToString(),
        ]

    def meter(
        self,
        rid: str,
        metadata: struct_pb2.Struct,
        chunks: list[bytes] | None = None,
        content_type: str = "application/json",
    ) -> list[bytes]:
        # What the shipped meter config sees (no request-headers phase): the response
        # headers with the request as response attributes, and the gate's dynamic metadata.
        bodies = chunks if chunks is not None else [self.body]
        meta = base_pb2.Metadata()
        meta.filter_metadata["tokenbook"].CopyFrom(metadata)
        common: dict[str, Any] = {"observability_mode": True, "metadata_context": meta}
        return [
            pb.ProcessingRequest(
                response_headers=pb.HttpHeaders(
                    headers=header_map(response_headers(b"".join(bodies), content_type))
                ),
                attributes=meter_attributes(rid),
                **common,
            ).SerializeToString(),
            *(
                pb.ProcessingRequest(
                    response_body=pb.HttpBody(body=b, end_of_stream=i == len(bodies) - 1),
                    **common,
                ).SerializeToString()
                for i, b in enumerate(bodies)
            ),
        ]


SUSPENDED = [0]


async def drive(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a processor coroutine as the h2 transport does: synchronously up to its first
    suspension (none on a key-cache hit), then, if it does suspend, as part of this task."""
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        return stop.value
    SUSPENDED[0] += 1
    return await _resume(coro, yielded)


def noop_request(gate_msgs: list[bytes], meter_msgs: list[bytes]) -> None:
    parse = pb.ProcessingRequest.FromString
    for raw in gate_msgs:
        msg = parse(raw)
        which = msg.WhichOneof("request")
        if which == "request_headers":
            pb.ProcessingResponse(request_headers=pb.HeadersResponse()).SerializeToString()
        else:
            pb.ProcessingResponse(request_body=pb.BodyResponse()).SerializeToString()
    for raw in meter_msgs:
        parse(raw).WhichOneof("request")


async def measure(
    app: App, msgs: Messages, n: int, profile: cProfile.Profile | None
) -> dict[str, float]:
    processors = app.processors
    parse = pb.ProcessingRequest.FromString
    # Warm the key cache, the price cache and the metric children.
    rid0 = "warm"
    gate = processors.new_stream("gate", parse(msgs.gate(rid0)[0]))
    await gate.on_message(parse(msgs.gate(rid0)[0]))

    prepared = []
    for i in range(n):
        rid = f"bench-{os.getpid()}-{i}"
        prepared.append((rid, msgs.gate(rid)))

    def metadata_of(r: pb.ProcessingResponse) -> struct_pb2.Struct:
        return cast(struct_pb2.Struct, r.dynamic_metadata.fields["tokenbook"].struct_value)

    # noop
    meter_template = msgs.meter("x", struct_pb2.Struct())
    t0 = time.process_time()
    for _, gm in prepared:
        noop_request(gm, meter_template)
    noop = time.process_time() - t0

    # gate
    answers = []
    parse_answer = pb.ProcessingResponse.FromString
    if profile:
        profile.enable()
    t0 = time.process_time()
    for rid, gm in prepared:
        first = parse(gm[0])
        stream = processors.new_stream("gate", first)
        answer = await drive(stream.on_message(first))
        answer.SerializeToString()
        second = parse(gm[1])
        (await drive(stream.on_message(second))).SerializeToString()
        stream.close()
        answers.append((rid, answer))
    gate_s = time.process_time() - t0
    if profile:
        profile.disable()
    # The answers may be in wire form already (`wire.Encoded`): read them back as messages.
    metas = [(rid, metadata_of(parse_answer(a.SerializeToString()))) for rid, a in answers]

    queued_before = app.ledger.writer.queued
    events = stream_upstream.sse_events(CORPUS, SSE_EVENTS)

    def again(meta: struct_pb2.Struct, tag: str) -> struct_pb2.Struct:
        # Another admission of the same request: its own booking, not a duplicate of the first.
        copy = struct_pb2.Struct()
        copy.CopyFrom(meta)
        copy.fields["admission_id"].string_value += tag
        return copy

    variants = {
        "meter_us": [msgs.meter(rid, meta) for rid, meta in metas],
        "meter_sse_us": [
            msgs.meter(rid, again(meta, "s"), [b"".join(events)], "text/event-stream")
            for rid, meta in metas
        ],
        "meter_stream_us": [
            msgs.meter(rid, again(meta, "t"), events, "text/event-stream") for rid, meta in metas
        ],
    }
    meter_us: dict[str, float] = {}
    for name, meter_msgs in variants.items():
        if profile:
            profile.enable()
        t0 = time.process_time()
        for mm in meter_msgs:
            first = parse(mm[0])
            stream = cast(MeterStream, processors.new_stream("meter", first))
            stream.observe(first)
            for raw in mm[1:]:
                if stream.observe(parse(raw)):
                    stream.close()
        meter_us[name] = (time.process_time() - t0) / n * 1e6
        if profile:
            profile.disable()
    booked = app.ledger.writer.queued - queued_before

    # The writer drains what the meter queued: its CPU per booking.
    if profile:
        profile.enable()
    t0 = time.process_time()
    wall = time.monotonic()
    while app.ledger.writer.queued and time.monotonic() - wall < 60:  # noqa: ASYNC110
        await asyncio.sleep(0.001)
    ledger_s = time.process_time() - t0
    if profile:
        profile.disable()
    return {
        "requests": n,
        "booked": booked,
        "noop_us": noop / n * 1e6,
        "gate_us": gate_s / n * 1e6,
        **meter_us,
        "chunk_us": (meter_us["meter_stream_us"] - meter_us["meter_sse_us"]) / (SSE_EVENTS - 1),
        "ledger_us": ledger_s / max(booked, 1) * 1e6,
        "suspended": SUSPENDED[0],
    }


async def amain(
    ns: argparse.Namespace, redis_url: str, key: str, work: Path
) -> list[dict[str, float]]:
    settings = load_settings(
        {
            "redis_url": redis_url,
            "listen": "127.0.0.1:0",
            "metrics_listen": "127.0.0.1:0",
            "ledger_spool_dir": str(work / "spool"),
        },
        {},
    )
    app = App(settings, {})
    ledger_task = asyncio.create_task(app.ledger.run())
    profile = cProfile.Profile() if ns.profile else None
    rows = []
    try:
        for _ in range(ns.passes):
            rows.append(
                await measure(app, Messages(key, JSON_FIXTURE.read_bytes()), ns.requests, profile)
            )
    finally:
        ledger_task.cancel()
        await asyncio.gather(ledger_task, return_exceptions=True)
        await app.ledger.aclose()
        await app.redis.aclose()
    if profile:
        profile.dump_stats(ns.profile)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--profile", metavar="FILE", help="cProfile the gate and meter into FILE")
    ns = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tb-procbench-") as tmp:
        work = Path(tmp)
        port = free_port()
        redis = ManagedProcess(
            "redis",
            [
                executable("redis-server"),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                tmp,
            ],
            work,
        ).start()
        try:
            wait_until(lambda: _ping(port), 15, "redis")
            url = f"redis://127.0.0.1:{port}/0"
            key = benchkey.issue_key(url, agent="proc", team="perf")
            rows = asyncio.run(amain(ns, url, key, work))
        finally:
            redis.stop()
    cols = (
        "noop_us",
        "gate_us",
        "meter_us",
        "ledger_us",
        "meter_sse_us",
        "meter_stream_us",
        "chunk_us",
    )
    print(
        f"{'pass':>4} {'requests':>8} "
        + " ".join(f"{c:>10}" for c in cols)
        + f" {'total-noop':>10}"
    )
    for i, r in enumerate(rows, 1):
        total = r["gate_us"] + r["meter_us"] + r["ledger_us"] - r["noop_us"]
        print(
            f"{i:>4} {int(r['requests']):>8} "
            + " ".join(f"{r[c]:>10.1f}" for c in cols)
            + f" {total:>10.1f}"
        )
    return 0


def _ping(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
