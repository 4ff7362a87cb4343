"""tokenbook's HTTP/2 server connection, sans IO: bytes in, events and bytes out.

The peer is python-hyper's `h2` acting as a client (an independent implementation: what it
accepts from us is protocol-correct), or hand-built frames where a test needs a peer that
breaks the rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest

from tokenbook.extproc.h2 import frames as f
from tokenbook.extproc.h2.connection import H2Config, ServerConnection, Stream
from tokenbook.extproc.h2.frames import ErrorCode, FrameType, Setting
from tokenbook.extproc.h2.grpc_wire import OK_TRAILERS, OK_TRAILERS_ONLY, RESPONSE_HEADERS
from tokenbook.extproc.h2.headers import HeaderList, encode_headers

REQUEST = [
    (":method", "POST"),
    (":scheme", "http"),
    (":path", "/svc/Method"),
    (":authority", "tokenbook"),
    ("content-type", "application/grpc"),
    ("te", "trailers"),
]
SETTINGS_EMPTY = f.settings_frame({})


@dataclass
class Recorder:
    """H2Events that records everything, and can consume data right away."""

    conn: ServerConnection | None = None
    auto_consume: bool = True
    requests: list[tuple[int, HeaderList | None, bool]] = field(default_factory=list)
    data: list[tuple[int, bytes, bool]] = field(default_factory=list)
    trailers: list[tuple[int, HeaderList]] = field(default_factory=list)
    closed: list[tuple[int, ErrorCode | None]] = field(default_factory=list)
    pings: list[bytes] = field(default_factory=list)
    goaways: list[tuple[int, int]] = field(default_factory=list)
    streams: dict[int, Stream] = field(default_factory=dict)

    def on_request(self, stream: Stream, headers: HeaderList | None, end_stream: bool) -> None:
        self.streams[stream.stream_id] = stream
        self.requests.append((stream.stream_id, headers, end_stream))

    def on_data(self, stream: Stream, data: bytes, end_stream: bool, flow_len: int) -> None:
        self.data.append((stream.stream_id, data, end_stream))
        if self.auto_consume and self.conn is not None:
            self.conn.consumed(stream, flow_len)

    def on_trailers(self, stream: Stream, headers: HeaderList) -> None:
        self.trailers.append((stream.stream_id, headers))

    def on_stream_closed(self, stream: Stream, code: ErrorCode | None) -> None:
        self.closed.append((stream.stream_id, code))

    def on_ping_ack(self, payload: bytes) -> None:
        self.pings.append(payload)

    def on_goaway(self, last_stream_id: int, code: int) -> None:
        self.goaways.append((last_stream_id, code))


def server(config: H2Config | None = None, **kw: Any) -> tuple[ServerConnection, Recorder]:
    rec = Recorder(**kw)
    conn = ServerConnection(rec, config)
    rec.conn = conn
    conn.initiate()
    return conn, rec


def parse_frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream id, payload) for every frame in `data` (the server's output)."""
    out = []
    pos = 0
    while pos < len(data):
        assert len(data) - pos >= 9, "a truncated frame header"
        hi, lo, ftype, flags, sid = f.FRAME_HEADER.unpack_from(data, pos)
        length = (hi << 16) | lo
        payload = data[pos + 9 : pos + 9 + length]
        assert len(payload) == length, "a truncated frame"
        out.append((ftype, flags, sid & 0x7FFFFFFF, payload))
        pos += 9 + length
    return out


def goaway_code(out: bytes) -> int | None:
    codes = [int.from_bytes(p[4:8], "big") for t, _, _, p in parse_frames(out) if t == 7]
    return codes[-1] if codes else None


def rst_codes(out: bytes) -> dict[int, int]:
    return {s: int.from_bytes(p, "big") for t, _, s, p in parse_frames(out) if t == 3}


