"""``text/event-stream`` decoder: body bytes in, events out (WHATWG HTML §9.2.6).

It follows the spec's parsing rules on bytes rather than on decoded text:

* lines end with CRLF, LF or CR. A CR that ends a chunk ends its line at once; the decoder
  remembers it, and drops an LF that starts the next chunk (the pair was one CRLF);
* an empty line dispatches the event; an event without any ``data`` line is not dispatched
  (its ``event`` name is dropped as well);
* a line starting with ``:`` is a comment; ``name:value`` is a field, with one space after
  the colon removed; a line without a colon is a field name with an empty value;
* ``data`` lines are joined with ``\\n``; ``event`` sets the name (last one wins); ``id`` sets
  the last event id unless it contains NUL (and, as in the spec, the id carries over to later
  events until another ``id`` line); ``retry`` and unknown fields are ignored;
* one UTF-8 BOM at the very start is skipped.

``data`` stays ``bytes``: nothing is decoded, so a chunk boundary inside a multi-byte UTF-8
character cannot corrupt anything, and JSON payloads go straight to a JSON parser. Field names
are compared as bytes; ``event`` and ``id`` values are decoded as UTF-8 (invalid sequences
replaced, as the spec's decoder does).

One deliberate difference from the spec: `SSEDecoder.flush` dispatches a last event that the
body did not end with a blank line. The spec discards it, but for counting usage a stream
whose final ``data:`` line lost its trailing blank line still said what it said.

Memory: the unfinished line and the current event's data are kept, nothing else; together they
may not exceed ``max_event_bytes`` (`DecodeError` otherwise). A line that arrives over many
chunks is collected as a list of pieces and joined once, so the work stays linear.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenbook.usage.decoders.errors import DecodeError

__all__ = ["DEFAULT_MAX_EVENT_BYTES", "SSEDecoder", "SSEEvent"]

DEFAULT_MAX_EVENT_BYTES = 16 * 1024 * 1024

_BOM = b"\xef\xbb\xbf"
_COLON = 0x3A
_SPACE = 0x20


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event."""

    event: str  # the last ``event:`` value; "" when none was given (the spec's "message")
    data: bytes  # ``data:`` values joined with b"\n", raw UTF-8 bytes
    id: str | None = None  # the last event id in force, None when the stream never set one


class SSEDecoder:
    """Incremental ``text/event-stream`` parser; `decode` per body chunk, `flush` at the end."""

    def __init__(self, *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        if max_event_bytes <= 0:
            raise ValueError("max_event_bytes must be positive")
        self._max = max_event_bytes
        self._head: bytes | None = b""  # bytes seen before the BOM check; None once done
        self._partial: list[bytes] = []  # the unfinished line, in pieces
        self._partial_len = 0
        self._skip_lf = False  # the previous chunk ended with CR
        self._data: list[bytes] = []  # data lines of the current event
        self._data_len = 0  # their total size, with one separator each
        self._event = b""
        self._last_id: str | None = None

    def decode(self, data: bytes) -> list[SSEEvent]:
        if self._head is not None:
            data = self._strip_bom(data)
        if not data:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if data[0] == 0x0A:
                data = data[1:]
                if not data:
                    return []
        has_cr = b"\r" in data
        if not has_cr and b"\n" not in data:
            # No line ends here: keep the piece (a long line over many chunks costs no copying).
            self._partial.append(data)
            self._partial_len += len(data)
            self._check_size()
            return []
        if self._partial:
            self._partial.append(data)
            data = b"".join(self._partial)
            self._partial.clear()
            self._partial_len = 0
        if has_cr:
            if data[-1] == 0x0D:
                self._skip_lf = True
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = data.split(b"\n")
        rest = lines.pop()
        if rest:
            self._partial.append(rest)
            self._partial_len = len(rest)
        events: list[SSEEvent] = []
        for line in lines:
            self._line(line, events)
        self._check_size()
        return events

    def flush(self) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        if self._head:  # a body shorter than a BOM, and not one
            self._partial.append(self._head)
        self._head = None
        if self._partial:
            line = b"".join(self._partial)
            self._partial.clear()
            self._partial_len = 0
            self._line(line, events)
        self._line(b"", events)  # the blank line the body did not end with
        return events

    def _strip_bom(self, data: bytes) -> bytes:
        """Skip a UTF-8 BOM at the very start, waiting for its three bytes if need be."""
        assert self._head is not None
        head = self._head + data
        if len(head) < len(_BOM) and _BOM.startswith(head):
            self._head = head
            return b""
        self._head = None
        return head[len(_BOM) :] if head.startswith(_BOM) else head

    def _line(self, line: bytes, events: list[SSEEvent]) -> None:
        if not line:
            if self._data:
                events.append(
                    SSEEvent(
                        self._event.decode("utf-8", "replace"),
                        b"\n".join(self._data),
                        self._last_id,
                    )
                )
                self._data.clear()
                self._data_len = 0
            self._event = b""
            return
        if line[0] == _COLON:
            return
        name, colon, value = line.partition(b":")
        if colon and value and value[0] == _SPACE:
            value = value[1:]
        if name == b"data":
            self._data.append(value)
            self._data_len += len(value) + 1
            if self._data_len > self._max:
                raise DecodeError(f"sse: event exceeds the limit of {self._max} bytes")
        elif name == b"event":
            self._event = value
        elif name == b"id" and b"\0" not in value:  # an id with NUL is ignored
            self._last_id = value.decode("utf-8", "replace")
        # "retry" and unknown fields do not matter for reading payloads.

    def _check_size(self) -> None:
        if self._partial_len + self._data_len > self._max:
            raise DecodeError(f"sse: event exceeds the limit of {self._max} bytes")
