"""tokenbook's h2 ext_proc transport over real sockets.

Peers: the grpcio client (`grpc.aio`), as any gRPC client would call us, and a raw HTTP/2 client
(python-hyper's `h2` over an asyncio socket) where a test needs to see or break the frames:
GOAWAY and drain, RST_STREAM, the compressed flag, header limits, a peer that never reads.
The processors are recording fakes (what the transport does is under test), except in the last
test, where the real meter books a reset stream as aborted.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import hpack
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.extproc.test_processors import _headers, request_headers_msg
from tokenbook.extproc.h2 import frames as fr
from tokenbook.extproc.h2.frames import ErrorCode
from tokenbook.extproc.h2_transport import PROCESS_PATH, H2Server

GATE = (("x-tokenbook-filter", "gate"),)
METER = (("x-tokenbook-filter", "meter"),)


class FakeStream:
    """Answers request headers and bodies; done at an end-of-stream message."""

    def __init__(self, owner: FakeProcessors, role: str | None) -> None:
        self.owner = owner
        self.role = role
        self.messages: list[str] = []
        self.in_task: list[bool] = []
        self.closed = 0
        self.done = False

    async def on_message(self, msg: pb.ProcessingRequest) -> pb.ProcessingResponse | None:
        which = msg.WhichOneof("request") or ""
        self.messages.append(which)
        self.in_task.append(asyncio.current_task() is not None)
        if self.owner.wait is not None and len(self.messages) == 1:
            await self.owner.wait.wait()
        if self.owner.fail:
            raise RuntimeError("processor bug")
        if self.role == "meter":  # observability mode: no answers
            if which == "response_body":
                self.done = msg.response_body.end_of_stream
            return None
        if which == "request_headers":
            self.done = msg.request_headers.end_of_stream
            return pb.ProcessingResponse(request_headers=pb.HeadersResponse())
        if which == "request_body":
            self.done = msg.request_body.end_of_stream
            return pb.ProcessingResponse(request_body=pb.BodyResponse())
        if which == "response_body":
            self.done = msg.response_body.end_of_stream
        return None

    def close(self) -> None:
        self.closed += 1


class FakeProcessors:
    def __init__(self) -> None:
        self.streams: list[FakeStream] = []
        self.wait: asyncio.Event | None = None  # the first message waits for it (a Redis miss)
        self.fail = False

    def new_stream(self, role: str | None, first: pb.ProcessingRequest) -> FakeStream:
        stream = FakeStream(self, role)
        self.streams.append(stream)
        return stream


@pytest.fixture
def processors() -> FakeProcessors:
    return FakeProcessors()


@pytest.fixture
async def server(processors: FakeProcessors) -> AsyncIterator[H2Server]:
    srv = H2Server("127.0.0.1:0", processors)
    await srv.start()
    yield srv
    await srv.stop(0.5)


@pytest.fixture
async def channel(server: H2Server) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


def body(data: bytes, end: bool = False) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(request_body=pb.HttpBody(body=data, end_of_stream=end))


async def eventually(check: Callable[[], bool], within: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


# -- ext_proc semantics, grpcio client -------------------------------------------------------


async def test_messages_in_order_answers_in_order_and_no_task(
    channel: grpc.aio.Channel, processors: FakeProcessors
) -> None:
    call = pb_grpc.ExternalProcessorStub(channel).Process(metadata=GATE)
    await call.write(request_headers_msg("openai", "/openai/v1/chat/completions", []))
    for i in range(3):
        await call.write(body(b"chunk%d" % i))
    await call.write(body(b"last", end=True))
    answers = [await call.read() for _ in range(5)]
    assert [a.WhichOneof("response") for a in answers] == ["request_headers"] + ["request_body"] * 4
    assert await asyncio.wait_for(call.read(), 2) is grpc.aio.EOF, "we end the RPC when done"
    assert await call.code() == grpc.StatusCode.OK
    (stream,) = processors.streams
    assert stream.role == "gate"
    assert stream.messages == ["request_headers"] + ["request_body"] * 4
    assert stream.in_task == [False] * 5, "processors ran inside data_received, not in a task"
    await eventually(lambda: stream.closed == 1)


async def test_a_processor_that_waits_runs_on_in_a_task_and_keeps_the_order(
    channel: grpc.aio.Channel, processors: FakeProcessors
) -> None:
    processors.wait = asyncio.Event()
    call = pb_grpc.ExternalProcessorStub(channel).Process(metadata=GATE)
    await call.write(request_headers_msg("openai", "/x", []))
    await call.write(body(b"a"))
    await call.write(body(b"b", end=True))
    await eventually(lambda: bool(processors.streams))
    await asyncio.sleep(0.05)
    stream = processors.streams[0]
    assert stream.messages == ["request_headers"], "later messages wait behind the first"
    processors.wait.set()
    answers = [await call.read() for _ in range(3)]
    assert [a.WhichOneof("response") for a in answers] == [
        "request_headers",
        "request_body",
        "request_body",
    ]
    assert await call.code() == grpc.StatusCode.OK
    assert stream.messages == ["request_headers", "request_body", "request_body"]


async def test_meter_role_no_answers_ends_itself(
    channel: grpc.aio.Channel, processors: FakeProcessors
) -> None:
    call = pb_grpc.ExternalProcessorStub(channel).Process(metadata=METER)
    await call.write(request_headers_msg("openai", "/x", []))
    await call.write(pb.ProcessingRequest(response_headers=_headers([(":status", "200")])))
    await call.write(pb.ProcessingRequest(response_body=pb.HttpBody(body=b"x", end_of_stream=True)))
    assert await asyncio.wait_for(call.read(), 2) is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK
    assert processors.streams[0].role == "meter"


async def test_half_close_ends_ok_and_closes_the_processor(
    channel: grpc.aio.Channel, processors: FakeProcessors
) -> None:
    call = pb_grpc.ExternalProcessorStub(channel).Process(metadata=METER)
    await call.write(request_headers_msg("openai", "/x", []))
    await call.done_writing()
    assert await asyncio.wait_for(call.read(), 2) is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK
    await eventually(lambda: processors.streams[0].closed == 1)


async def test_a_cancelled_call_closes_the_processor_and_its_task(
    channel: grpc.aio.Channel, processors: FakeProcessors
) -> None:
    processors.wait = asyncio.Event()  # never set: the processor is mid-await
    call = pb_grpc.ExternalProcessorStub(channel).Process(metadata=GATE)
    await call.write(request_headers_msg("openai", "/x", []))
    await eventually(lambda: bool(processors.streams))
    call.cancel()  # RST_STREAM CANCEL on the wire
    await eventually(lambda: processors.streams[0].closed == 1)


async def test_a_failing_processor_is_unknown(
    channel: grpc.aio.Channel, processors: FakeProcessors
) -> None:
    processors.fail = True
    call = pb_grpc.ExternalProcessorStub(channel).Process(metadata=GATE)
    await call.write(request_headers_msg("openai", "/x", []))
    with pytest.raises(grpc.aio.AioRpcError):
        await asyncio.wait_for(call.read(), 2)
    assert await call.code() == grpc.StatusCode.UNKNOWN
    assert processors.streams[0].closed == 1


async def test_a_message_that_does_not_parse_is_internal(channel: grpc.aio.Channel) -> None:
    call = channel.stream_stream(PROCESS_PATH.decode())(metadata=GATE)
    await call.write(b"\xff\xff\xff\xff")
    with pytest.raises(grpc.aio.AioRpcError):
        await asyncio.wait_for(call.read(), 2)
    assert await call.code() == grpc.StatusCode.INTERNAL


async def test_unknown_method_is_unimplemented(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await channel.unary_unary("/nope.Service/Method")(b"")
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_compression_is_refused_as_unimplemented(server: H2Server) -> None:
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{server.port}", compression=grpc.Compression.Gzip
    ) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_health_check_and_watch(server: H2Server, channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    ext = "envoy.service.ext_proc.v3.ExternalProcessor"
    assert (await stub.Check(health_pb2.HealthCheckRequest(service=ext))).status == 1
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Check(health_pb2.HealthCheckRequest(service="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    watch = stub.Watch(health_pb2.HealthCheckRequest(service=""))
    first = await asyncio.wait_for(watch.read(), 2)
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    await server.set_serving(False)
    second = await asyncio.wait_for(watch.read(), 2)
    assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
    watch.cancel()


async def test_handler_status_details_survive_percent_encoding(
    server: H2Server, channel: grpc.aio.Channel
) -> None:
    async def fail(request: bytes, context: Any) -> bytes:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad ✓ 100% \n done")
        raise AssertionError("unreachable")

    async def echo(request: bytes, context: Any) -> bytes:
        meta = dict(context.invocation_metadata())
        return bytes(request + meta["x-who"].encode() + meta["x-blob-bin"])

    server.methods.add_registered_method_handlers(
        "test.Echo",
        {
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
        },
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await channel.unary_unary("/test.Echo/Fail")(b"x")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "bad ✓ 100% \n done"
    meta = (("x-who", "me"), ("x-blob-bin", b"\x00\x01"))
    assert await channel.unary_unary("/test.Echo/Echo")(b"hi-", metadata=meta) == b"hi-me\x00\x01"


async def test_unix_socket(processors: FakeProcessors, tmp_path: Path) -> None:
    path = tmp_path / "tb.sock"
    srv = H2Server(f"unix:{path}", processors)
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"unix:{path}") as ch:
            reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await srv.stop(0.5)


# -- frame level, raw h2 client --------------------------------------------------------------


class RawClient:
    """An `h2` client on an asyncio socket; acks PINGs and SETTINGS itself (h2 does)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.events: list[h2.events.Event] = []

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        client.conn.initiate_connection()
        client.flush()
        return client

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)

    def request(
        self, path: bytes = PROCESS_PATH, extra: Sequence[tuple[str, str]] = GATE, **kw: Any
    ) -> int:
        sid: int = self.conn.get_next_available_stream_id()
        headers = [
            (":method", kw.pop("method", "POST")),
            (":scheme", "http"),
            (":path", path.decode()),
            (":authority", "tokenbook"),
            ("content-type", kw.pop("content_type", "application/grpc")),
            ("te", "trailers"),
            *extra,
        ]
        self.conn.send_headers(sid, headers, end_stream=kw.pop("end_stream", False))
        self.flush()
        return sid

    def message(self, sid: int, payload: bytes, *, flag: int = 0, end: bool = False) -> None:
        self.conn.send_data(
            sid, bytes([flag]) + len(payload).to_bytes(4, "big") + payload, end_stream=end
        )
        self.flush()

    async def until(
        self, check: Callable[[list[h2.events.Event]], bool], within: float = 3.0
    ) -> list[h2.events.Event]:
        async with asyncio.timeout(within):
            while not check(self.events):
                data = await self.reader.read(65_536)
                if not data:
                    break
                for event in self.conn.receive_data(data):
                    self.events.append(event)
                    if isinstance(event, h2.events.DataReceived):
                        self.conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                self.flush()
        return self.events

    def close(self) -> None:
        self.writer.close()