class Peer:
    """An `h2` client wired to a ServerConnection in memory."""

    def __init__(self, config: H2Config | None = None, settings: dict[int, int] | None = None):
        self.server, self.rec = server(config)
        self.client = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.client.initiate_connection()
        if settings:
            self.client.update_settings(settings)
        self.events: list[h2.events.Event] = []
        self.pump()

    def pump(self) -> list[h2.events.Event]:
        """Exchange bytes until both sides are quiet; the client's new events."""
        new: list[h2.events.Event] = []
        for _ in range(100):
            to_server = self.client.data_to_send()
            if to_server:
                self.server.receive(to_server)
            to_client = self.server.data_to_send()
            if to_client:
                new += self.client.receive_data(to_client)
            if not to_server and not to_client:
                break
        self.events += new
        return new

    def request(self, body: bytes = b"", end_stream: bool = True) -> int:
        sid: int = self.client.get_next_available_stream_id()
        self.client.send_headers(sid, REQUEST, end_stream=end_stream and not body)
        if body:
            self.client.send_data(sid, body, end_stream=end_stream)
        self.pump()
        return sid


# -- handshake, settings, ping --------------------------------------------------------------


def test_handshake_settings_and_ack() -> None:
    peer = Peer()
    remote = peer.client.remote_settings
    assert remote.header_table_size == 0
    assert remote.max_concurrent_streams == H2Config().max_concurrent_streams
    assert remote.initial_window_size == H2Config().initial_window_size
    assert remote.max_header_list_size == H2Config().max_header_list_size
    acked = [e for e in peer.events if isinstance(e, h2.events.SettingsAcknowledged)]
    assert acked, "the server must acknowledge the client's SETTINGS"
    # the connection window was opened beyond the 65,535 default
    assert peer.client.outbound_flow_control_window > 65_535


def test_ping_is_acked_with_the_same_payload() -> None:
    peer = Peer()
    peer.client.ping(b"12345678")
    events = peer.pump()
    acks = [e for e in events if isinstance(e, h2.events.PingAckReceived)]
    assert [a.ping_data for a in acks] == [b"12345678"]


def test_ping_ack_is_reported_and_bad_ping_is_an_error() -> None:
    conn, rec = server()
    conn.receive(f.PREFACE + SETTINGS_EMPTY + f.ping(b"abcdefgh", ack=True))
    assert rec.pings == [b"abcdefgh"]
    conn.receive(f.frame(FrameType.PING, 0, 0, b"short"))
    assert goaway_code(conn.data_to_send()) == ErrorCode.FRAME_SIZE_ERROR
    assert conn.closed


# -- requests and responses -----------------------------------------------------------------


def test_request_response_and_trailers_reach_the_client() -> None:
    peer = Peer()
    sid = peer.request(b"hello")
    assert peer.rec.requests[0][0] == sid
    headers = dict(peer.rec.requests[0][1] or ())
    assert headers[b":path"] == b"/svc/Method"
    assert peer.rec.data == [(sid, b"hello", True)]
    stream = peer.rec.streams[sid]
    peer.server.send_headers(stream, RESPONSE_HEADERS)
    peer.server.send_data(stream, b"answer")
    peer.server.send_headers(stream, OK_TRAILERS, end_stream=True)
    events = peer.pump()
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["ResponseReceived", "DataReceived", "TrailersReceived", "StreamEnded"]
    response, trailers = events[0], events[2]
    assert isinstance(response, h2.events.ResponseReceived)
    assert isinstance(trailers, h2.events.TrailersReceived)
    assert dict(response.headers or ())[b":status"] == b"200"
    assert dict(trailers.headers or ())[b"grpc-status"] == b"0"
    assert sid not in peer.server.streams, "a stream closed on both sides is forgotten"


def test_finish_resets_a_stream_the_peer_still_sends_on() -> None:
    peer = Peer()
    sid = peer.request(b"first", end_stream=False)
    stream = peer.rec.streams[sid]
    peer.server.send_headers(stream, OK_TRAILERS_ONLY, end_stream=True)
    peer.server.finish(stream)
    events = peer.pump()
    resets = [e for e in events if isinstance(e, h2.events.StreamReset)]
    assert [(r.stream_id, r.error_code) for r in resets] == [(sid, ErrorCode.NO_ERROR)]
    assert sid not in peer.server.streams
    assert peer.rec.closed == [], "ending a stream ourselves is not reported as a close"


