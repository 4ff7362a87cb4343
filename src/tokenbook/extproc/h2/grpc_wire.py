"""gRPC over HTTP/2, the wire part (grpc/doc/PROTOCOL-HTTP2.md): message framing and status.

A message is a 1-byte compressed flag, a 4-byte big-endian length and the payload. We support
no compression: a request naming a ``grpc-encoding`` other than ``identity`` is answered
UNIMPLEMENTED (with ``grpc-accept-encoding: identity``), and a message with the compressed flag
set anyway is INTERNAL, as the protocol document prescribes. A message longer than the limit
is RESOURCE_EXHAUSTED, like grpcio's ``max_receive_message_length``.

The status goes in the trailers (``grpc-status``, ``grpc-message`` percent-encoded), or alone in
the response headers when there is nothing else to send ("Trailers-Only").
"""

from __future__ import annotations

from enum import IntEnum

from tokenbook.extproc.h2.headers import HeaderList

MAX_MESSAGE_BYTES = 32 * 1024 * 1024  # the grpcio server's setting in server.py
_MAX_STATUS_MESSAGE = 1024


class Status(IntEnum):
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class GrpcError(Exception):
    """A call ends with this status (raised by the deframer, the dispatcher or a handler)."""

    def __init__(self, status: Status, message: str = "") -> None:
        super().__init__(f"{status.name}: {message}")
        self.status = status
        self.message = message


RESPONSE_HEADERS: HeaderList = ((b":status", b"200"), (b"content-type", b"application/grpc"))
OK_TRAILERS: HeaderList = ((b"grpc-status", b"0"),)
OK_TRAILERS_ONLY: HeaderList = (*RESPONSE_HEADERS, *OK_TRAILERS)


def _percent_encode(text: str) -> bytes:
    """grpc-message encoding: printable ASCII except '%' as is, everything else %XX (UTF-8)."""
    raw = text.encode("utf-8")
    if all(0x20 <= b <= 0x7E and b != 0x25 for b in raw):
        return raw
    return b"".join(bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in raw)


def trailers(status: Status, message: str = "", *, trailers_only: bool) -> HeaderList:
    if status == Status.OK and not message:
        return OK_TRAILERS_ONLY if trailers_only else OK_TRAILERS
    fields: list[tuple[bytes, bytes]] = list(RESPONSE_HEADERS) if trailers_only else []
    fields.append((b"grpc-status", str(int(status)).encode()))
    if message:
        fields.append((b"grpc-message", _percent_encode(message[:_MAX_STATUS_MESSAGE])))
    if status == Status.UNIMPLEMENTED:
        fields.append((b"grpc-accept-encoding", b"identity"))
    return tuple(fields)


def frame_message(payload: bytes) -> bytes:
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


class Deframer:
    """Splits a stream's DATA into gRPC messages, whatever the DATA frame boundaries.

    A message split over many frames is collected as a list of pieces and joined once, when it
    is complete (a 1 MiB buffered body arrives in 64 frames: no quadratic copying).
    """

    __slots__ = ("_have", "_need", "_parts", "max_bytes")

    def __init__(self, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._parts: list[bytes] = []
        self._have = 0
        self._need = 5  # bytes that complete the message begun in _parts
        self.max_bytes = max_bytes

    @property
    def partial(self) -> bool:
        """True while a message has begun but not ended (an error at end of stream)."""
        return self._have > 0

    def feed(self, data: bytes) -> list[bytes]:
        """The complete messages `data` finishes; raises `GrpcError` on bad framing."""
        if self._parts:
            self._parts.append(data)
            self._have += len(data)
            if self._have < self._need:
                return []
            data = b"".join(self._parts)
            self._parts = []
            self._have = 0
        out: list[bytes] = []
        pos = 0
        end = len(data)
        while end - pos >= 5:
            flag = data[pos]
            if flag:
                if flag == 1:
                    raise GrpcError(Status.INTERNAL, "compressed message without grpc-encoding")
                raise GrpcError(Status.INTERNAL, f"bad message flag {flag}")
            length = int.from_bytes(data[pos + 1 : pos + 5], "big")
            if length > self.max_bytes:
                raise GrpcError(
                    Status.RESOURCE_EXHAUSTED,
                    f"message of {length} bytes exceeds the limit of {self.max_bytes}",
                )
            stop = pos + 5 + length
            if stop > end:
                self._need = 5 + length
                break
            out.append(data[pos + 5 : stop])
            pos = stop
        else:
            self._need = 5
        if pos < end:
            rest = data[pos:]
            self._parts = [rest]
            self._have = len(rest)
        return out