def trailers_of(events: list[h2.events.Event], sid: int) -> dict[bytes, bytes]:
    for e in events:
        if isinstance(e, h2.events.TrailersReceived | h2.events.ResponseReceived):
            headers = dict(e.headers)
            if e.stream_id == sid and (
                b"grpc-status" in headers or headers.get(b":status") != b"200"
            ):
                return headers
    return {}


def ended(sid: int) -> Callable[[list[h2.events.Event]], bool]:
    return lambda evs: any(
        isinstance(e, h2.events.StreamEnded | h2.events.StreamReset) and e.stream_id == sid
        for e in evs
    )


async def test_compressed_flag_is_internal(server: H2Server) -> None:
    client = await RawClient.connect(server.port)
    sid = client.request()
    client.message(sid, b"\x00" * 10, flag=1)
    events = await client.until(ended(sid))
    assert trailers_of(events, sid)[b"grpc-status"] == b"13"
    client.close()


async def test_not_grpc_and_not_post_are_http_errors(server: H2Server) -> None:
    client = await RawClient.connect(server.port)
    a = client.request(content_type="application/json", end_stream=True)
    b = client.request(method="GET", end_stream=True)
    events = await client.until(lambda evs: ended(a)(evs) and ended(b)(evs))
    assert trailers_of(events, a)[b":status"] == b"415"
    assert trailers_of(events, b)[b":status"] == b"405"
    client.close()