def test_client_trailers_end_the_stream() -> None:
    peer = Peer()
    sid = peer.request(b"x", end_stream=False)
    peer.client.send_headers(sid, [("x-trailer", "1")], end_stream=True)
    peer.pump()
    assert peer.rec.trailers == [(sid, ((b"x-trailer", b"1"),))]
    assert peer.server.streams[sid].remote_closed


def test_padded_data_and_headers_are_unpadded() -> None:
    conn, rec = server()
    block = encode_headers([(k.encode(), v.encode()) for k, v in REQUEST])
    padded_headers = bytes([3]) + block + b"\0\0\0"
    conn.receive(
        f.PREFACE
        + SETTINGS_EMPTY
        + f.frame(FrameType.HEADERS, f.END_HEADERS | f.PADDED, 1, padded_headers)
        + f.frame(FrameType.DATA, f.PADDED | f.END_STREAM, 1, bytes([2]) + b"body" + b"\0\0")
    )
    assert rec.requests[0][0] == 1
    assert rec.data == [(1, b"body", True)]
    conn.receive(f.frame(FrameType.DATA, f.PADDED, 3, bytes([9]) + b"ab"))
    assert goaway_code(conn.data_to_send()) == ErrorCode.PROTOCOL_ERROR


def test_header_blocks_span_continuation_frames() -> None:
    conn, rec = server()
    block = encode_headers([(k.encode(), v.encode()) for k, v in REQUEST])
    conn.receive(
        f.PREFACE
        + SETTINGS_EMPTY
        + f.frame(FrameType.HEADERS, f.END_STREAM, 1, block[:10])
        + f.frame(FrameType.CONTINUATION, 0, 1, block[10:20])
        + f.frame(FrameType.CONTINUATION, f.END_HEADERS, 1, block[20:])
    )
    assert rec.requests
    assert rec.requests[0][2] is True
    assert dict(rec.requests[0][1] or ())[b":path"] == b"/svc/Method"


def test_our_header_blocks_continue_past_the_peers_frame_size() -> None:
    peer = Peer()
    sid = peer.request()
    stream = peer.rec.streams[sid]
    big = ((b":status", b"200"), (b"x-big", b"v" * 40_000))
    peer.server.send_headers(stream, big, end_stream=True)
    out = peer.server.data_to_send()
    kinds = [t for t, _, _, _ in parse_frames(out)]
    assert kinds[0] == FrameType.HEADERS
    assert FrameType.CONTINUATION in kinds
    (response, *_) = peer.client.receive_data(out)
    assert isinstance(response, h2.events.ResponseReceived)
    assert dict(response.headers or ())[b"x-big"] == b"v" * 40_000


# -- HPACK ----------------------------------------------------------------------------------


def test_first_block_carries_a_table_size_update_and_decoding_is_cached() -> None:
    peer = Peer()
    sid = peer.request()
    peer.server.send_headers(peer.rec.streams[sid], OK_TRAILERS_ONLY, end_stream=True)
    out = peer.server.data_to_send()
    block = next(p for t, _, _, p in parse_frames(out) if t == FrameType.HEADERS)
    assert block[0] == 0x20, "dynamic table size update to 0 first (RFC 7541 §4.2)"
    peer.client.receive_data(out)
    # After the peer acknowledged HEADER_TABLE_SIZE 0, equal blocks decode to the same object.
    peer.request()
    peer.request()
    assert peer.rec.requests[-1][1] is peer.rec.requests[-2][1]


def test_encoder_output_decodes_with_hpack() -> None:
    headers = (
        (b":status", b"200"),
        (b"content-type", b"application/grpc"),
        (b"grpc-message", b"x" * 300),
        (b"grpc-status", b"13"),
    )
    assert hpack.Decoder().decode(encode_headers(headers), raw=True) == list(headers)


def test_bad_hpack_is_a_compression_error() -> None:
    conn, _ = server()
    conn.receive(f.PREFACE + SETTINGS_EMPTY + f.frame(FrameType.HEADERS, f.END_HEADERS, 1, b"\xff"))
    assert goaway_code(conn.data_to_send()) == ErrorCode.COMPRESSION_ERROR


# -- malformed requests ---------------------------------------------------------------------


