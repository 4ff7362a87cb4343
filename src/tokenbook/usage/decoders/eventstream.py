"""AWS ``application/vnd.amazon.eventstream`` decoder (Bedrock ConverseStream and
InvokeModelWithResponseStream).

Each message is one binary frame, all integers big-endian::

    total_length  u32   whole frame, these 4 bytes and the message CRC included
    headers_len   u32
    prelude_crc   u32   CRC32 of the 8 bytes above
    headers       headers_len bytes
    payload       total_length - headers_len - 16 bytes
    message_crc   u32   CRC32 of everything before it

A header is ``name_len u8, name (UTF-8), type u8, value``; the value by type:

====  ==========  ==================================================  ======================
type  name        encoding                                            value here
====  ==========  ==================================================  ======================
0     bool true   nothing                                             ``True``
1     bool false  nothing                                             ``False``
2     byte        i8                                                  ``int``
3     short       i16                                                 ``int``
4     integer     i32                                                 ``int``
5     long        i64                                                 ``int``
6     bytes       u16 length, bytes                                   ``bytes``
7     string      u16 length, UTF-8                                   ``str``
8     timestamp   i64 milliseconds since the epoch                    ``int`` (milliseconds)
9     uuid        16 bytes                                            ``str`` (canonical form)
====  ==========  ==================================================  ======================

Both CRCs are checked (``zlib.crc32`` is the same CRC-32 the format uses). The prelude is
checked as soon as its 12 bytes are in, before anything else is buffered, so a garbage body is
rejected at once instead of waiting for a bogus length. Frames larger than
``max_message_bytes`` are rejected the same way (AWS itself caps messages at 16 MiB and the
headers at 128 KiB).

Bedrock wraps model output in ``chunk`` events whose payload is ``{"bytes": "<base64>"}``
(InvokeModelWithResponseStream); `decode_chunk_bytes` unwraps it.
"""

from __future__ import annotations

import base64
import binascii
import struct
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson

from tokenbook.usage.decoders.errors import DecodeError

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "EventStreamDecoder",
    "EventStreamMessage",
    "HeaderValue",
    "decode_chunk_bytes",
    "parse_headers",
]

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024

HeaderValue = str | bytes | int | bool

_PRELUDE = struct.Struct(">III")
_PRELUDE_LEN = _PRELUDE.size  # 12
_MIN_MESSAGE = _PRELUDE_LEN + 4  # no headers, no payload
_MAX_HEADERS = 128 * 1024
_FIXED_INTS = {
    2: struct.Struct(">b"),
    3: struct.Struct(">h"),
    4: struct.Struct(">i"),
    5: struct.Struct(">q"),
    8: struct.Struct(">q"),
}
_U16 = struct.Struct(">H")


@dataclass(frozen=True, slots=True)
class EventStreamMessage:
    """One frame: its headers and its raw payload."""

    headers: Mapping[str, HeaderValue] = field(hash=False)
    payload: bytes

    @property
    def event_type(self) -> str | None:
        """``:event-type``, e.g. ``chunk``, ``messageStart``, ``metadata``."""
        return self._str_header(":event-type")

    @property
    def message_type(self) -> str | None:
        """``:message-type``: ``event``, ``exception`` or ``error``."""
        return self._str_header(":message-type")

    @property
    def exception_type(self) -> str | None:
        """``:exception-type`` of an exception message, e.g. ``throttlingException``."""
        return self._str_header(":exception-type")

    @property
    def content_type(self) -> str | None:
        return self._str_header(":content-type")

    def _str_header(self, name: str) -> str | None:
        value = self.headers.get(name)
        return value if isinstance(value, str) else None


