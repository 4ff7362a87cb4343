"""Streamed JSON array decoder: Gemini / Vertex ``streamGenerateContent`` without ``alt=sse``.

Without ``alt=sse`` Google sends the stream as one JSON array whose elements arrive one by one,
``[{...}\\r\\n,\\r\\n{...}]``. The decoder hands out the raw bytes of each complete top-level
element as soon as its last byte arrives; it does not parse them, it only finds where they end.

How: a depth scanner that knows strings and escapes. Outside a string the only bytes that matter
are ``[ ] { } "``; inside a string only ``"`` and ``\\``. A compiled regular expression skips
to the next bracket, consuming whole strings with their escapes on the way (C speed), so the
Python loop runs once per bracket, not per byte. Brackets are matched against a stack, so
``{]`` is an error here rather than in the caller's parser. Whitespace and commas between
elements are skipped (a missing or doubled comma is tolerated: it cannot change where an
element ends). Scalars as elements (``[1, "a", true]``) are handed out too.

A body that is one JSON object instead of an array (an error reply, or a non-streamed
response) is returned whole by `JSONArrayDecoder.flush`. A body that ends after complete
elements but without the closing ``]`` is accepted: everything in it was already handed out.

Memory: the buffer holds only the current, unfinished element (and at most one chunk of what
follows it); an element over ``max_element_bytes`` raises `DecodeError`.
"""

from __future__ import annotations

import re

from tokenbook.usage.decoders.errors import DecodeError

__all__ = ["DEFAULT_MAX_ELEMENT_BYTES", "JSONArrayDecoder"]

DEFAULT_MAX_ELEMENT_BYTES = 16 * 1024 * 1024

_WS = re.compile(rb"[ \t\r\n]*")
_WS_OR_COMMA = re.compile(rb"[ \t\r\n,]*")
# Inside an element: everything that is not a bracket, complete strings (with their escapes
# and any brackets in them) included. Possessive, so it never backtracks; it stops at a
# bracket or at the opening quote of a string that does not end in the buffer.
_SKIP = re.compile(rb'(?:[^\[\]{}"]++|"(?:[^"\\]++|\\.)*+")*+', re.DOTALL)
# The rest of a string's body, up to its closing quote or the end of the buffer.
_STRING_BODY = re.compile(rb'(?:[^"\\]++|\\.)*+', re.DOTALL)
_SCALAR_END = re.compile(rb"[ \t\r\n,\]]")
_SCALAR_START = frozenset(b"-0123456789tfn")

_QUOTE = 0x22
_OPEN_TO_CLOSE = {0x5B: 0x5D, 0x7B: 0x7D}  # [ -> ], { -> }
_CLOSERS = frozenset(_OPEN_TO_CLOSE.values())

# Phases of the body.
_START = 0  # before the first non-whitespace byte
_BETWEEN = 1  # inside the array, between elements
_ELEMENT = 2  # inside an element
_END = 3  # after the array's closing bracket
_OBJECT_DONE = 4  # the body was one object, and it is complete


