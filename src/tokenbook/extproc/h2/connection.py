"""A sans-IO HTTP/2 server connection (RFC 9113): bytes in, events out, bytes to send.

Why not `h2` (python-hyper)? It is correct and complete, and it costs ~280 µs of CPU for one
gRPC stream (HEADERS + DATA in; HEADERS + DATA + trailers out), against ~10-14 µs here, on the
same bytes (`bench/transport_bench.py --frames-only` measures both and prints h2's profile):
more than tokenbook's whole budget for a gate and a meter stream.
This module does what an ext_proc server needs and no more: server side only, no push, no
priorities (PRIORITY is parsed and ignored, as RFC 9113 allows), HPACK through
`headers.HeaderDecoder` (python-hyper's `hpack`, cached). It is driven by `receive(data)`;
events go to an `H2Events` object; `data_to_send()` drains what to write.

Flow control (§5.2, §6.9), both ways:
- receiving: the application calls `consumed(stream, n)` once it has taken n bytes off a
  stream (or right away); window credit is returned in batches, when half a window is used.
  Bytes a busy stream holds are never credited, so a peer can buffer at most one window on it.
- sending: `send_data` never exceeds the peer's stream and connection windows or frame size;
  the rest waits in the stream (trailers queue behind it) until WINDOW_UPDATE. More than
  `max_pending_output` bytes waiting on a peer that does not open its windows is a connection
  error (ENHANCE_YOUR_CALM): it bounds what a peer that never reads can make us buffer.

Errors: a violation of the protocol becomes GOAWAY (`H2ConnectionError`) or RST_STREAM
(`H2StreamError`); `receive` never raises. After a connection error `closed` is True and the caller
writes what is left and closes the socket.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from tokenbook.extproc.h2 import frames as f
from tokenbook.extproc.h2.frames import (
    ErrorCode,
    FrameType,
    H2ConnectionError,
    H2StreamError,
    Setting,
)
from tokenbook.extproc.h2.headers import HeaderDecoder, HeaderEncoder, HeaderList

_unpack_header = f.FRAME_HEADER.unpack_from
_DATA = FrameType.DATA
_HEADERS = FrameType.HEADERS
_CONTINUATION = FrameType.CONTINUATION


@dataclass(frozen=True, slots=True)
class H2Config:
    """What we advertise and enforce. Defaults suit Envoy multiplexing many ext_proc streams."""

    max_concurrent_streams: int = 10_000
    initial_window_size: int = 1 << 20  # per stream, receiving
    connection_window_size: int = 16 << 20  # receiving
    max_frame_size: int = f.MIN_MAX_FRAME_SIZE  # receiving
    max_header_list_size: int = 16 << 10
    max_pending_output: int = 8 << 20  # bytes waiting for the peer's windows
    header_table_size: int = 0  # 0: the peer may not use a dynamic table (see headers.py)


class Stream:
    """One HTTP/2 stream's transport state; `app` belongs to the layer above."""

    __slots__ = (
        "app",
        "finishing",
        "local_closed",
        "pending",
        "pending_bytes",
        "pending_end",
        "pending_trailers",
        "recv_window",
        "remote_closed",
        "send_window",
        "stream_id",
        "unacked",
    )

    def __init__(self, stream_id: int, send_window: int, recv_window: int) -> None:
        self.stream_id = stream_id
        self.send_window = send_window
        self.recv_window = recv_window
        self.unacked = 0
        self.remote_closed = False
        self.local_closed = False
        self.pending: list[bytes] | None = None  # DATA waiting for window
        self.pending_bytes = 0
        self.pending_end = False
        self.pending_trailers: bytes | None = None
        self.finishing = False  # reset the peer's half (NO_ERROR) once our response is out
        self.app: Any = None  # the call object of the layer above


class H2Events(Protocol):
    """What the connection tells the layer above. None of these may raise."""

    def on_request(self, stream: Stream, headers: HeaderList | None, end_stream: bool) -> None:
        """A new stream; `headers` None: its header list exceeds our advertised limit (it is
        open, so the layer above can answer with a status the client understands)."""

    def on_data(self, stream: Stream, data: bytes, end_stream: bool, flow_len: int) -> None:
        """`flow_len` bytes counted against flow control: hand them back with `consumed`."""

    def on_trailers(self, stream: Stream, headers: HeaderList) -> None:
        """The peer's trailers: its half of the stream ended."""

    def on_stream_closed(self, stream: Stream, code: ErrorCode | None) -> None:
        """The stream is gone: reset by the peer or by us (`code`), or lost with the connection
        (`code` None). Not called for streams that ended normally on both sides."""

    def on_ping_ack(self, payload: bytes) -> None: ...

    def on_goaway(self, last_stream_id: int, code: int) -> None: ...