def parse_headers(data: bytes | memoryview) -> dict[str, HeaderValue]:
    """Decode a frame's header block; `DecodeError` if it is not well formed."""
    headers: dict[str, HeaderValue] = {}
    pos, size = 0, len(data)
    try:
        while pos < size:
            name_len = data[pos]
            pos += 1
            if name_len == 0 or pos + name_len + 1 > size:
                raise DecodeError("eventstream: malformed header name")
            name = bytes(data[pos : pos + name_len]).decode("utf-8")
            pos += name_len
            kind = data[pos]
            pos += 1
            value: HeaderValue
            if kind == 0:
                value = True
            elif kind == 1:
                value = False
            elif kind in _FIXED_INTS:
                fmt = _FIXED_INTS[kind]
                if pos + fmt.size > size:
                    raise DecodeError("eventstream: header value runs past the header block")
                (value,) = fmt.unpack_from(data, pos)
                pos += fmt.size
            elif kind in (6, 7):
                if pos + 2 > size:
                    raise DecodeError("eventstream: header value runs past the header block")
                (length,) = _U16.unpack_from(data, pos)
                pos += 2
                if pos + length > size:
                    raise DecodeError("eventstream: header value runs past the header block")
                raw = bytes(data[pos : pos + length])
                pos += length
                value = raw.decode("utf-8") if kind == 7 else raw
            elif kind == 9:
                if pos + 16 > size:
                    raise DecodeError("eventstream: header value runs past the header block")
                value = str(uuid.UUID(bytes=bytes(data[pos : pos + 16])))
                pos += 16
            else:
                raise DecodeError(f"eventstream: unknown header value type {kind}")
            headers[name] = value
    except UnicodeDecodeError as exc:
        raise DecodeError("eventstream: header is not valid UTF-8") from exc
    return headers


class EventStreamDecoder:
    """Incremental frame parser; `decode` per body chunk, `flush` at the end."""

    def __init__(self, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        if max_message_bytes < _MIN_MESSAGE:
            raise ValueError(f"max_message_bytes must be at least {_MIN_MESSAGE}")
        self._max = max_message_bytes
        self._buf = bytearray()
        self._need = 0  # length of the frame whose prelude was checked, 0 before that
        self._offset = 0  # stream offset of _buf[0], for error messages

    def decode(self, data: bytes) -> list[EventStreamMessage]:
        out: list[EventStreamMessage] = []
        if not data:
            return out
        self._buf += data
        pos = 0
        buf = self._buf
        with memoryview(buf) as view:
            while True:
                if not self._need:
                    if len(buf) - pos < _PRELUDE_LEN:
                        break
                    self._need = self._check_prelude(view, pos)
                total = self._need
                if len(buf) - pos < total:
                    break
                out.append(self._message(view, pos, total))
                self._need = 0
                pos += total
        if pos:
            del buf[:pos]
            self._offset += pos
        return out

    def flush(self) -> list[EventStreamMessage]:
        if self._buf:
            raise DecodeError(
                f"eventstream: body ended inside a frame at byte {self._offset} (truncated body)"
            )
        return []

    def _check_prelude(self, view: memoryview, pos: int) -> int:
        total, headers_len, crc = _PRELUDE.unpack_from(view, pos)
        at = self._offset + pos
        if zlib.crc32(view[pos : pos + 8]) != crc:
            raise DecodeError(f"eventstream: prelude CRC mismatch in the frame at byte {at}")
        if total > self._max:
            raise DecodeError(
                f"eventstream: frame at byte {at} exceeds the limit of {self._max} bytes"
            )
        if total < _MIN_MESSAGE + headers_len or headers_len > _MAX_HEADERS:
            raise DecodeError(f"eventstream: inconsistent lengths in the frame at byte {at}")
        return int(total)

    def _message(self, view: memoryview, pos: int, total: int) -> EventStreamMessage:
        end = pos + total
        (crc,) = struct.unpack_from(">I", view, end - 4)
        if zlib.crc32(view[pos : end - 4]) != crc:
            raise DecodeError(
                f"eventstream: message CRC mismatch in the frame at byte {self._offset + pos}"
            )
        (headers_len,) = struct.unpack_from(">I", view, pos + 4)
        headers_start = pos + _PRELUDE_LEN
        payload_start = headers_start + headers_len
        headers = parse_headers(view[headers_start:payload_start])
        return EventStreamMessage(headers, view[payload_start : end - 4].tobytes())


def decode_chunk_bytes(payload: bytes) -> bytes | None:
    """The model's own bytes from an InvokeModelWithResponseStream ``chunk`` payload.

    The payload is JSON ``{"bytes": "<base64>", "p": "<padding>"}``. Returns the decoded
    ``bytes`` value, or None when the payload has no ``bytes`` member. `DecodeError` when the
    payload is not a JSON object, or ``bytes`` is not a valid base64 string.
    """
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise DecodeError("eventstream: chunk payload is not JSON") from exc
    if not isinstance(doc, dict):
        raise DecodeError("eventstream: chunk payload is not a JSON object")
    encoded = doc.get("bytes")
    if encoded is None:
        return None
    if not isinstance(encoded, str):
        raise DecodeError("eventstream: chunk 'bytes' is not a string")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DecodeError("eventstream: chunk 'bytes' is not valid base64") from exc