def _headers_frame(sid: int, headers: list[tuple[bytes, bytes]], flags: int = 0) -> bytes:
    return f.frame(FrameType.HEADERS, f.END_HEADERS | flags, sid, encode_headers(headers))


GOOD = [(k.encode(), v.encode()) for k, v in REQUEST]


@pytest.mark.parametrize(
    "headers",
    [
        [*GOOD, (b"Upper", b"x")],
        [h for h in GOOD if h[0] != b":path"],
        [(b"x-a", b"1"), *GOOD],  # pseudo-header after a regular one
        [*GOOD, (b":bogus", b"1")],
        [*GOOD, (b"connection", b"close")],
        [*GOOD, (b"te", b"gzip")],
        [*GOOD, (b"x-bad", b"a\nb")],
        [*GOOD, (b":path", b"/again")],
    ],
)
def test_malformed_request_headers_reset_the_stream(headers: list[tuple[bytes, bytes]]) -> None:
    conn, rec = server()
    conn.receive(f.PREFACE + SETTINGS_EMPTY + _headers_frame(1, headers))
    assert rst_codes(conn.data_to_send()) == {1: ErrorCode.PROTOCOL_ERROR}
    assert rec.requests == []
    assert not conn.closed


@pytest.mark.parametrize(
    ("frame_bytes", "code"),
    [
        (f.frame(FrameType.DATA, 0, 0, b"x"), ErrorCode.PROTOCOL_ERROR),
        (_headers_frame(2, GOOD), ErrorCode.PROTOCOL_ERROR),  # even id from a client
        (f.frame(FrameType.CONTINUATION, f.END_HEADERS, 1, b""), ErrorCode.PROTOCOL_ERROR),
        (f.frame(FrameType.PUSH_PROMISE, f.END_HEADERS, 1, b"\0\0\0\2"), ErrorCode.PROTOCOL_ERROR),
        (f.window_update(0, 0), ErrorCode.PROTOCOL_ERROR),
        (f.frame(FrameType.WINDOW_UPDATE, 0, 0, b"\0\0\1"), ErrorCode.FRAME_SIZE_ERROR),
        (f.window_update(7, 10), ErrorCode.PROTOCOL_ERROR),  # idle stream
        (f.rst_stream(9, 0), ErrorCode.PROTOCOL_ERROR),  # idle stream
        (f.frame(FrameType.DATA, 0, 5, b"x"), ErrorCode.PROTOCOL_ERROR),  # idle stream
        (f.frame(FrameType.SETTINGS, 0, 1, b""), ErrorCode.PROTOCOL_ERROR),
        (f.frame(FrameType.SETTINGS, 0, 0, b"\0\1\0"), ErrorCode.FRAME_SIZE_ERROR),
        (f.frame(FrameType.SETTINGS, f.ACK, 0, b"\0\0\0\0\0\0"), ErrorCode.FRAME_SIZE_ERROR),
        (f.settings_frame({Setting.ENABLE_PUSH: 2}), ErrorCode.PROTOCOL_ERROR),
        (f.settings_frame({Setting.MAX_FRAME_SIZE: 100}), ErrorCode.PROTOCOL_ERROR),
        (f.settings_frame({Setting.INITIAL_WINDOW_SIZE: 2**31}), ErrorCode.FLOW_CONTROL_ERROR),
        (f.frame(FrameType.GOAWAY, 0, 0, b"\0\0\0"), ErrorCode.FRAME_SIZE_ERROR),
        (f.frame(FrameType.PRIORITY, 0, 0, b"\0" * 5), ErrorCode.PROTOCOL_ERROR),
        (f.frame(FrameType.RST_STREAM, 0, 0, b"\0" * 4), ErrorCode.PROTOCOL_ERROR),
        (f.frame(FrameType.DATA, 0, 1, b"\0" * 16_385), ErrorCode.FRAME_SIZE_ERROR),
    ],
)
def test_connection_errors_send_goaway(frame_bytes: bytes, code: ErrorCode) -> None:
    conn, rec = server()
    conn.receive(f.PREFACE + SETTINGS_EMPTY + frame_bytes)
    out = conn.data_to_send()
    assert goaway_code(out) == code
    assert conn.closed
    assert conn.error is not None
    conn.receive(_headers_frame(11, GOOD))  # nothing more is read after a connection error
    assert conn.data_to_send() == b""
    assert rec.requests == []