class ServerConnection:
    def __init__(self, events: H2Events, config: H2Config | None = None) -> None:
        self.config = cfg = config or H2Config()
        self._events = events
        self._buf = b""
        self._out: list[bytes] = []
        self._preface = False
        self._got_settings = False
        self.streams: dict[int, Stream] = {}
        self.highest_stream_id = 0
        self._decoder = HeaderDecoder(
            max_list_size=cfg.max_header_list_size, table_size=cfg.header_table_size
        )
        self._encoder = HeaderEncoder()
        self._table_update = True  # prefix the next block with "table size 0" (see headers.py)
        self._settings_unacked = 0
        # The peer's settings (what we must respect when sending).
        self.peer_initial_window = f.DEFAULT_WINDOW
        self.peer_max_frame_size = f.MIN_MAX_FRAME_SIZE
        self.send_window = f.DEFAULT_WINDOW  # connection-level, sending
        # Receiving, connection-level.
        self.recv_window = f.DEFAULT_WINDOW
        self._conn_unacked = 0
        # (stream id, HEADERS flags, fragments, size, depends on itself)
        self._continuation: tuple[int, int, list[bytes], int, bool] | None = None
        self._max_block = max(cfg.max_header_list_size * 2, 64 << 10)
        self._blocked: dict[int, Stream] = {}
        self.pending_output = 0
        self.goaway_sent: int | None = None  # last stream id we promised to process
        self.goaway_received: int | None = None
        self.closed = False
        self.error: H2ConnectionError | None = None
        self._overflow: H2ConnectionError | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def initiate(self) -> None:
        """Queue our SETTINGS and open the connection window (the server preface, §3.4)."""
        cfg = self.config
        self._out.append(
            f.settings_frame(
                {
                    Setting.HEADER_TABLE_SIZE: cfg.header_table_size,
                    Setting.MAX_CONCURRENT_STREAMS: cfg.max_concurrent_streams,
                    Setting.INITIAL_WINDOW_SIZE: cfg.initial_window_size,
                    Setting.MAX_FRAME_SIZE: cfg.max_frame_size,
                    Setting.MAX_HEADER_LIST_SIZE: cfg.max_header_list_size,
                }
            )
        )
        self._settings_unacked += 1
        grow = cfg.connection_window_size - f.DEFAULT_WINDOW
        if grow > 0:
            self._out.append(f.window_update(0, grow))
            self.recv_window += grow

    def data_to_send(self) -> bytes:
        if self._overflow is not None and not self.closed:
            # Raised by a send call; acted on here, outside the caller's own logic.
            self._connection_error(self._overflow)
        if not self._out:
            return b""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def goaway(
        self, code: ErrorCode = ErrorCode.NO_ERROR, last_stream_id: int | None = None
    ) -> None:
        """Tell the peer to open no more streams; those above `last_stream_id` are refused."""
        last = self.highest_stream_id if last_stream_id is None else last_stream_id
        self.goaway_sent = last
        self._out.append(f.goaway(last, code))

    def send_ping(self, payload: bytes) -> None:
        self._out.append(f.ping(payload, ack=False))

    def close_streams(self, code: ErrorCode | None) -> None:
        """Drop every stream: reset each (`code`) or, with None, just forget them (the
        connection is gone). The layer above hears `on_stream_closed` for each."""
        streams = list(self.streams.values())
        self.streams.clear()
        self._blocked.clear()
        self.pending_output = 0
        for stream in streams:
            if code is not None:
                self._out.append(f.rst_stream(stream.stream_id, code))
            self._events.on_stream_closed(stream, code)

    # -- receiving ------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        if self._halted():
            return
        if self._buf:
            data = self._buf + data
            self._buf = b""
        pos = 0
        end = len(data)
        try:
            if not self._preface:
                if end < len(f.PREFACE):
                    if not f.PREFACE.startswith(data):
                        raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "not an HTTP/2 preface")
                    self._buf = data
                    return
                if not data.startswith(f.PREFACE):
                    raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "not an HTTP/2 preface")
                self._preface = True
                pos = len(f.PREFACE)
            max_frame = self.config.max_frame_size
            while end - pos >= 9:
                hi, lo, ftype, flags, sid = _unpack_header(data, pos)
                length = (hi << 16) | lo
                if length > max_frame:
                    raise H2ConnectionError(
                        ErrorCode.FRAME_SIZE_ERROR, f"frame of {length} bytes > {max_frame}"
                    )
                if end - pos - 9 < length:
                    break
                start = pos + 9
                pos = start + length
                try:
                    self._frame(ftype, flags, sid & 0x7FFFFFFF, data[start:pos])
                except H2StreamError as exc:
                    self.reset(exc.stream_id, exc.code)
                if self.closed:
                    return
            if pos < end:
                self._buf = data[pos:]
        except H2ConnectionError as exc:
            self._connection_error(exc)

    def _halted(self) -> bool:
        # A method, not `if self.closed` twice: mypy would take the second check as unreachable.
        return self.closed

    def _connection_error(self, exc: H2ConnectionError) -> None:
        self.error = exc
        self._out.append(f.goaway(self.highest_stream_id, exc.code, exc.message.encode()[:256]))
        self.goaway_sent = self.highest_stream_id
        self.closed = True
        self._buf = b""
        self.close_streams(None)

    def _frame(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if self._continuation is not None and ftype != _CONTINUATION:
            raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "expected CONTINUATION")
        if not self._got_settings:
            if ftype != FrameType.SETTINGS or flags & f.ACK:
                raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "the preface must be SETTINGS")
            self._got_settings = True
        if ftype == _DATA:
            self._on_data(flags, sid, payload)
        elif ftype == _HEADERS:
            self._on_headers(flags, sid, payload)
        elif ftype == FrameType.WINDOW_UPDATE:
            self._on_window_update(sid, payload)
        elif ftype == FrameType.RST_STREAM:
            self._on_rst_stream(sid, payload)
        elif ftype == FrameType.SETTINGS:
            self._on_settings(flags, sid, payload)
        elif ftype == FrameType.PING:
            self._on_ping(flags, sid, payload)
        elif ftype == FrameType.GOAWAY:
            self._on_goaway(sid, payload)
        elif ftype == FrameType.PRIORITY:
            if sid == 0:
                raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                raise H2StreamError(sid, ErrorCode.FRAME_SIZE_ERROR, "PRIORITY length")
        elif ftype == _CONTINUATION:
            self._on_continuation(flags, sid, payload)
        elif ftype == FrameType.PUSH_PROMISE:
            raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "a client cannot push")
        # Unknown frame types are ignored (§4.1, §5.5).

    def _closed_or_idle(self, sid: int, what: str) -> None:
        """A frame for a stream we do not have: fine if it was closed, an error if idle."""
        if sid > self.highest_stream_id:
            raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, f"{what} on idle stream {sid}")

    def _on_data(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
        flow_len = len(payload)
        if flow_len > self.recv_window:
            raise H2ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, "connection window exceeded")
        self.recv_window -= flow_len
        stream = self.streams.get(sid)
        if stream is None:
            self._closed_or_idle(sid, "DATA")
            self.consumed(None, flow_len)  # frames in flight after our RST_STREAM (§5.4.2)
            return
        if stream.remote_closed:
            self.consumed(None, flow_len)
            raise H2StreamError(sid, ErrorCode.STREAM_CLOSED, "DATA after END_STREAM")
        if flow_len > stream.recv_window:
            self.consumed(None, flow_len)
            raise H2StreamError(sid, ErrorCode.FLOW_CONTROL_ERROR, "stream window exceeded")
        stream.recv_window -= flow_len
        data = f.strip_padding(sid, flags, payload) if flags & f.PADDED else payload
        padding = flow_len - len(data)
        if padding:
            self.consumed(stream, padding)
        end = bool(flags & f.END_STREAM)
        if end:
            stream.remote_closed = True
        self._events.on_data(stream, data, end, flow_len - padding)
        if end and stream.local_closed:
            self._forget(stream)

    def _on_headers(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "HEADERS on stream 0")
        block = f.strip_padding(sid, flags, payload) if flags & f.PADDED else payload
        self_dependent = False
        if flags & f.PRIORITY_FLAG:
            if len(block) < 5:
                raise H2ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "HEADERS priority fields")
            # An error for the stream (§5.3.1), raised once the block is decoded.
            self_dependent = int.from_bytes(block[:4], "big") & 0x7FFFFFFF == sid
            block = block[5:]
        if flags & f.END_HEADERS:
            self._end_headers(sid, flags, block, self_dependent)
        else:
            self._continuation = (sid, flags, [block], len(block), self_dependent)

    def _on_continuation(self, flags: int, sid: int, payload: bytes) -> None:
        cont = self._continuation
        if cont is None or cont[0] != sid:
            raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "unexpected CONTINUATION")
        _, first_flags, parts, size, self_dependent = cont
        size += len(payload)
        if size > self._max_block:
            # It cannot be skipped (HPACK state) and is not worth decoding.
            raise H2ConnectionError(ErrorCode.ENHANCE_YOUR_CALM, f"header block of {size} bytes")
        parts.append(payload)
        if flags & f.END_HEADERS:
            self._continuation = None
            self._end_headers(sid, first_flags, b"".join(parts), self_dependent)
        else:
            self._continuation = (sid, first_flags, parts, size, self_dependent)

    def _end_headers(self, sid: int, flags: int, block: bytes, self_dependent: bool) -> None:
        end_stream = bool(flags & f.END_STREAM)
        stream = self.streams.get(sid)
        if stream is not None:
            headers, size, bad = self._decoder.decode_trailers(block)
            if self_dependent:
                raise H2StreamError(sid, ErrorCode.PROTOCOL_ERROR, "stream depends on itself")
            if stream.remote_closed:
                raise H2StreamError(sid, ErrorCode.STREAM_CLOSED, "HEADERS after END_STREAM")
            if not end_stream:
                raise H2StreamError(sid, ErrorCode.PROTOCOL_ERROR, "trailers without END_STREAM")
            if bad is not None or size > self.config.max_header_list_size:
                raise H2StreamError(sid, ErrorCode.PROTOCOL_ERROR, bad or "trailers too large")
            stream.remote_closed = True
            self._events.on_trailers(stream, headers)
            if stream.local_closed:
                self._forget(stream)
            return
        if sid <= self.highest_stream_id:
            # A closed stream (maybe one we reset while the peer was still sending, §5.4.2):
            # keep the HPACK state in step, otherwise ignore.
            self._decoder.decode_and_discard(block)
            return
        if sid % 2 == 0:
            raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, f"even stream id {sid} from a client")
        self.highest_stream_id = sid
        headers, size, bad = self._decoder.decode_request(block)
        if self_dependent:
            raise H2StreamError(sid, ErrorCode.PROTOCOL_ERROR, "stream depends on itself")
        if self.goaway_sent is not None and sid > self.goaway_sent:
            raise H2StreamError(sid, ErrorCode.REFUSED_STREAM, "the server is going away")
        if len(self.streams) >= self.config.max_concurrent_streams:
            raise H2StreamError(sid, ErrorCode.REFUSED_STREAM, "too many concurrent streams")
        if bad is not None:
            raise H2StreamError(sid, ErrorCode.PROTOCOL_ERROR, bad)
        stream = Stream(sid, self.peer_initial_window, self.config.initial_window_size)
        stream.remote_closed = end_stream
        self.streams[sid] = stream
        too_large = size > self.config.max_header_list_size
        self._events.on_request(stream, None if too_large else headers, end_stream)

    def _on_window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise H2ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE length")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if sid == 0:
            if increment == 0:
                raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > f.MAX_WINDOW:
                raise H2ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, "connection window > 2^31-1")
            self._flush_blocked(list(self._blocked.values()))
            return
        stream = self.streams.get(sid)
        if stream is None:
            self._closed_or_idle(sid, "WINDOW_UPDATE")
            return
        if increment == 0:
            raise H2StreamError(sid, ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
        stream.send_window += increment
        if stream.send_window > f.MAX_WINDOW:
            raise H2StreamError(sid, ErrorCode.FLOW_CONTROL_ERROR, "stream window > 2^31-1")
        if stream.pending is not None or stream.pending_trailers is not None:
            self._flush_blocked([stream])

    def _on_rst_stream(self, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise H2ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM length")
        stream = self.streams.pop(sid, None)
        if stream is None:
            self._closed_or_idle(sid, "RST_STREAM")
            return
        self._drop_pending(stream)
        code = int.from_bytes(payload, "big")
        try:
            error = ErrorCode(code)
        except ValueError:
            error = ErrorCode.INTERNAL_ERROR  # unknown codes mean INTERNAL_ERROR (§7)
        self._events.on_stream_closed(stream, error)

    def _on_settings(self, flags: int, sid: int, payload: bytes) -> None:
        if sid != 0:
            raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & f.ACK:
            if payload:
                raise H2ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            if self._settings_unacked:
                self._settings_unacked -= 1
                self._decoder.settings_acknowledged()
            return
        if len(payload) % 6:
            raise H2ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS length")
        grown = False
        for ident, value in f.parse_settings(payload):
            if ident == Setting.INITIAL_WINDOW_SIZE:
                if value > f.MAX_WINDOW:
                    raise H2ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, "initial window > 2^31-1")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
                    if stream.send_window > f.MAX_WINDOW:
                        raise H2ConnectionError(
                            ErrorCode.FLOW_CONTROL_ERROR, "a stream window > 2^31-1"
                        )
                grown = grown or delta > 0
            elif ident == Setting.MAX_FRAME_SIZE:
                if not f.MIN_MAX_FRAME_SIZE <= value <= f.MAX_MAX_FRAME_SIZE:
                    raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, f"MAX_FRAME_SIZE {value}")
                self.peer_max_frame_size = value
            elif ident == Setting.ENABLE_PUSH:
                if value > 1:
                    raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, f"ENABLE_PUSH {value}")
            elif ident == Setting.HEADER_TABLE_SIZE:
                self._table_update = True
            # MAX_CONCURRENT_STREAMS limits pushes (we make none); MAX_HEADER_LIST_SIZE is
            # advisory and our header lists are a few dozen bytes; unknown ids are ignored.
        self._out.append(f.SETTINGS_ACK)
        if grown and self._blocked:
            self._flush_blocked(list(self._blocked.values()))

    def _on_ping(self, flags: int, sid: int, payload: bytes) -> None:
        if sid != 0:
            raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise H2ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "PING length")
        if flags & f.ACK:
            self._events.on_ping_ack(payload)
        else:
            self._out.append(f.ping(payload, ack=True))

    def _on_goaway(self, sid: int, payload: bytes) -> None:
        if sid != 0:
            raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise H2ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "GOAWAY length")
        last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
        code = int.from_bytes(payload[4:8], "big")
        self.goaway_received = last
        self._events.on_goaway(last, code)

    # -- flow control, receiving ------------------------------------------------------------

    def consumed(self, stream: Stream | None, n: int) -> None:
        """The application took `n` bytes off `stream` (None: connection level only)."""
        if n <= 0 or self.closed:
            return
        self._conn_unacked += n
        if self._conn_unacked >= self.config.connection_window_size >> 1:
            self._out.append(f.window_update(0, self._conn_unacked))
            self.recv_window += self._conn_unacked
            self._conn_unacked = 0
        if stream is not None and not stream.remote_closed:
            stream.unacked += n
            if stream.unacked >= self.config.initial_window_size >> 1:
                self._out.append(f.window_update(stream.stream_id, stream.unacked))
                stream.recv_window += stream.unacked
                stream.unacked = 0

    # -- sending ----------------------------------------------------------------------------

    def _block(self, headers: HeaderList) -> bytes:
        block = self._encoder.encode(headers)
        if self._table_update:
            self._table_update = False
            block = b"\x20" + block  # dynamic table size update: 0 (RFC 7541 §6.3)
        return block

    def send_headers(
        self, stream: Stream, headers: HeaderList, *, end_stream: bool = False
    ) -> None:
        """Response headers, or trailers with `end_stream` (queued behind pending DATA)."""
        if stream.local_closed or stream.stream_id not in self.streams:
            return
        block = self._block(headers)
        if end_stream and (stream.pending is not None):
            stream.pending_trailers = block
            stream.local_closed = True
            return
        self._out.extend(
            f.header_block_frames(
                stream.stream_id,
                block,
                end_stream=end_stream,
                max_frame_size=self.peer_max_frame_size,
            )
        )
        if end_stream:
            self._end_local(stream)

    def send_data(self, stream: Stream, data: bytes, *, end_stream: bool = False) -> None:
        if stream.local_closed or stream.stream_id not in self.streams:
            return
        if stream.pending is not None:
            stream.pending.append(data)
            stream.pending_bytes += len(data)
            self._grow_pending(len(data))
            stream.pending_end = end_stream
            return
        n = len(data)
        window = min(stream.send_window, self.send_window)
        if n <= window and n <= self.peer_max_frame_size:
            stream.send_window -= n
            self.send_window -= n
            flags = f.END_STREAM if end_stream else 0
            self._out.append(f.frame_header(n, _DATA, flags, stream.stream_id))
            if n:
                self._out.append(data)
            if end_stream:
                self._end_local(stream)
            return
        stream.pending = [data]
        stream.pending_bytes = n
        stream.pending_end = end_stream
        self._grow_pending(n)
        self._flush_blocked([stream])

    def _grow_pending(self, n: int) -> None:
        self.pending_output += n
        if self.pending_output > self.config.max_pending_output and self._overflow is None:
            self._overflow = H2ConnectionError(
                ErrorCode.ENHANCE_YOUR_CALM,
                f"more than {self.config.max_pending_output} bytes wait for flow-control window",
            )

    def _flush_blocked(self, streams: Iterable[Stream]) -> None:
        for stream in streams:
            if self.send_window <= 0:
                if stream.pending is not None:
                    self._blocked[stream.stream_id] = stream
                continue
            self._flush_stream(stream)

    def _flush_stream(self, stream: Stream) -> None:
        pending = stream.pending
        if pending is not None:
            data = b"".join(pending)
            sent = 0
            total = len(data)
            max_frame = self.peer_max_frame_size
            while sent < total:
                room = min(stream.send_window, self.send_window, max_frame, total - sent)
                if room <= 0:
                    break
                last = sent + room == total
                flags = f.END_STREAM if last and stream.pending_end else 0
                self._out.append(f.frame_header(room, _DATA, flags, stream.stream_id))
                self._out.append(data[sent : sent + room])
                sent += room
                stream.send_window -= room
                self.send_window -= room
            self.pending_output -= sent
            if sent < total:
                stream.pending = [data[sent:]]
                stream.pending_bytes = total - sent
                self._blocked[stream.stream_id] = stream
                return
            stream.pending = None
            stream.pending_bytes = 0
            if total == 0 and stream.pending_end:
                self._out.append(f.frame_header(0, _DATA, f.END_STREAM, stream.stream_id))
            self._blocked.pop(stream.stream_id, None)
            if stream.pending_end:
                self._end_local(stream)
                return
        trailers = stream.pending_trailers
        if trailers is not None:
            stream.pending_trailers = None
            self._out.extend(
                f.header_block_frames(
                    stream.stream_id,
                    trailers,
                    end_stream=True,
                    max_frame_size=self.peer_max_frame_size,
                )
            )
            self._end_local(stream)

    def _end_local(self, stream: Stream) -> None:
        stream.local_closed = True
        if stream.pending is not None or stream.pending_trailers is not None:
            return
        if stream.remote_closed:
            self._forget(stream)
        elif stream.finishing:
            self.streams.pop(stream.stream_id, None)
            self._out.append(f.rst_stream(stream.stream_id, ErrorCode.NO_ERROR))

    def _forget(self, stream: Stream) -> None:
        if stream.pending is None and stream.pending_trailers is None:
            self.streams.pop(stream.stream_id, None)

    def _drop_pending(self, stream: Stream) -> None:
        if stream.pending is not None:
            self.pending_output -= stream.pending_bytes
            stream.pending = None
            stream.pending_bytes = 0
        stream.pending_trailers = None
        self._blocked.pop(stream.stream_id, None)

    def reset(self, stream_id: int, code: ErrorCode) -> None:
        """RST_STREAM: we abandon the stream (the layer above hears `on_stream_closed`)."""
        self._out.append(f.rst_stream(stream_id, code))
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            self._drop_pending(stream)
            self._events.on_stream_closed(stream, code)

    def finish(self, stream: Stream) -> None:
        """Call after the response's last frame (END_STREAM) was sent or queued: if the peer is
        still sending, ask it to stop with RST_STREAM NO_ERROR (§8.1) once the response is out.
        The layer above is not told (it ended the stream itself)."""
        stream.finishing = True
        if stream.local_closed and stream.stream_id in self.streams:
            self._end_local(stream)
