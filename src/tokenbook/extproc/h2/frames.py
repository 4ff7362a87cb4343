"""HTTP/2 wire constants and frame serialisation (RFC 9113 §4, §6), nothing stateful.

Error tree (who raises what, and what the peer sees)::

    H2Error
     ├── H2ConnectionError   a connection error (§5.4.1): GOAWAY with `code`, then close
     └── H2StreamError        a stream error (§5.4.2): RST_STREAM with `code`, the connection lives

Both carry an RFC 9113 error code (`ErrorCode`). Only `connection.ServerConnection` raises them,
and it catches them itself: nothing escapes `ServerConnection.receive` (the fuzz tests hold it to
that), the peer learns about the problem on the wire.
"""

from __future__ import annotations

import struct
from enum import IntEnum

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = struct.Struct(">BHBBI")  # 24-bit length as (high byte, low 16 bits), type, flags, id
FRAME_HEADER_LEN = 9
MAX_WINDOW = 2**31 - 1
MIN_MAX_FRAME_SIZE = 16_384
MAX_MAX_FRAME_SIZE = 2**24 - 1
DEFAULT_WINDOW = 65_535
DEFAULT_HEADER_TABLE_SIZE = 4_096


class FrameType(IntEnum):
    DATA = 0x0
    HEADERS = 0x1
    PRIORITY = 0x2
    RST_STREAM = 0x3
    SETTINGS = 0x4
    PUSH_PROMISE = 0x5
    PING = 0x6
    GOAWAY = 0x7
    WINDOW_UPDATE = 0x8
    CONTINUATION = 0x9


# Flags (the same bit means different things on different frame types).
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20


class ErrorCode(IntEnum):
    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


class Setting(IntEnum):
    HEADER_TABLE_SIZE = 0x1
    ENABLE_PUSH = 0x2
    MAX_CONCURRENT_STREAMS = 0x3
    INITIAL_WINDOW_SIZE = 0x4
    MAX_FRAME_SIZE = 0x5
    MAX_HEADER_LIST_SIZE = 0x6


class H2Error(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class H2ConnectionError(H2Error):
    """The whole connection is unusable (GOAWAY)."""


class H2StreamError(H2Error):
    """One stream is unusable (RST_STREAM); `stream_id` says which."""

    def __init__(self, stream_id: int, code: ErrorCode, message: str) -> None:
        super().__init__(code, message)
        self.stream_id = stream_id


_pack_header = FRAME_HEADER.pack
_WINDOW = struct.Struct(">I")
_RST = struct.Struct(">I")
_GOAWAY = struct.Struct(">II")
_SETTING = struct.Struct(">HI")


def frame_header(length: int, ftype: int, flags: int, stream_id: int) -> bytes:
    return _pack_header(length >> 16, length & 0xFFFF, ftype, flags, stream_id)


def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return frame_header(len(payload), ftype, flags, stream_id) + payload


def settings_frame(values: dict[Setting, int]) -> bytes:
    payload = b"".join(_SETTING.pack(k, v) for k, v in values.items())
    return frame(FrameType.SETTINGS, 0, 0, payload)


SETTINGS_ACK = frame(FrameType.SETTINGS, ACK, 0)


def parse_settings(payload: bytes) -> list[tuple[int, int]]:
    """(identifier, value) pairs; the caller checked that the length is a multiple of 6."""
    return [_SETTING.unpack_from(payload, i) for i in range(0, len(payload), 6)]


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(FrameType.WINDOW_UPDATE, 0, stream_id, _WINDOW.pack(increment))


def rst_stream(stream_id: int, code: int) -> bytes:
    return frame(FrameType.RST_STREAM, 0, stream_id, _RST.pack(code))


def goaway(last_stream_id: int, code: int, debug: bytes = b"") -> bytes:
    return frame(FrameType.GOAWAY, 0, 0, _GOAWAY.pack(last_stream_id, code) + debug)


def ping(payload: bytes, *, ack: bool) -> bytes:
    return frame(FrameType.PING, ACK if ack else 0, 0, payload)


def header_block_frames(
    stream_id: int, block: bytes, *, end_stream: bool, max_frame_size: int
) -> list[bytes]:
    """A HEADERS frame, plus CONTINUATION frames when the block exceeds the peer's frame size."""
    flags = END_STREAM if end_stream else 0
    if len(block) <= max_frame_size:
        return [frame_header(len(block), FrameType.HEADERS, flags | END_HEADERS, stream_id), block]
    out = [frame_header(max_frame_size, FrameType.HEADERS, flags, stream_id)]
    out.append(block[:max_frame_size])
    rest = block[max_frame_size:]
    while rest:
        piece, rest = rest[:max_frame_size], rest[max_frame_size:]
        last = END_HEADERS if not rest else 0
        out.append(frame_header(len(piece), FrameType.CONTINUATION, last, stream_id))
        out.append(piece)
    return out


def strip_padding(stream_id: int, flags: int, payload: bytes) -> bytes:
    """The payload without its padding (§6.1); padding longer than the payload is an error."""
    if not flags & PADDED:
        return payload
    if not payload:
        raise H2ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "padded frame without a pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise H2ConnectionError(
            ErrorCode.PROTOCOL_ERROR, f"stream {stream_id}: padding longer than the frame"
        )
    return payload[1 : len(payload) - pad]