async def test_an_oversized_header_list_is_resource_exhausted(server: H2Server) -> None:
    client = await RawClient.connect(server.port)
    sid = client.request(extra=[("x-big", "v" * 20_000)])
    events = await client.until(ended(sid))
    assert trailers_of(events, sid)[b"grpc-status"] == b"8"
    sid = client.request(end_stream=False)  # the connection is fine afterwards
    client.message(sid, request_headers_msg("openai", "/x", []).SerializeToString())
    events = await client.until(
        lambda evs: any(isinstance(e, h2.events.DataReceived) and e.stream_id == sid for e in evs)
    )
    client.close()


async def test_a_protocol_error_is_goaway_protocol_error(server: H2Server) -> None:
    client = await RawClient.connect(server.port)
    await client.until(lambda evs: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in evs))
    client.writer.write(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")  # DATA on stream 0
    events = await client.until(
        lambda evs: any(isinstance(e, h2.events.ConnectionTerminated) for e in evs)
    )
    goaway = next(e for e in events if isinstance(e, h2.events.ConnectionTerminated))
    assert goaway.error_code == ErrorCode.PROTOCOL_ERROR
    assert await asyncio.wait_for(client.reader.read(), 2) == b"", "the server closed"
    client.close()


class FrameClient:
    """Frames by hand: python-hyper's h2 treats a GOAWAY as the end of the connection, but
    RFC 9113 §6.8 lets the streams below its last id go on, which is what drain relies on."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.buf = b""
        self.goaways: list[tuple[int, int]] = []
        self.resets: list[tuple[int, int]] = []
        self.trailers: dict[int, dict[bytes, bytes]] = {}
        self.decoder = hpack.Decoder()
        self.eof = False

    @classmethod
    async def connect(cls, port: int) -> FrameClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(fr.PREFACE + fr.settings_frame({}))
        return cls(reader, writer)

    def request(self, sid: int, role: str) -> None:
        block = hpack.Encoder().encode(
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", PROCESS_PATH.decode()),
                (":authority", "tokenbook"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                ("x-tokenbook-filter", role),
            ]
        )
        self.writer.write(fr.frame(fr.FrameType.HEADERS, fr.END_HEADERS, sid, block))

    def message(self, sid: int, msg: pb.ProcessingRequest) -> None:
        payload = msg.SerializeToString()
        data = b"\x00" + len(payload).to_bytes(4, "big") + payload
        self.writer.write(fr.frame(fr.FrameType.DATA, 0, sid, data))

    async def until(self, check: Callable[[], bool], within: float = 3.0) -> None:
        async with asyncio.timeout(within):
            while not check() and not self.eof:
                data = await self.reader.read(65_536)
                self.eof = not data
                self.buf += data
                while len(self.buf) >= 9:
                    length = int.from_bytes(self.buf[:3], "big")
                    if len(self.buf) < 9 + length:
                        break
                    ftype, flags = self.buf[3], self.buf[4]
                    sid = int.from_bytes(self.buf[5:9], "big")
                    payload, self.buf = self.buf[9 : 9 + length], self.buf[9 + length :]
                    self._frame(ftype, flags, sid, payload)

    def _frame(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if ftype == fr.FrameType.GOAWAY:
            last = int.from_bytes(payload[:4], "big")
            self.goaways.append((last, int.from_bytes(payload[4:8], "big")))
        elif ftype == fr.FrameType.PING and not flags & fr.ACK:
            self.writer.write(fr.ping(payload, ack=True))
        elif ftype == fr.FrameType.SETTINGS and not flags & fr.ACK:
            self.writer.write(fr.SETTINGS_ACK)
        elif ftype == fr.FrameType.RST_STREAM:
            self.resets.append((sid, int.from_bytes(payload, "big")))
        elif ftype == fr.FrameType.HEADERS:
            self.trailers[sid] = dict(self.decoder.decode(payload, raw=True))

    def close(self) -> None:
        self.writer.close()


async def test_drain_goaway_grace_then_reset(server: H2Server, processors: FakeProcessors) -> None:
    client = await FrameClient.connect(server.port)
    client.request(1, "meter")  # a meter stream that has not ended
    client.message(1, request_headers_msg("openai", "/x", []))
    await eventually(lambda: len(processors.streams) == 1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    stop = asyncio.create_task(server.stop(0.6))
    await client.until(lambda: len(client.goaways) >= 2)
    assert client.goaways[0] == (2**31 - 1, 0), "the first GOAWAY admits streams in flight"
    assert client.goaways[1] == (1, 0), "the final one, after our PING ack, names stream 1"
    # messages still flow on the open stream during the grace period
    client.message(1, pb.ProcessingRequest(response_body=pb.HttpBody(body=b"chunk")))
    await eventually(lambda: len(processors.streams[0].messages) == 2)
    assert not stop.done(), "an open stream keeps the server draining"
    await client.until(lambda: bool(client.resets))
    assert client.resets == [(1, ErrorCode.CANCEL)]
    await asyncio.wait_for(stop, 3)
    assert 0.5 <= loop.time() - started < 2.5
    assert processors.streams[0].closed == 1, "the processor was closed (meter: aborted)"
    await client.until(lambda: client.eof)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", server.port)
    client.close()


async def test_drain_lets_a_stream_finish_within_grace(
    server: H2Server, processors: FakeProcessors
) -> None:
    client = await FrameClient.connect(server.port)
    client.request(1, "meter")
    client.message(1, request_headers_msg("openai", "/x", []))
    await eventually(lambda: len(processors.streams) == 1)
    stop = asyncio.create_task(server.stop(5))
    await client.until(lambda: len(client.goaways) >= 2)
    client.message(1, pb.ProcessingRequest(response_body=pb.HttpBody(end_of_stream=True)))
    await client.until(lambda: 1 in client.trailers)
    assert client.trailers[1][b"grpc-status"] == b"0"
    await asyncio.wait_for(stop, 2)  # well before the 5 s grace: nothing was left open
    assert client.resets in ([], [(1, ErrorCode.NO_ERROR)])
    client.close()


async def test_a_peer_that_never_reads_is_not_buffered_without_bound(server: H2Server) -> None:
    """A client that floods PINGs (each needs an ACK) and never reads: the server stops reading
    from it once its socket buffer is full, so what it holds stays bounded."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.setblocking(False)
    flood = fr.ping(b"pingpong", ack=False) * 4000
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, fr.PREFACE + fr.settings_frame({}))
    sent = 0

    async def send_forever() -> None:
        nonlocal sent
        while True:  # until the server stops reading and our send buffer fills up
            await loop.sock_sendall(sock, flood)
            sent += len(flood)

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(send_forever(), 3)
    (conn,) = server.connections
    assert conn.transport is not None
    assert not conn.transport.is_reading(), "the server paused reading"
    assert conn.transport.get_write_buffer_size() < 1 << 20
    assert sent > 4 << 20, "the peer had to stop: the server did not read everything"
    sock.close()


