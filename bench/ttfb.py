"""Streaming clients for the bench: time to first byte, and many streams held open.

wrk reports whole-response latency only. For streams, what a user feels is the time to the first
body byte (the first token), so this opens streams itself on raw HTTP/1.1 connections (asyncio,
one task per stream) and timestamps the first body byte and the end of the body.

`hold_open` opens many slow streams at once and keeps them open while the caller samples memory
(tokenbook's RSS at 1,000 concurrent streams).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StreamTiming:
    status: int
    ttfb_s: float  # request written -> first body byte
    total_s: float  # request written -> end of the body
    body_bytes: int


def _request(path: str, body: bytes, headers: Mapping[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "host: bench", f"content-length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    fields = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip().lower()] = value.strip()
    return status, fields


async def _read_body(
    reader: asyncio.StreamReader, fields: Mapping[str, str], on_first: Callable[[], None]
) -> int:
    """Read a chunked or content-length body; call `on_first` at its first byte."""
    total = 0
    if fields.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return total
            if total == 0:
                on_first()  # the chunk's size line is its first byte on the wire
            await reader.readexactly(size + 2)
            total += size
    length = int(fields.get("content-length", "0"))
    if length:
        first = await reader.read(1)
        on_first()
        await reader.readexactly(length - len(first))
    return length


async def one_stream(
    host: str,
    port: int,
    path: str,
    body: bytes,
    headers: Mapping[str, str],
    on_first: Callable[[], None] | None = None,
) -> StreamTiming:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        start = time.perf_counter()
        first = 0.0

        def mark() -> None:
            nonlocal first
            first = time.perf_counter()
            if on_first is not None:
                on_first()

        writer.write(_request(path, body, headers))
        status, fields = await _read_head(reader)
        size = await _read_body(reader, fields, mark)
        end = time.perf_counter()
        return StreamTiming(status, (first or end) - start, end - start, size)
    finally:
        writer.close()


async def probe(
    host: str,
    port: int,
    path: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    concurrency: int,
    rounds: int,
) -> list[StreamTiming]:
    """`rounds` waves of `concurrency` simultaneous streams; the timings of all of them."""
    out: list[StreamTiming] = []
    for _ in range(rounds):
        wave = [one_stream(host, port, path, body, headers) for _ in range(concurrency)]
        out += await asyncio.gather(*wave)
    return out


@dataclass(frozen=True, slots=True)
class HoldResult:
    opened: int  # streams that got their first body byte
    sample: object  # whatever the caller's sampler returned while they were all open
    open_s: float  # time to get all of them open
    failed: int  # streams answered with a status other than 200


async def hold_open(
    host: str,
    port: int,
    path: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    streams: int,
    open_timeout_s: float,
    sampler: Callable[[], Awaitable[object]],
    ramp: int = 100,
) -> HoldResult:
    """Open `streams` slow streams, call `sampler()` once all are open, then cut them all."""
    opened = 0
    failed: list[int] = []
    all_open = asyncio.Event()
    # Streams are opened at most `ramp` at a time (a slot is freed at the first byte): 1,000
    # requests at the same instant queue up in the gate past Envoy's message_timeout (measured:
    # 500s from the fail-closed gate), which is a burst test, not a memory test.
    gate = asyncio.Semaphore(ramp)

    async def run_one() -> None:
        slot = True

        def first() -> None:
            nonlocal opened, slot
            opened += 1
            slot = False
            gate.release()
            if opened >= streams:
                all_open.set()

        await gate.acquire()
        try:
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(_request(path, body, headers))
                status, fields = await _read_head(reader)
                if status != 200:
                    failed.append(status)
                    return
                await _read_body(reader, fields, first)
            finally:
                writer.close()
        finally:
            if slot:
                gate.release()

    start = time.perf_counter()
    tasks = [asyncio.create_task(run_one()) for _ in range(streams)]
    try:
        with suppress(TimeoutError):  # report how many did open
            await asyncio.wait_for(all_open.wait(), open_timeout_s)
        open_s = time.perf_counter() - start
        sample = await sampler()
        return HoldResult(opened, sample, open_s, len(failed))
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
