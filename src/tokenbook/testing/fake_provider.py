"""A local fake LLM provider that answers with recorded provider responses.

Used by the end-to-end tests and the demo: no provider account, no network. It speaks plain
HTTP/1.1 (what Envoy sends to an ``http://`` upstream), keeps connections alive, records every
request it receives (so tests can check what the upstream really got: attribution headers,
credentials), and answers with a file of the recorded corpus.

Which file: the request header ``x-fake-fixture: <path relative to the corpus>`` names it; without
it, a default per API path is used (JSON, or SSE when the request body says ``"stream": true``).
Other controls, all request headers:

- ``x-fake-gzip: 1``            gzip the body and send ``content-encoding: gzip``;
- ``x-fake-chunk-bytes: N``     send the body in chunks of N bytes (chunked transfer encoding);
- ``x-fake-chunk-delay-ms: N``  wait N ms between chunks;
- ``x-fake-abort-after: N``     send N body bytes, then drop the connection (an upstream reset);
- ``x-fake-bomb-mb: N``         answer with N MiB of zeros, gzip-compressed (a decompression
  bomb: a fault test, not a provider response).

Run standalone: ``python -m tokenbook.testing.fake_provider --port 8080 --corpus tests/corpus``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import threading
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import orjson

_CONTENT_TYPES = {
    ".json": "application/json",
    ".sse": "text/event-stream",
    ".ndjson": "application/x-ndjson",
    ".bin": "application/vnd.amazon.eventstream",
}

# Default fixtures by (provider-path suffix, streaming?).
_DEFAULTS: tuple[tuple[str, bool, str], ...] = (
    ("/chat/completions", False, "openai/chat/nonstream_prompt_cache_hit.json"),
    ("/chat/completions", True, "openai/chat/stream_include_usage_reasoning.sse"),
    ("/v1/messages", False, "anthropic/messages/nonstream_cache_write_and_read.json"),
    ("/v1/messages", True, "anthropic/messages/stream_cache_read.sse"),
    ("/responses", False, "openai/responses/nonstream_basic_gpt55.json"),
    ("/responses", True, "openai/responses/stream_basic_gpt55.sse"),
    (":generateContent", False, "gemini/generate_content/nonstream_gemini3_thoughts.json"),
    (":streamGenerateContent", True, "gemini/generate_content/stream_sse_gemini20.sse"),
    ("/converse", False, "bedrock/converse/nonstream_cache_read.json"),
    ("/converse-stream", True, "bedrock/converse/stream_nova_micro.bin"),
    ("/embeddings", False, "openai/embeddings/float_basic.json"),
)


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]


@dataclass
class FakeProvider:
    corpus: Path
    host: str = "127.0.0.1"
    port: int = 0
    requests: list[ReceivedRequest] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def received(self) -> list[ReceivedRequest]:
        with self._lock:
            return list(self.requests)

    def find(self, header: str, value: str) -> ReceivedRequest:
        """The request that carried `header: value` (tests tag requests with a unique value)."""
        for r in self.received():
            if r.header(header) == value:
                return r
        raise LookupError(f"the fake provider received no request with {header}: {value}")

    def choose(self, path: str, headers: Mapping[str, str], body: bytes) -> Path:
        named = headers.get("x-fake-fixture")
        if named:
            target = (self.corpus / named).resolve()
            if self.corpus.resolve() not in target.parents or not target.is_file():
                raise FileNotFoundError(named)
            return target
        compact = body.replace(b" ", b"")
        streaming = b'"stream":true' in compact or "stream" in path.lower()
        if streaming and path.split("?", 1)[0].endswith("/chat/completions"):
            # Like OpenAI: a usage chunk only when the request asked for it.
            if b'"include_usage":true' in compact:
                return self.corpus / "openai/chat/stream_include_usage_reasoning.sse"
            return self.corpus / "openai/chat/stream_no_include_usage.sse"
        for suffix, stream, name in _DEFAULTS:
            if stream == streaming and path.split("?", 1)[0].endswith(suffix):
                return self.corpus / name
        raise FileNotFoundError(path)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers: list[tuple[str, str]] = []
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers.append((k.strip().lower(), v.strip()))
                hmap = dict(headers)
                body = await _read_body(reader, hmap)
                with self._lock:
                    self.requests.append(ReceivedRequest(method, target, tuple(headers), body))
                if not await self._respond(writer, target, hmap, body):
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _respond(
        self, writer: asyncio.StreamWriter, path: str, headers: Mapping[str, str], body: bytes
    ) -> bool:
        """Write one response; False when the connection must be dropped afterwards."""
        try:
            fixture = self.choose(path, headers, body)
        except FileNotFoundError as exc:
            payload = orjson.dumps({"error": {"message": f"fake provider: no fixture {exc}"}})
            writer.write(_head(404, "application/json", {"content-length": str(len(payload))}))
            writer.write(payload)
            await writer.drain()
            return True
        data = fixture.read_bytes()
        status = _status_for(fixture)
        extra: dict[str, str] = {}
        bomb_mb = int(headers.get("x-fake-bomb-mb", "0") or 0)
        if bomb_mb > 0:
            data = _bomb(bomb_mb)
            extra["content-encoding"] = "gzip"
        elif headers.get("x-fake-gzip") == "1":
            data = gzip.compress(data)
            extra["content-encoding"] = "gzip"
        chunk = int(headers.get("x-fake-chunk-bytes", "0") or 0)
        delay = int(headers.get("x-fake-chunk-delay-ms", "0") or 0) / 1000
        abort_after = int(headers.get("x-fake-abort-after", "-1") or -1)
        ctype = _CONTENT_TYPES.get(fixture.suffix, "application/octet-stream")
        if chunk <= 0 and abort_after < 0:
            extra["content-length"] = str(len(data))
            writer.write(_head(status, ctype, extra))
            writer.write(data)
            await writer.drain()
            return True
        extra["transfer-encoding"] = "chunked"
        writer.write(_head(status, ctype, extra))
        step = chunk if chunk > 0 else len(data)
        sent = 0
        for start in range(0, len(data), step):
            piece = data[start : start + step]
            if 0 <= abort_after < sent + len(piece):
                piece = piece[: abort_after - sent]
                if piece:
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
                return False  # drop the connection mid-body
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            sent += len(piece)
            await writer.drain()
            if delay:
                await asyncio.sleep(delay)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    async def serve(self, ready: threading.Event | None = None) -> None:
        server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = server.sockets[0].getsockname()[1]
        if ready is not None:
            ready.set()
        async with server:
            await server.serve_forever()


def _bomb(megabytes: int) -> bytes:
    """`megabytes` MiB of zeros, gzip-compressed (about 1000:1), built without holding them."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1024 * 1024)
    parts = [comp.compress(block) for _ in range(megabytes)]
    parts.append(comp.flush())
    return b"".join(parts)


