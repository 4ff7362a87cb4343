"""Byte-level looks into JSON payloads that are cheaper than parsing them.

Most stream events carry no usage; the parsers only need, per event, a little text bookkeeping
(for the estimate of an aborted stream), a yes/no on "could this event hold usage?", and, once,
the model name. All three are answered here with compiled regular expressions over the raw bytes
(C speed, one pass) instead of a JSON parse.

Why this is sound: in valid JSON an unescaped ``"`` only ever delimits a string, so ``"text"``
followed by ``:`` can only be an object key, never a piece of model output, where quotes are
escaped as ``\\"``. A malformed payload at worst miscounts an estimate.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

import orjson

__all__ = ["first_string_value", "has_object_value", "string_value_bytes", "text_counter"]

# The body of a JSON string: anything but a quote or a backslash, or an escape pair.
_STRING_BODY = rb'([^"\\]*(?:\\.[^"\\]*)*)"'
_ESCAPE = re.compile(rb"\\(?:u([0-9a-fA-F]{4})|.)", re.DOTALL)


@lru_cache(maxsize=64)
def _string_values(keys: tuple[bytes, ...]) -> re.Pattern[bytes]:
    names = b"|".join(re.escape(key.strip(b'"')) for key in keys)
    return re.compile(rb'"(?:' + names + rb')"\s*:\s*"' + _STRING_BODY, re.DOTALL)


@lru_cache(maxsize=64)
def _object_value(key: bytes) -> re.Pattern[bytes]:
    return re.compile(re.escape(key) + rb"\s*:\s*\{")


def string_value_bytes(data: bytes, keys: tuple[bytes, ...]) -> int:
    """Approximate UTF-8 size of the decoded string values of ``keys`` (each ``b'"name"'``).

    Escapes count as the UTF-8 bytes they stand for (``\\n`` one, ``\\u4e2d`` three); non-string
    values (``null``, objects, arrays) count nothing.
    """
    return text_counter(keys)(data)


@lru_cache(maxsize=64)
def text_counter(keys: tuple[bytes, ...]) -> Callable[[bytes], int]:
    """`string_value_bytes` for fixed ``keys``, with the pattern bound once.

    Parsers take one per response and call it once per stream event; the pattern lookup (a
    cached call hashing the key tuple) was 40 % of the count (2.8 -> 1.7 µs a typical chat
    chunk, measured). Cached itself, so a response (and `string_value_bytes`) builds no closure.
    """
    finditer = _string_values(keys).finditer

    def count(data: bytes) -> int:
        total = 0
        for match in finditer(data):
            raw = match.group(1)
            total += _decoded_size(raw) if b"\\" in raw else len(raw)
        return total

    return count


def _decoded_size(raw: bytes) -> int:
    """UTF-8 size of a JSON string body with escapes (the rare, slower path)."""
    size = len(raw)
    for escape in _ESCAPE.finditer(raw):
        code = escape.group(1)
        if code is None:
            size -= 1  # \n, \", \\ ...: two bytes for one
        else:
            point = int(code, 16)
            # a surrogate half is half of a 4-byte character
            utf8 = 1 if point < 0x80 else 2 if point < 0x800 or 0xD800 <= point < 0xE000 else 3
            size -= 6 - utf8
    return size


def has_object_value(data: bytes, key: bytes) -> bool:
    """Whether some ``key`` (``b'"usage"'``) in ``data`` has an object value, not ``null``.

    OpenAI and Groq send ``"usage": null`` on every chunk but the last; this keeps the parse for
    the one chunk that matters.
    """
    return _object_value(key).search(data) is not None


def first_string_value(data: bytes, key: bytes) -> str | None:
    """The first non-empty string value of ``key`` (``b'"model"'``), decoded, or ``None``."""
    for match in _string_values((key,)).finditer(data):
        raw = match.group(1)
        if not raw:
            continue
        if b"\\" not in raw:
            return raw.decode("utf-8", "replace")
        try:
            value = orjson.loads(b'"' + raw + b'"')
        except orjson.JSONDecodeError:
            return None
        return value if isinstance(value, str) else None
    return None
