"""Byte-level looks into JSON payloads that are cheaper than parsing them.

Most stream events carry no usage; the parsers only need, per event, a little text bookkeeping
(for the estimate of an aborted stream) and, once, the model name. Both are answered here with
``bytes.find`` instead of a JSON parse.

Why this is sound: in valid JSON an unescaped ``"`` only ever delimits a string, so the needle
``"text"`` followed by ``:`` can only be an object key — never a piece of model output, where
quotes are escaped as ``\\"``. A malformed payload at worst miscounts an estimate.
"""

from __future__ import annotations

import orjson

__all__ = ["first_string_value", "has_object_value", "string_value_bytes"]

_WS = b" \t\r\n"


def _value_start(data: bytes, after_key: int) -> int:
    """Index of the first byte of the value after ``"key"`` (past ``:`` and blanks), or -1."""
    n = len(data)
    i = after_key
    while i < n and data[i] in _WS:
        i += 1
    if i >= n or data[i] != 0x3A:  # ':' -- not a key (e.g. the value in "type":"text")
        return -1
    i += 1
    while i < n and data[i] in _WS:
        i += 1
    return i if i < n else -1


def _string_end(data: bytes, start: int) -> int:
    """Index of the closing quote of the JSON string whose body starts at ``start``, or -1."""
    j = data.find(b'"', start)
    while j != -1:
        k = j - 1
        while k >= start and data[k] == 0x5C:  # backslash
            k -= 1
        if (j - 1 - k) % 2 == 0:  # an even run of backslashes: the quote is not escaped
            return j
        j = data.find(b'"', j + 1)
    return -1


def string_value_bytes(data: bytes, keys: tuple[bytes, ...]) -> int:
    """Approximate UTF-8 size of the decoded string values of ``keys`` (each ``b'"name"'``).

    An escape such as ``\\n`` counts as one byte and ``\\uXXXX`` as three (a typical non-Latin
    character); non-string values (``null``, objects, arrays) count nothing.
    """
    total = 0
    for key in keys:
        pos = data.find(key)
        while pos != -1:
            nxt = pos + len(key)
            start = _value_start(data, nxt)
            if start != -1 and data[start] == 0x22:  # '"'
                end = _string_end(data, start + 1)
                if end == -1:
                    break
                span = end - start - 1
                escapes = data.count(b"\\", start + 1, end)
                if escapes:
                    span -= escapes + 2 * data.count(b"\\u", start + 1, end)
                total += max(span, 0)
                nxt = end + 1
            pos = data.find(key, nxt)
    return total


def has_object_value(data: bytes, key: bytes) -> bool:
    """Whether some ``key`` (``b'"usage"'``) in ``data`` has an object value, not ``null``.

    OpenAI and Groq send ``"usage": null`` on every chunk but the last; this keeps the parse for
    the one chunk that matters.
    """
    pos = data.find(key)
    while pos != -1:
        start = _value_start(data, pos + len(key))
        if start != -1 and data[start] == 0x7B:  # '{'
            return True
        pos = data.find(key, pos + len(key))
    return False


def first_string_value(data: bytes, key: bytes) -> str | None:
    """The first non-empty string value of ``key`` (``b'"model"'``), decoded, or ``None``."""
    pos = data.find(key)
    while pos != -1:
        nxt = pos + len(key)
        start = _value_start(data, nxt)
        if start != -1 and data[start] == 0x22:
            end = _string_end(data, start + 1)
            if end == -1:
                return None
            raw = data[start + 1 : end]
            if raw:
                if b"\\" in raw:
                    return _unescape(raw)
                return raw.decode("utf-8", "replace")
            nxt = end + 1
        pos = data.find(key, nxt)
    return None


def _unescape(raw: bytes) -> str | None:
    try:
        value = orjson.loads(b'"' + raw + b'"')
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, str) else None
