"""A streaming fake LLM upstream for the bench: SSE events a few milliseconds apart.

Envoy's `direct_response` answers instantly and in one piece; a real model streams tokens over
time, and that is what exercises the meter's per-chunk path and holds streams open. One process,
one asyncio loop (uvloop when installed), one `asyncio.Protocol` per connection and a timer per
stream: thousands of concurrent streams cost little, so the upstream is never the bottleneck.

HTTP/1.1 with keep-alive (what Envoy speaks upstream by default). Per request, headers choose:

    x-bench-delay-ms   gap between events (default 5)
    x-bench-chunks     number of `data:` events including the final `[DONE]` (default 30)
    x-bench-first-ms   delay before the first event (default: the gap)

The events are the recorded OpenAI stream `stream_include_usage_reasoning.sse`, padded with
content deltas cloned from its first event to the requested count, so the meter sees a real
provider stream with the usage chunk at the end.

    python bench/stream_upstream.py --port 18080 --corpus tests/corpus
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from pathlib import Path
from typing import cast

SSE_FIXTURE = "openai/chat/stream_include_usage_reasoning.sse"
_MAX_HEAD = 64 * 1024


def sse_events(corpus: Path, count: int) -> list[bytes]:
    """`count` SSE events (each ending in a blank line) from the recorded stream."""
    text = (corpus / SSE_FIXTURE).read_text(encoding="utf-8")
    events = [e.strip() + "\n\n" for e in text.split("\n\n") if e.strip()]
    first = json.loads(events[0].removeprefix("data: "))
    padding: list[str] = []
    for i in range(max(0, count - len(events))):
        doc = json.loads(json.dumps(first))
        doc["choices"][0]["delta"] = {"content": f"tok{i} "}
        padding.append("data: " + json.dumps(doc, separators=(",", ":")) + "\n\n")
    return [e.encode() for e in [events[0], *padding, *events[1:]]]


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Connection(asyncio.Protocol):
    """One client connection: parse a request head and body, stream the answer, repeat."""

    def __init__(self, server: StreamServer) -> None:
        self._server = server
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._body_left = -1  # -1: reading a head; >= 0: body bytes still to skip
        self._streaming = False
        self._timer: asyncio.TimerHandle | None = None
        self._pending_head: tuple[int, int, int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but have its methods
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buf += data
        self._advance()

    def _advance(self) -> None:
        while not self._streaming:
            if self._body_left < 0:
                end = self._buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self._buf) > _MAX_HEAD and self._transport is not None:
                        self._transport.close()
                    return
                head = bytes(self._buf[:end]).decode("latin-1")
                del self._buf[: end + 4]
                self._body_left, self._pending_head = self._parse(head)
            take = min(self._body_left, len(self._buf))
            del self._buf[:take]
            self._body_left -= take
            if self._body_left > 0:
                return
            self._body_left = -1
            assert self._pending_head is not None
            self._start(*self._pending_head)

    def _parse(self, head: str) -> tuple[int, tuple[int, int, int]]:
        length, delay_ms, chunks = 0, self._server.delay_ms, self._server.chunks
        first_ms: int | None = None
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value.strip() or 0)
            elif name == "x-bench-delay-ms":
                delay_ms = int(value.strip())
            elif name == "x-bench-chunks":
                chunks = int(value.strip())
            elif name == "x-bench-first-ms":
                first_ms = int(value.strip())
        return length, (delay_ms, chunks, delay_ms if first_ms is None else first_ms)

    def _start(self, delay_ms: int, chunks: int, first_ms: int) -> None:
        if self._transport is None:
            return
        self._streaming = True
        self._transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        events = self._server.events_for(chunks)
        self._schedule(events, 0, delay_ms / 1000, first_ms / 1000)

    def _schedule(self, events: list[bytes], i: int, delay_s: float, wait_s: float) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(wait_s, self._send, events, i, delay_s)

    def _send(self, events: list[bytes], i: int, delay_s: float) -> None:
        self._timer = None
        if self._transport is None:
            return
        if i + 1 < len(events):
            self._transport.write(_chunk(events[i]))
            self._schedule(events, i + 1, delay_s, delay_s)
            return
        self._transport.write(_chunk(events[i]) + b"0\r\n\r\n")
        self._streaming = False
        self._advance()


class StreamServer:
    def __init__(self, corpus: Path, delay_ms: int, chunks: int) -> None:
        self.corpus = corpus
        self.delay_ms = delay_ms
        self.chunks = chunks
        self._events: dict[int, list[bytes]] = {}

    def events_for(self, chunks: int) -> list[bytes]:
        chunks = max(2, min(chunks, 10_000))
        if chunks not in self._events:
            self._events[chunks] = sse_events(self.corpus, chunks)
        return self._events[chunks]

    async def serve(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _Connection(self), host, port, backlog=4096, reuse_address=True
        )
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(f"stream upstream on {host}:{port}", flush=True)
        async with server:
            await stop.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--delay-ms", type=int, default=5)
    p.add_argument("--chunks", type=int, default=30)
    ns = p.parse_args(argv)
    server = StreamServer(ns.corpus, ns.delay_ms, ns.chunks)
    try:
        import uvloop

        uvloop.run(server.serve(ns.host, ns.port))
    except ImportError:
        asyncio.run(server.serve(ns.host, ns.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
