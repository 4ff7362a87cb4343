"""tokenbook's fast ext_proc transport: gRPC on its own HTTP/2 layer, no task per stream.

Why: a grpc.aio stream costs ~1 ms of CPU per request for a gate and a meter stream, nearly all
of it grpcio's per-stream machinery (ENVOY-NOTES). Here one `asyncio.Protocol` per connection
feeds the sans-IO `h2.connection.ServerConnection`; its events call the stream's processor
directly from `data_received`:

- the meter's `observe(msg)` is synchronous: no await, no task;
- the gate's `on_message` coroutine is driven by hand (`coro.send(None)`): on a key-cache hit
  it finishes without suspending, so there is no task either; only when it really waits (Redis
  on a cache miss) does the rest of it run as a task (`_resume`), and the stream's later
  messages wait in order behind it (and are not credited to flow control meanwhile);
- answers are written in the same `data_received` call, one `transport.write` per read.

One port serves three gRPC services: ext_proc ``Process`` (the hot path above), the standard
health service (``grpc.health.v1.Health``: Check and Watch, grpcio-health-checking's servicer)
and the admin API (``tokenbook.v1.KeyRegistry``). The last two are grpcio servicers run as
tasks through a small `ServicerContext` stand-in (`_Context`): low volume, so simplicity wins.

Status codes: unknown method 12 UNIMPLEMENTED; a request that is not gRPC (content-type) HTTP 415;
compression asked for 12 UNIMPLEMENTED; a compressed-flag message or a message that does not
parse 13 INTERNAL; a message over 32 MiB 8 RESOURCE_EXHAUSTED; a processor that raises 2
UNKNOWN (what grpc.aio answers); a header list over the advertised limit 8 RESOURCE_EXHAUSTED.
HTTP/2 violations are the connection layer's business (GOAWAY / RST_STREAM).

Drain (`stop(grace)`): health NOT_SERVING, the listener closes, every connection gets GOAWAY
(2^31-1) + PING, then the final GOAWAY once the PING returns (RFC 9113 §6.8); open streams have
until `grace` to finish; what is left is reset (CANCEL) and its processor closed, so the meter
books it as aborted.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import logging
import types
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from typing import Any, NoReturn, Protocol, cast

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2_grpc

from tokenbook.extproc.h2.connection import H2Config, ServerConnection, Stream
from tokenbook.extproc.h2.frames import ErrorCode
from tokenbook.extproc.h2.grpc_wire import (
    RESPONSE_HEADERS,
    Deframer,
    GrpcError,
    Status,
    frame_message,
    trailers,
)
from tokenbook.extproc.h2.headers import HeaderList
from tokenbook.extproc.server import EXT_PROC_SERVICE, set_health
from tokenbook.extproc.streams import ROLE_METADATA_KEY

log = logging.getLogger("tokenbook.extproc.h2")

PROCESS_PATH = f"/{EXT_PROC_SERVICE}/Process".encode()
_ROLE_KEY = ROLE_METADATA_KEY.encode()
_ROLES = {b"gate": "gate", b"meter": "meter"}
_DRAIN_PING = b"tb-drain"
_GOAWAY_ALL = 2**31 - 1
_parse_request = pb.ProcessingRequest.FromString
# Request headers that are HTTP/2 or gRPC plumbing, not metadata for a handler.
_RESERVED = frozenset(
    (b"content-type", b"te", b"grpc-timeout", b"grpc-encoding", b"grpc-accept-encoding")
)


class Serializable(Protocol):
    """An answer: a `ProcessingResponse`, or one already serialized (`wire.Encoded`)."""

    def SerializeToString(self) -> bytes: ...  # protobuf's method name


class StreamProcessor(Protocol):
    """`tokenbook.extproc.streams.StreamProcessor`, restated so duck-typed ones fit too."""

    done: bool

    def on_message(self, msg: pb.ProcessingRequest) -> Awaitable[Serializable | None]:
        """Handle one message; the answer to write, if any."""

    def close(self) -> None:
        """The stream ended."""


class ProcessorFactory(Protocol):
    def new_stream(self, role: str | None, first: pb.ProcessingRequest) -> StreamProcessor: ...


@types.coroutine
def _continue(coro: Coroutine[Any, Any, Any], yielded: Any) -> Generator[Any, Any, Any]:
    """Drive `coro` onward from inside a task, its first step having run synchronously.

    `coro.send(None)` ran it up to its first suspension, which handed us `yielded` (the future
    it waits on). We give that future to the enclosing task, which wakes us when it is done,
    and from then on we pass every send and throw (cancellation included) through to `coro` —
    what ``await`` does, for a coroutine that has already started. (Python 3.12's eager task
    factory does the same natively.) Caveat: the first step runs outside any task, so code that
    needs `asyncio.current_task()` before its first await would not work there.
    """
    value = yielded
    while True:
        try:
            sent = yield value
        except BaseException as exc:
            try:
                value = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                value = coro.send(sent)
            except StopIteration as stop:
                return stop.value


async def _resume(coro: Coroutine[Any, Any, Any], yielded: Any) -> Any:
    return await _continue(coro, yielded)


class _ProcessCall:
    """One ext_proc ``Process`` stream: messages in order to its processor, answers back."""

    __slots__ = (
        "_conn",
        "_deframer",
        "_finished",
        "_headers_sent",
        "_held",
        "_observe",
        "_processor",
        "_queue",
        "_remote_ended",
        "_role",
        "_stream",
        "_task",
    )

    def __init__(self, conn: _Connection, stream: Stream, role: str | None) -> None:
        self._conn = conn
        self._stream = stream
        self._role = role
        self._deframer = Deframer()
        self._processor: StreamProcessor | None = None
        self._observe: Callable[[pb.ProcessingRequest], bool] | None = None
        self._task: asyncio.Task[Any] | None = None
        self._queue: deque[pb.ProcessingRequest] = deque()
        self._held = 0  # flow-control bytes not credited while the processor is busy
        self._headers_sent = False
        self._finished = False
        self._remote_ended = False

    def data(self, data: bytes, end_stream: bool, flow_len: int) -> None:
        h2 = self._conn.h2
        if self.finished():
            h2.consumed(self._stream, flow_len)
            return
        if self._task is None:
            h2.consumed(self._stream, flow_len)
        else:
            self._held += flow_len
        try:
            raw_messages = self._deframer.feed(data) if data else ()
        except GrpcError as exc:
            self.finish(exc.status, exc.message)
            return
        for raw in raw_messages:
            if self._finished:
                return
            try:
                msg = _parse_request(raw)
            except DecodeError:
                self.finish(Status.INTERNAL, "cannot parse a ProcessingRequest")
                return
            if self._task is not None:
                self._queue.append(msg)
            else:
                self._run(msg)
        if end_stream:
            self._remote_ended = True
            if self._task is None:
                self._end_of_input()

    def finished(self) -> bool:
        return self._finished

    def _end_of_input(self) -> None:
        if self._finished:
            return
        if self._deframer.partial:
            self.finish(Status.INTERNAL, "the stream ended inside a message")
        else:
            self.finish(Status.OK)  # Envoy half-closed first: the processor books what it has

    def _run(self, msg: pb.ProcessingRequest) -> None:
        try:
            processor = self._processor
            if processor is None:
                processor = self._processor = self._conn.processors.new_stream(self._role, msg)
                self._observe = getattr(processor, "observe", None)
            if self._observe is not None:
                if self._observe(msg):
                    self.finish(Status.OK)
                return
            coro = processor.on_message(msg)
            if not isinstance(coro, Coroutine):  # an awaitable that is not a coroutine
                coro = _await(coro)
            try:
                yielded = coro.send(None)
            except StopIteration as stop:
                self._answer(stop.value)
                return
        except Exception:
            log.exception("ext_proc processor failed")
            self.finish(Status.UNKNOWN, "processor failed")
            return
        task = asyncio.get_running_loop().create_task(_resume(coro, yielded))
        self._task = task
        task.add_done_callback(self._task_done)

    def _answer(self, answer: Serializable | None) -> None:
        if answer is not None:
            h2 = self._conn.h2
            if not self._headers_sent:
                self._headers_sent = True
                h2.send_headers(self._stream, RESPONSE_HEADERS)
            h2.send_data(self._stream, frame_message(answer.SerializeToString()))
        processor = self._processor
        if processor is not None and processor.done:
            self.finish(Status.OK)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._task = None
        if self._finished or task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("ext_proc processor failed", exc_info=exc)
            self.finish(Status.UNKNOWN, "processor failed")
        else:
            self._answer(task.result())
            while self._queue and not self._finished and self._task is None:
                self._run(self._queue.popleft())
            if not self._finished and self._task is None:
                if self._held:
                    self._conn.h2.consumed(self._stream, self._held)
                    self._held = 0
                if self._remote_ended:
                    self._end_of_input()
        self._conn.flush()

    def finish(self, status: Status, message: str = "") -> None:
        """End the RPC with `status` (closing the processor first)."""
        if self._finished:
            return
        self._finished = True
        if status != Status.OK:
            log.debug("ext_proc stream %d ends %s: %s", self._stream.stream_id, status, message)
        self._stop_processor()
        h2 = self._conn.h2
        h2.send_headers(
            self._stream,
            trailers(status, message, trailers_only=not self._headers_sent),
            end_stream=True,
        )
        h2.finish(self._stream)

    def abort(self) -> None:
        """The stream is gone (reset, or the connection lost): close without answering."""
        if not self._finished:
            self._finished = True
            self._stop_processor()

    def _stop_processor(self) -> None:
        self._queue.clear()
        if self._task is not None:
            self._task.cancel()
            self._task = None
        processor = self._processor
        if processor is not None:
            try:
                processor.close()
            except Exception:  # closing must never take the connection down
                log.exception("closing an ext_proc processor failed")


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


class _Abort(Exception):
    def __init__(self, status: Status, details: str) -> None:
        super().__init__(details)
        self.status = status
        self.details = details


def _status_of(code: Any) -> Status:
    """A `grpc.StatusCode` (value ``(int, name)``), a `Status` or an int, as a `Status`."""
    value = getattr(code, "value", code)
    if isinstance(value, tuple):
        value = value[0]
    try:
        return Status(int(value))
    except (TypeError, ValueError):
        return Status.UNKNOWN


class _Context:
    """The part of `grpc.aio.ServicerContext` that grpcio servicers use, for one call."""

    def __init__(self, call: _HandlerCall) -> None:
        self._call = call
        self._code: Status = Status.OK
        self._details = ""

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._call.metadata

    async def abort(self, code: Any, details: str = "", trailing_metadata: Any = ()) -> NoReturn:
        raise _Abort(_status_of(code), details)

    def set_code(self, code: Any) -> None:
        self._code = _status_of(code)

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> Status:
        return self._code

    def details(self) -> str:
        return self._details

    async def write(self, message: Any) -> None:
        self._call.send(message)

    async def send_initial_metadata(self, metadata: Any) -> None:
        self._call.send_headers()

    def set_trailing_metadata(self, metadata: Any) -> None:
        """Not supported: no tokenbook servicer sets trailing metadata."""

    def peer(self) -> str:
        return self._call.peer

    def time_remaining(self) -> float | None:
        return None

    def cancelled(self) -> bool:
        return self._call.gone

    def done(self) -> bool:
        return self._call.finished


class _HandlerCall:
    """A unary-request call (unary or server streaming) served by a grpcio method handler."""

    def __init__(
        self,
        conn: _Connection,
        stream: Stream,
        handler: Any,
        metadata: tuple[tuple[str, str | bytes], ...],
    ) -> None:
        self._conn = conn
        self._stream = stream
        self._handler = handler
        self.metadata = metadata
        self.peer = conn.peer
        self._deframer = Deframer()
        self._request: bytes | None = None
        self._headers_sent = False
        self._task: asyncio.Task[None] | None = None
        self.finished = False
        self.gone = False

    def data(self, data: bytes, end_stream: bool, flow_len: int) -> None:
        self._conn.h2.consumed(self._stream, flow_len)
        if self.finished:
            return
        try:
            for raw in self._deframer.feed(data) if data else ():
                if self._request is not None:
                    raise GrpcError(Status.INTERNAL, "more than one request message")
                self._request = raw
        except GrpcError as exc:
            self.finish(exc.status, exc.message)
            return
        if end_stream:
            if self._request is None or self._deframer.partial:
                self.finish(Status.INTERNAL, "expected one request message")
                return
            self._task = asyncio.get_running_loop().create_task(self._run(self._request))

    async def _run(self, raw: bytes) -> None:
        handler = self._handler
        context = _Context(self)
        try:
            try:
                request = handler.request_deserializer(raw) if handler.request_deserializer else raw
            except Exception:
                raise _Abort(Status.INTERNAL, "cannot parse the request message") from None
            if handler.response_streaming:
                result = handler.unary_stream(request, context)
                if inspect.isasyncgen(result):
                    async for message in result:
                        self.send(message)
                elif inspect.isawaitable(result):
                    await result
                else:
                    for message in result:
                        self.send(message)
            else:
                result = handler.unary_unary(request, context)
                if inspect.isawaitable(result):
                    result = await result
                if result is not None:
                    self.send(result)
            self.finish(context.code(), context.details())
        except _Abort as exc:
            self.finish(exc.status, exc.details)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("gRPC handler failed")
            self.finish(Status.UNKNOWN, "handler failed")

    def send_headers(self) -> None:
        if not self._headers_sent and not self.finished:
            self._headers_sent = True
            self._conn.h2.send_headers(self._stream, RESPONSE_HEADERS)

    def send(self, message: Any) -> None:
        if self.finished:
            return
        serialize = self._handler.response_serializer
        payload = serialize(message) if serialize else message
        self.send_headers()
        self._conn.h2.send_data(self._stream, frame_message(payload))
        self._conn.flush()

    def finish(self, status: Status, message: str = "") -> None:
        if self.finished:
            return
        self.finished = True
        h2 = self._conn.h2
        h2.send_headers(
            self._stream,
            trailers(status, message, trailers_only=not self._headers_sent),
            end_stream=True,
        )
        h2.finish(self._stream)
        self._conn.flush()

    def abort(self) -> None:
        self.gone = True
        self.finished = True
        if self._task is not None and not self._task.done():
            self._task.cancel()


class _CallDetails:
    """`grpc.HandlerCallDetails` for generic handlers."""

    def __init__(self, method: str, invocation_metadata: Sequence[tuple[str, Any]]) -> None:
        self.method = method
        self.invocation_metadata = invocation_metadata


class MethodTable:
    """Collects grpcio method handlers: pass it where generated code wants a server
    (``add_FooServicer_to_server(servicer, table)``)."""

    def __init__(self) -> None:
        self._methods: dict[bytes, Any] = {}
        self._generic: list[Any] = []

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        for name, handler in handlers.items():
            self._methods[f"/{service}/{name}".encode()] = handler

    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        self._generic.extend(handlers)

    def lookup(self, path: bytes, metadata: Sequence[tuple[str, Any]]) -> Any:
        handler = self._methods.get(path)
        if handler is not None:
            return handler
        details = _CallDetails(path.decode("utf-8", "replace"), metadata)
        for generic in self._generic:
            found = generic.service(details)
            if found is not None:
                return found
        return None


def _metadata(headers: HeaderList) -> tuple[tuple[str, str | bytes], ...]:
    out: list[tuple[str, str | bytes]] = []
    for name, value in headers:
        if name[0] == 0x3A or name in _RESERVED:
            continue
        key = name.decode("ascii", "replace")
        if key.endswith("-bin"):
            try:
                out.append((key, base64.b64decode(value + b"=" * (-len(value) % 4))))
            except ValueError:
                continue
        else:
            out.append((key, value.decode("utf-8", "replace")))
    return tuple(out)


class _Connection(asyncio.Protocol):
    """One HTTP/2 connection: the socket, its `ServerConnection`, and the calls on it."""

    def __init__(self, server: H2Server) -> None:
        self._server = server
        self.processors = server.processors
        self.h2 = ServerConnection(self, server.h2_config)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self._draining = False  # final GOAWAY sent: close once the last stream is done
        self._drain_timer: asyncio.TimerHandle | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, though not necessarily an `asyncio.Transport` subclass (uvloop's
        # is not): an isinstance check here refused every connection under uvloop.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"ipv4:{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix:"
        self._server.connections.add(self)
        self.h2.initiate()
        self.flush()

    def data_received(self, data: bytes) -> None:
        self.h2.receive(data)
        self.flush()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.h2.closed = True
        self.h2.close_streams(None)
        self._server.connections.discard(self)
        if self._drain_timer is not None:
            self._drain_timer.cancel()
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        # The peer does not read: stop reading from it, so it cannot make us produce more.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def flush(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        out = self.h2.data_to_send()
        if out:
            transport.write(out)
        if self.h2.closed:
            if self.h2.error is not None:
                log.warning("HTTP/2 connection error with %s: %s", self.peer, self.h2.error)
            transport.close()
        elif (self._draining or self.h2.goaway_received is not None) and not self.h2.streams:
            transport.close()

    # -- H2Events -------------------------------------------------------------------------

    def on_request(self, stream: Stream, headers: HeaderList | None, end_stream: bool) -> None:
        if headers is None:
            self._refuse(stream, Status.RESOURCE_EXHAUSTED, "header list too large")
            return
        method = path = content_type = encoding = b""
        role: str | None = None
        for name, value in headers:
            if name == b":path":
                path = value
            elif name == b":method":
                method = value
            elif name == b"content-type":
                content_type = value
            elif name == _ROLE_KEY:
                role = _ROLES.get(value)
            elif name == b"grpc-encoding":
                encoding = value
        if method != b"POST":
            self._http_error(stream, b"405")
            return
        if not content_type.startswith(b"application/grpc"):
            self._http_error(stream, b"415")
            return
        if encoding and encoding != b"identity":
            self._refuse(stream, Status.UNIMPLEMENTED, "compression is not supported")
            return
        call: _ProcessCall | _HandlerCall
        if path == PROCESS_PATH:
            call = _ProcessCall(self, stream, role)
        else:
            metadata = _metadata(headers)
            handler = self._server.methods.lookup(path, metadata)
            if handler is None:
                self._refuse(stream, Status.UNIMPLEMENTED, f"unknown method {path.decode()!r}")
                return
            if handler.request_streaming:
                self._refuse(stream, Status.UNIMPLEMENTED, "streaming requests not supported")
                return
            call = _HandlerCall(self, stream, handler, metadata)
        stream.app = call
        if end_stream:
            call.data(b"", True, 0)

    def _refuse(self, stream: Stream, status: Status, message: str) -> None:
        self.h2.send_headers(stream, trailers(status, message, trailers_only=True), end_stream=True)
        self.h2.finish(stream)

    def _http_error(self, stream: Stream, code: bytes) -> None:
        self.h2.send_headers(stream, ((b":status", code),), end_stream=True)
        self.h2.finish(stream)

    def on_data(self, stream: Stream, data: bytes, end_stream: bool, flow_len: int) -> None:
        call = stream.app
        if call is None:
            self.h2.consumed(stream, flow_len)
            return
        call.data(data, end_stream, flow_len)

    def on_trailers(self, stream: Stream, headers: HeaderList) -> None:
        call = stream.app
        if call is not None:
            call.data(b"", True, 0)

    def on_stream_closed(self, stream: Stream, code: ErrorCode | None) -> None:
        call = stream.app
        if call is not None:
            call.abort()

    def on_ping_ack(self, payload: bytes) -> None:
        if payload == _DRAIN_PING and not self._draining:
            self._final_goaway()

    def on_goaway(self, last_stream_id: int, code: int) -> None:
        if code != ErrorCode.NO_ERROR:
            log.warning("peer %s sent GOAWAY %s", self.peer, code)

    # -- drain ----------------------------------------------------------------------------

    def start_drain(self) -> None:
        """GOAWAY that still admits streams in flight, and a PING to learn when they are in."""
        if self.h2.closed or self._draining:
            return
        self.h2.goaway(ErrorCode.NO_ERROR, _GOAWAY_ALL)
        self.h2.send_ping(_DRAIN_PING)
        loop = asyncio.get_running_loop()
        self._drain_timer = loop.call_later(1.0, self._final_goaway)
        self.flush()

    def _final_goaway(self) -> None:
        if self._draining or self.h2.closed:
            return
        self._draining = True
        if self._drain_timer is not None:
            self._drain_timer.cancel()
        self.h2.goaway(ErrorCode.NO_ERROR)
        self.flush()

    def abort_streams(self) -> None:
        """The grace period is over: reset what is still open, close the connection."""
        self._final_goaway()
        self.h2.close_streams(ErrorCode.CANCEL)
        self.flush()
        if self.transport is not None:
            self.transport.close()


def _split_host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class H2Server:
    """Same lifecycle as `server.GrpcServer`: start, set_serving, stop(grace), wait."""

    def __init__(
        self,
        listen: str,
        processors: ProcessorFactory,
        admin: object | None = None,
        *,
        h2_config: H2Config | None = None,
    ) -> None:
        self.listen = listen
        self.processors = processors
        self.h2_config = h2_config or H2Config()
        self.methods = MethodTable()
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.methods)
        self.admin_enabled = admin is not None
        if admin is not None:
            from tokenbook.v1 import registry_pb2_grpc

            registry_pb2_grpc.add_KeyRegistryServicer_to_server(admin, self.methods)
        self.connections: set[_Connection] = set()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.listen.startswith("unix:"):
            self._server = await loop.create_unix_server(
                lambda: _Connection(self), self.listen.removeprefix("unix:"), backlog=1024
            )
        else:
            host, port = _split_host_port(self.listen)
            self._server = await loop.create_server(
                lambda: _Connection(self), host, port, reuse_address=True, backlog=1024
            )
            self.port = int(self._server.sockets[0].getsockname()[1])
        await self.set_serving(True)

    async def set_serving(self, serving: bool) -> None:
        await set_health(self.health, serving, admin_enabled=self.admin_enabled)

    async def stop(self, grace_s: float) -> None:
        """Refuse new streams, let open ones finish for up to `grace_s`, then reset the rest."""
        await self.set_serving(False)
        if self._server is not None:
            self._server.close()
        connections = list(self.connections)
        for conn in connections:
            conn.start_drain()
        pending = [c.lost for c in connections if not c.lost.done()]
        if pending:
            _, still_open = await asyncio.wait(pending, timeout=grace_s)
            if still_open:
                for conn in connections:
                    if not conn.lost.done():
                        conn.abort_streams()
                await asyncio.wait(still_open, timeout=1.0)
                for conn in connections:  # a peer that does not read: drop the socket
                    if not conn.lost.done() and conn.transport is not None:
                        conn.transport.abort()
        self._stopped.set()

    async def wait(self) -> None:
        await self._stopped.wait()