# -- with the real meter -----------------------------------------------------------------------


async def test_the_real_meter_books_a_reset_stream_as_aborted(redis_url: str) -> None:
    from tests.extproc.test_processors import ADMIN_TOKEN
    from tokenbook.app import App, Running
    from tokenbook.settings import load_settings

    settings = load_settings(
        {
            "listen": "127.0.0.1:0",
            "metrics_listen": "127.0.0.1:0",
            "redis_url": redis_url,
            "admin_token": ADMIN_TOKEN,
            "transport": "h2",
        },
        environ={},
    )
    app = App(settings, environ={})
    ready: asyncio.Future[Running] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(app.run(ready.set_result))
    running = await asyncio.wait_for(ready, 10)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.grpc_port}") as ch:
            call = pb_grpc.ExternalProcessorStub(ch).Process(metadata=METER)
            await call.write(request_headers_msg("openai", "/openai/v1/chat/completions", []))
            await call.write(
                pb.ProcessingRequest(
                    response_headers=_headers(
                        [(":status", "200"), ("content-type", "text/event-stream")]
                    )
                )
            )
            await asyncio.sleep(0.1)
            call.cancel()
        labels = {"provider": "openai", "outcome": "aborted"}

        def aborted() -> float:
            total = 0.0
            for metric in running.metrics.registry.collect():
                for s in metric.samples:
                    if s.name == "tokenbook_requests_total" and all(
                        s.labels.get(k) == v for k, v in labels.items()
                    ):
                        total += s.value
            return total

        await eventually(lambda: aborted() == 1.0)
    finally:
        running.stop()
        await asyncio.wait_for(task, 10)


async def test_the_transport_setting() -> None:
    from tokenbook.extproc.server import GrpcServer, make_server
    from tokenbook.settings import SettingsError, load_settings

    assert load_settings({"transport": "h2"}, environ={}).transport == "h2"
    assert load_settings({}, environ={"TOKENBOOK_TRANSPORT": "h2"}).transport == "h2"
    with pytest.raises(SettingsError, match="transport"):
        load_settings({"transport": "grpc.aio"}, environ={})
    assert isinstance(make_server("h2", "127.0.0.1:0", FakeProcessors(), None), H2Server)  # type: ignore[arg-type]
    grpc_server = make_server("grpcio", "127.0.0.1:0", FakeProcessors(), None)  # type: ignore[arg-type]
    assert isinstance(grpc_server, GrpcServer)
