"""Protobuf wire encoding of the few answer parts that change on every request.

Why: the gate's answer to request headers is the same for every request of one key except a
few dynamic-metadata strings (request id, admission id, admission time, path). Building it as a
message (parse a cached template, set the fields, serialize again) cost 12-16 µs a request;
joining cached bytes with those strings encoded here costs ~3 µs (`make bench-processors`).

Protobuf's wire format makes this safe: a message is the concatenation of its fields in any
order, and two serialized messages concatenated parse as their merge. What does *not* merge is
a map entry: a second ``"tokenbook"`` entry in ``dynamic_metadata`` would replace the first, so
the namespace's whole ``Struct`` is encoded here in one piece, from cached entries (the
per-key part) and fresh ones (the per-request part).

Field numbers come from the generated descriptors, not from literals, and the tests compare
every encoding with the one protobuf itself produces.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2

_LEN = 2  # wire type of strings, bytes and embedded messages


def varint(n: int) -> bytes:
    """``n`` (≥ 0) as a base-128 varint."""
    if n < 0x80:
        return bytes((n,))
    if n < 0x4000:  # lengths up to 16 KiB: the common multi-byte case, without the loop
        return bytes((n & 0x7F | 0x80, n >> 7))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _tag(descriptor: object, name: str) -> bytes:
    number = descriptor.fields_by_name[name].number  # type: ignore[attr-defined]
    return varint(number << 3 | _LEN)


# Struct { map<string, Value> fields = 1 }; a map entry is { key = 1; value = 2 }.
_STRUCT_FIELDS = _tag(struct_pb2.Struct.DESCRIPTOR, "fields")
_ENTRY_KEY = varint(1 << 3 | _LEN)
_ENTRY_VALUE = varint(2 << 3 | _LEN)
_VALUE_STRING = _tag(struct_pb2.Value.DESCRIPTOR, "string_value")
_VALUE_STRUCT = _tag(struct_pb2.Value.DESCRIPTOR, "struct_value")
_DYNAMIC_METADATA = _tag(pb.ProcessingResponse.DESCRIPTOR, "dynamic_metadata")


_ONE_BYTE = [bytes((n,)) for n in range(0x80)]
_NAME_PREFIXES: dict[str, bytes] = {}


def _name_prefix(name: str) -> bytes:
    # The entry up to its value's length: the same for every value of one name.
    prefix = _NAME_PREFIXES.get(name)
    if prefix is None:
        key = name.encode("utf-8")
        prefix = _ENTRY_KEY + varint(len(key)) + key + _ENTRY_VALUE
        if len(_NAME_PREFIXES) < 1024:
            _NAME_PREFIXES[name] = prefix
    return prefix


def string_entry(name: str, value: str) -> bytes:
    """One ``Struct.fields`` entry, ``name: string_value``."""
    data = value.encode("utf-8")
    n = len(data)
    prefix = _name_prefix(name)
    inner_n = 1 + n + (1 if n < 0x80 else len(varint(n)))
    entry_n = len(prefix) + inner_n + (1 if inner_n < 0x80 else len(varint(inner_n)))
    if entry_n < 0x80:  # the usual case: every length is one byte
        one = _ONE_BYTE
        return b"".join(
            (_STRUCT_FIELDS, one[entry_n], prefix, one[inner_n], _VALUE_STRING, one[n], data)
        )
    return b"".join(
        (
            _STRUCT_FIELDS,
            varint(entry_n),
            prefix,
            varint(inner_n),
            _VALUE_STRING,
            varint(n),
            data,
        )
    )


@lru_cache(maxsize=4096)
def string_entries(pairs: tuple[tuple[str, str], ...]) -> bytes:
    """`string_entry` for each pair, joined: cached, for the values shared by many requests."""
    return b"".join(string_entry(k, v) for k, v in pairs)


def dynamic_metadata(namespace: str, entries: Iterable[bytes]) -> bytes:
    """``ProcessingResponse.dynamic_metadata`` holding one namespace, a ``Struct`` made of
    ``entries`` (each from `string_entry`), as a field to append to a serialized answer."""
    struct = b"".join(entries)
    value_head = _VALUE_STRUCT + varint(len(struct))  # Value { struct_value = ... }
    value_n = len(value_head) + len(struct)
    value_len = varint(value_n)
    prefix = _name_prefix(namespace)
    entry_n = len(prefix) + len(value_len) + value_n  # the map entry namespace -> Value
    entry_len = varint(entry_n)
    total = len(_STRUCT_FIELDS) + len(entry_len) + entry_n
    return b"".join(
        (
            _DYNAMIC_METADATA,
            varint(total),
            _STRUCT_FIELDS,
            entry_len,
            prefix,
            value_len,
            value_head,
            struct,
        )
    )


class Encoded:
    """An answer already in wire form. Transports write ``SerializeToString()``, as for a
    message; `message()` parses it (for the grpcio transport's serializer, and for tests)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def SerializeToString(self) -> bytes:  # protobuf's method name
        return self.data

    def message(self) -> pb.ProcessingResponse:
        return pb.ProcessingResponse.FromString(self.data)

    def __repr__(self) -> str:
        return f"Encoded({self.message()!r})"
