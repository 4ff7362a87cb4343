"""Newline-delimited JSON decoder (``application/x-ndjson``, ``application/stream+json``).

Ollama streams one JSON object per line; Cohere v1 does the same under
``application/stream+json``. The decoder cuts the body at LF, strips each line of surrounding
ASCII whitespace (so CRLF endings and indentation do not matter) and drops blank lines. It does
not parse JSON: each line's bytes go to the caller's parser as they are.

Memory: only the unfinished last line is kept, as a list of pieces joined once when its LF
arrives. A line longer than ``max_line_bytes`` raises `DecodeError`, whether it is still
arriving or came in one chunk.
"""

from __future__ import annotations

from tokenbook.usage.decoders.errors import DecodeError

__all__ = ["DEFAULT_MAX_LINE_BYTES", "NDJSONDecoder"]

DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024


class NDJSONDecoder:
    """Incremental line splitter; `decode` per body chunk, `flush` at the end."""

    def __init__(self, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        if max_line_bytes <= 0:
            raise ValueError("max_line_bytes must be positive")
        self._max = max_line_bytes
        self._partial: list[bytes] = []
        self._partial_len = 0

    def decode(self, data: bytes) -> list[bytes]:
        if b"\n" not in data:
            if data:
                self._partial.append(data)
                self._partial_len += len(data)
                self._check(self._partial_len)
            return []
        if self._partial:
            self._partial.append(data)
            data = b"".join(self._partial)
            self._partial.clear()
        lines = data.split(b"\n")
        rest = lines.pop()
        self._partial_len = len(rest)
        if rest:
            self._partial.append(rest)
        out: list[bytes] = []
        for line in lines:
            self._check(len(line))
            line = line.strip()
            if line:
                out.append(line)
        self._check(self._partial_len)
        return out

    def flush(self) -> list[bytes]:
        line = b"".join(self._partial).strip()
        self._partial.clear()
        self._partial_len = 0
        return [line] if line else []

    def _check(self, size: int) -> None:
        if size > self._max:
            raise DecodeError(f"ndjson: line exceeds the limit of {self._max} bytes")