def _status_for(fixture: Path) -> int:
    name = fixture.name
    if name.startswith("error_"):
        code = name.split("_", 2)[1]
        if code.isdigit():
            return int(code)
    return 200


def _head(status: int, ctype: str, extra: Mapping[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"content-type: {ctype}"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _read_body(reader: asyncio.StreamReader, headers: Mapping[str, str]) -> bytes:
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts: list[bytes] = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
    return b""


class FakeProviderThread:
    """Runs a `FakeProvider` on its own event loop in a daemon thread (for tests and the demo)."""

    def __init__(self, corpus: Path, port: int = 0) -> None:
        self.provider = FakeProvider(corpus=corpus, port=port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="fake-provider", daemon=True)
        self._ready = threading.Event()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            with contextlib.suppress(asyncio.CancelledError):
                self._loop.run_until_complete(self.provider.serve(self._ready))
        finally:
            self._loop.close()

    def start(self) -> FakeProviderThread:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake provider did not start")
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.provider.port}"

    def stop(self) -> None:
        def _cancel() -> None:
            for task in asyncio.all_tasks(self._loop):
                task.cancel()

        self._loop.call_soon_threadsafe(_cancel)
        self._thread.join(timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser(description="tokenbook's fake LLM provider")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--corpus", type=Path, default=Path("tests/corpus"))
    ns = parser.parse_args()
    fake = FakeProvider(corpus=ns.corpus, host=ns.host, port=ns.port)
    asyncio.run(fake.serve())


if __name__ == "__main__":
    main()
