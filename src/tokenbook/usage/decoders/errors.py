"""The one error every decoder raises.

Decoders turn a response body into frames (content-decoded bytes, SSE events, NDJSON lines,
JSON-array elements, AWS event-stream messages). Whatever goes wrong inside one of them —
malformed framing, a bad CRC, a truncated compressed stream, an event or a decompressed body
over its size limit — surfaces as `DecodeError` and nothing else, so a caller needs exactly one
``except`` clause. Library errors (``zlib.error``, ``brotli.error``, ``zstandard.ZstdError``,
``binascii.Error``, ...) are chained as ``__cause__``.

The message says *what* went wrong and where (a byte offset, a limit), never any part of the
body: bodies carry prompts and completions, and error messages end up in logs.

A decoder that has raised is in an undefined state; drop it. The usage adapters fail open on it
(the request passes unchanged and the extraction reports the reason).
"""

from __future__ import annotations

__all__ = ["DecodeError"]


class DecodeError(Exception):
    """The body is malformed or over a configured limit."""