def test_not_http2_and_settings_first() -> None:
    conn, _ = server()
    conn.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert goaway_code(conn.data_to_send()) == ErrorCode.PROTOCOL_ERROR
    conn, _ = server()
    conn.receive(f.PREFACE + f.ping(b"12345678", ack=False))
    assert goaway_code(conn.data_to_send()) == ErrorCode.PROTOCOL_ERROR


def test_a_frame_between_headers_and_continuation_is_an_error() -> None:
    conn, _ = server()
    block = encode_headers(GOOD)
    conn.receive(
        f.PREFACE
        + SETTINGS_EMPTY
        + f.frame(FrameType.HEADERS, 0, 1, block[:5])
        + f.ping(b"12345678", ack=False)
    )
    assert goaway_code(conn.data_to_send()) == ErrorCode.PROTOCOL_ERROR


def test_unknown_frame_types_and_priority_are_ignored() -> None:
    conn, rec = server()
    conn.receive(
        f.PREFACE
        + SETTINGS_EMPTY
        + f.frame(0xEE, 0, 0, b"whatever")
        + f.frame(FrameType.PRIORITY, 0, 3, b"\0\0\0\0\x10")
        + _headers_frame(1, GOOD, f.END_STREAM)
    )
    assert rec.requests
    assert not conn.closed


def test_headers_with_a_self_dependency_reset_only_that_stream() -> None:
    conn, rec = server()
    block = encode_headers(GOOD)
    priority = (1).to_bytes(4, "big") + b"\x10"
    conn.receive(
        f.PREFACE
        + SETTINGS_EMPTY
        + f.frame(FrameType.HEADERS, f.END_HEADERS | f.PRIORITY_FLAG, 1, priority + block)
    )
    assert rst_codes(conn.data_to_send()) == {1: ErrorCode.PROTOCOL_ERROR}
    conn.receive(_headers_frame(3, GOOD, f.END_STREAM))
    assert [r[0] for r in rec.requests] == [3], "the HPACK state survived"


# -- limits ---------------------------------------------------------------------------------


def test_max_concurrent_streams_refuses_the_extra_stream() -> None:
    conn, rec = server(H2Config(max_concurrent_streams=2))
    conn.receive(
        f.PREFACE
        + SETTINGS_EMPTY
        + _headers_frame(1, GOOD)
        + _headers_frame(3, GOOD)
        + _headers_frame(5, GOOD)
    )
    assert rst_codes(conn.data_to_send()) == {5: ErrorCode.REFUSED_STREAM}
    assert [r[0] for r in rec.requests] == [1, 3]


def test_an_oversized_header_list_opens_the_stream_without_headers() -> None:
    conn, rec = server(H2Config(max_header_list_size=1000))
    conn.receive(f.PREFACE + SETTINGS_EMPTY + _headers_frame(1, [*GOOD, (b"x-big", b"v" * 1500)]))
    assert rec.requests == [(1, None, False)], "the layer above answers with a gRPC status"
    assert not conn.closed


def test_a_header_bomb_is_a_connection_error() -> None:
    conn, _ = server(H2Config(max_header_list_size=1000))
    conn.receive(f.PREFACE + SETTINGS_EMPTY + _headers_frame(1, [*GOOD, (b"x-big", b"v" * 5000)]))
    assert goaway_code(conn.data_to_send()) == ErrorCode.ENHANCE_YOUR_CALM


def test_an_endless_continuation_is_cut_off() -> None:
    conn, _ = server(H2Config(max_header_list_size=1000))
    data = f.PREFACE + SETTINGS_EMPTY + f.frame(FrameType.HEADERS, 0, 1, b"\x00" * 16_000)
    for _ in range(10):
        data += f.frame(FrameType.CONTINUATION, 0, 1, b"\x00" * 16_000)
    conn.receive(data)
    assert goaway_code(conn.data_to_send()) == ErrorCode.ENHANCE_YOUR_CALM