class JSONArrayDecoder:
    """Incremental splitter of a top-level JSON array into its elements."""

    def __init__(self, *, max_element_bytes: int = DEFAULT_MAX_ELEMENT_BYTES) -> None:
        if max_element_bytes <= 0:
            raise ValueError("max_element_bytes must be positive")
        self._max = max_element_bytes
        self._buf = bytearray()
        self._pos = 0  # next byte of _buf to scan
        self._start = 0  # where the current element starts in _buf
        self._phase = _START
        self._stack = bytearray()  # closing brackets expected, innermost last
        self._in_string = False
        self._escape = False  # a backslash ended the previous chunk
        self._scalar = False  # the current element is a bare number or literal
        self._single_object = False  # the body is an object, not an array
        self._object: bytes | None = None
        self._offset = 0  # stream offset of _buf[0], for error messages

    def decode(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        if not data:
            return out
        self._buf += data
        self._scan(out)
        # Keep only the unfinished element (bytearray drops a prefix without moving the rest).
        keep = self._start if self._phase == _ELEMENT else self._pos
        if keep:
            del self._buf[:keep]
            self._offset += keep
            self._pos -= keep
            self._start = 0
        if self._phase == _ELEMENT and len(self._buf) > self._max:
            raise DecodeError(f"json array: element exceeds the limit of {self._max} bytes")
        return out

    def flush(self) -> list[bytes]:
        if self._phase == _START:
            raise DecodeError("json array: the body holds no JSON array")
        if self._phase == _ELEMENT:
            raise DecodeError("json array: the body ended inside an element (truncated body)")
        if self._object is not None:
            obj, self._object = self._object, None
            return [obj]
        return []

    def _scan(self, out: list[bytes]) -> None:
        buf, pos, size = self._buf, self._pos, len(self._buf)
        while pos < size:
            phase = self._phase
            if phase == _ELEMENT:
                if self._in_string:
                    if self._escape:
                        self._escape = False
                        pos += 1  # the escaped byte (a multi-byte \uXXXX needs no care)
                        continue
                    body = _STRING_BODY.match(buf, pos)
                    pos, closed = self._string_stopped(body.end(), size)  # type: ignore[union-attr]
                    if closed and not self._stack:  # the element was a string
                        self._emit(pos, out)
                elif self._scalar:
                    m = _SCALAR_END.search(buf, pos)
                    if m is None:
                        pos = size
                        break
                    pos = m.start()
                    self._scalar = False
                    self._emit(pos, out)
                else:
                    # Everything up to the next bracket, complete strings included, in one go.
                    pos = _SKIP.match(buf, pos).end()  # type: ignore[union-attr]
                    if pos == size:
                        break
                    c = buf[pos]
                    if c == _QUOTE:  # a string that does not end in this buffer
                        body = _STRING_BODY.match(buf, pos + 1)
                        pos, _ = self._string_stopped(body.end(), size)  # type: ignore[union-attr]
                        continue
                    pos += 1
                    if c in _CLOSERS:
                        if self._stack[-1] != c:
                            raise DecodeError(
                                f"json array: mismatched bracket at byte {self._offset + pos - 1}"
                            )
                        self._stack.pop()
                        if not self._stack:
                            self._emit(pos, out)
                    else:
                        self._stack.append(_OPEN_TO_CLOSE[c])
            elif phase == _BETWEEN:
                pos = _WS_OR_COMMA.match(buf, pos).end()  # type: ignore[union-attr]
                if pos == size:
                    break
                c = buf[pos]
                if c == 0x5D:  # ]
                    self._phase = _END
                    pos += 1
                    continue
                self._begin(pos, c)
                pos += 1
            elif phase == _START:
                pos = _WS.match(buf, pos).end()  # type: ignore[union-attr]
                if pos == size:
                    break
                c = buf[pos]
                if c == 0x5B:  # [
                    self._phase = _BETWEEN
                elif c == 0x7B:  # {
                    self._single_object = True
                    self._begin(pos, c)
                else:
                    raise DecodeError("json array: the body is neither a JSON array nor an object")
                pos += 1
            else:  # _END, _OBJECT_DONE
                pos = _WS.match(buf, pos).end()  # type: ignore[union-attr]
                if pos < size:
                    raise DecodeError(
                        f"json array: data after the end of the body at byte {self._offset + pos}"
                    )
        self._pos = pos

    def _string_stopped(self, end: int, size: int) -> tuple[int, bool]:
        """Where scanning goes on after a string body match that stopped at `end`, and
        whether the string is closed.

        The body pattern stops only at the closing quote, at the end of the buffer, or at a
        backslash that is the buffer's last byte (its escaped byte has not arrived yet).
        """
        if end < size and self._buf[end] == _QUOTE:
            self._in_string = False
            return end + 1, True
        self._in_string = True
        if end < size:
            self._escape = True
            return size, False
        return end, False

    def _begin(self, pos: int, c: int) -> None:
        """An element starts at `pos` with byte `c` (already consumed by the caller)."""
        self._start = pos
        self._phase = _ELEMENT
        if c in _OPEN_TO_CLOSE:
            self._stack.append(_OPEN_TO_CLOSE[c])
        elif c == _QUOTE:
            self._in_string = True
        elif c in _SCALAR_START:
            self._scalar = True
        else:
            raise DecodeError(f"json array: unexpected byte at {self._offset + pos}")

    def _emit(self, end: int, out: list[bytes]) -> None:
        if end - self._start > self._max:
            raise DecodeError(f"json array: element exceeds the limit of {self._max} bytes")
        with memoryview(self._buf) as view:
            element = view[self._start : end].tobytes()
        if self._single_object:
            self._object = element
            self._phase = _OBJECT_DONE
        else:
            out.append(element)
            self._phase = _BETWEEN