def test_larger_frames_are_accepted_when_advertised() -> None:
    conn, rec = server(H2Config(max_frame_size=65_536))
    conn.receive(
        f.PREFACE
        + SETTINGS_EMPTY
        + _headers_frame(1, GOOD)
        + f.frame(FrameType.DATA, f.END_STREAM, 1, b"z" * 40_000)
    )
    assert rec.data == [(1, b"z" * 40_000, True)]


# -- flow control ---------------------------------------------------------------------------


def test_sending_respects_the_peer_stream_window_and_resumes_on_update() -> None:
    peer = Peer(settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 100})
    sid = peer.request()
    stream = peer.rec.streams[sid]
    peer.server.send_headers(stream, RESPONSE_HEADERS)
    peer.server.send_data(stream, b"d" * 1000)
    peer.server.send_headers(stream, OK_TRAILERS, end_stream=True)
    out = peer.server.data_to_send()
    sent = sum(len(p) for t, _, _, p in parse_frames(out) if t == FrameType.DATA)
    assert sent == 100, "no more than the peer's window"
    assert not any(
        t == FrameType.HEADERS and fl & f.END_STREAM for t, fl, _, _ in parse_frames(out)
    )
    events = peer.client.receive_data(out)
    got = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    peer.client.increment_flow_control_window(900, stream_id=sid)
    events = peer.pump()
    got += b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    assert got == b"d" * 1000
    assert any(isinstance(e, h2.events.StreamEnded) for e in events), "trailers after the data"


def test_sending_respects_the_connection_window_and_frame_size() -> None:
    conn, rec = server()
    conn.receive(
        f.PREFACE
        + f.settings_frame({Setting.INITIAL_WINDOW_SIZE: 1 << 20})
        + _headers_frame(1, GOOD, f.END_STREAM)
    )
    conn.data_to_send()
    stream = rec.streams[1]
    conn.send_data(stream, b"q" * 100_000, end_stream=True)
    frames = [x for x in parse_frames(conn.data_to_send()) if x[0] == FrameType.DATA]
    assert sum(len(p) for *_, p in frames) == 65_535, "the connection window (default)"
    assert max(len(p) for *_, p in frames) <= 16_384, "the peer's default frame size"
    conn.receive(f.window_update(0, 50_000))
    more = [x for x in parse_frames(conn.data_to_send()) if x[0] == FrameType.DATA]
    assert sum(len(p) for *_, p in more) == 100_000 - 65_535
    assert more[-1][1] & f.END_STREAM


def test_initial_window_change_applies_to_open_streams() -> None:
    conn, rec = server()
    conn.receive(
        f.PREFACE
        + f.settings_frame({Setting.INITIAL_WINDOW_SIZE: 0})
        + _headers_frame(1, GOOD, f.END_STREAM)
    )
    conn.data_to_send()
    conn.send_data(rec.streams[1], b"w" * 10)
    assert not [x for x in parse_frames(conn.data_to_send()) if x[0] == FrameType.DATA]
    conn.receive(f.settings_frame({Setting.INITIAL_WINDOW_SIZE: 10}))
    data = [p for t, _, _, p in parse_frames(conn.data_to_send()) if t == FrameType.DATA]
    assert data == [b"w" * 10]


def test_a_peer_that_never_opens_its_window_cannot_make_us_buffer_without_bound() -> None:
    conn, rec = server(H2Config(max_pending_output=10_000))
    conn.receive(
        f.PREFACE
        + f.settings_frame({Setting.INITIAL_WINDOW_SIZE: 0})
        + _headers_frame(1, GOOD, f.END_STREAM)
    )
    for _ in range(20):
        conn.send_data(rec.streams[1], b"x" * 1000)
    assert goaway_code(conn.data_to_send()) == ErrorCode.ENHANCE_YOUR_CALM
    assert conn.closed
    assert rec.closed == [(1, None)]


def test_receive_windows_are_credited_in_batches() -> None:
    config = H2Config(initial_window_size=10_000, connection_window_size=100_000)
    peer = Peer(config)
    sid = peer.request(b"a" * 4_000, end_stream=False)
    assert peer.client.local_flow_control_window(sid) == 6_000, "no update below half a window"
    peer.client.send_data(sid, b"b" * 2_000)
    peer.pump()
    assert peer.client.local_flow_control_window(sid) == 10_000, "credited once past half"


def test_the_peer_exceeding_our_windows_is_an_error() -> None:
    conn, rec = server(H2Config(initial_window_size=1000), auto_consume=False)
    conn.receive(
        f.PREFACE
        + SETTINGS_EMPTY
        + _headers_frame(1, GOOD)
        + f.frame(FrameType.DATA, 0, 1, b"x" * 600)
        + f.frame(FrameType.DATA, 0, 1, b"x" * 600)
    )
    assert rst_codes(conn.data_to_send()) == {1: ErrorCode.FLOW_CONTROL_ERROR}
    assert rec.closed == [(1, ErrorCode.FLOW_CONTROL_ERROR)]
    # connection level: the default 65,535 plus what we opened, without credit
    conn, _ = server(H2Config(connection_window_size=65_535), auto_consume=False)
    data = f.PREFACE + SETTINGS_EMPTY
    for sid in (1, 3, 5, 7, 9):
        data += _headers_frame(sid, GOOD) + f.frame(FrameType.DATA, 0, sid, b"y" * 16_000)
    conn.receive(data)
    assert goaway_code(conn.data_to_send()) == ErrorCode.FLOW_CONTROL_ERROR


def test_window_overflow_from_the_peer() -> None:
    conn, _rec = server()
    conn.receive(f.PREFACE + SETTINGS_EMPTY + _headers_frame(1, GOOD))
    conn.receive(f.window_update(1, 2**31 - 1))
    assert rst_codes(conn.data_to_send()) == {1: ErrorCode.FLOW_CONTROL_ERROR}
    conn.receive(f.window_update(0, 2**31 - 1))
    assert goaway_code(conn.data_to_send()) == ErrorCode.FLOW_CONTROL_ERROR


# -- reset and goaway -----------------------------------------------------------------------


def test_peer_reset_closes_the_stream_and_late_frames_are_ignored() -> None:
    peer = Peer()
    sid = peer.request(b"x", end_stream=False)
    peer.client.reset_stream(sid, ErrorCode.CANCEL)
    peer.pump()
    assert peer.rec.closed == [(sid, ErrorCode.CANCEL)]
    assert sid not in peer.server.streams
    # frames the peer had in flight for that stream are ignored, the connection lives
    peer.server.receive(f.frame(FrameType.DATA, 0, sid, b"late"))
    peer.server.receive(f.window_update(sid, 5))
    assert not peer.server.closed


def test_data_after_end_stream_resets_the_stream() -> None:
    conn, _rec = server()
    conn.receive(
        f.PREFACE
        + SETTINGS_EMPTY
        + _headers_frame(1, GOOD, f.END_STREAM)
        + f.frame(FrameType.DATA, 0, 1, b"more")
    )
    assert rst_codes(conn.data_to_send()) == {1: ErrorCode.STREAM_CLOSED}


def test_goaway_refuses_new_streams_and_reports_the_peers_goaway() -> None:
    peer = Peer()
    first = peer.request(end_stream=False)
    peer.server.goaway()
    events = peer.pump()
    terminated = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert terminated
    assert terminated[0].last_stream_id == first
    conn, rec = server()
    conn.receive(f.PREFACE + SETTINGS_EMPTY + _headers_frame(1, GOOD))
    conn.goaway()
    conn.receive(_headers_frame(3, GOOD))
    assert rst_codes(conn.data_to_send()) == {3: ErrorCode.REFUSED_STREAM}
    conn.receive(f.goaway(0, ErrorCode.NO_ERROR))
    assert rec.goaways == [(0, 0)]


def test_close_streams_resets_every_open_stream() -> None:
    conn, rec = server()
    conn.receive(f.PREFACE + SETTINGS_EMPTY + _headers_frame(1, GOOD) + _headers_frame(3, GOOD))
    conn.data_to_send()
    conn.close_streams(ErrorCode.CANCEL)
    assert rst_codes(conn.data_to_send()) == {1: ErrorCode.CANCEL, 3: ErrorCode.CANCEL}
    assert sorted(rec.closed) == [(1, ErrorCode.CANCEL), (3, ErrorCode.CANCEL)]
