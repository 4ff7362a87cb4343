"""HPACK for the server side: decode with `hpack` (python-hyper), encode without a dynamic table.

Decoding. We advertise ``SETTINGS_HEADER_TABLE_SIZE = 0``: once the peer has acknowledged it, its
encoder may not use the dynamic table, so a header block decodes to the same list whatever came
before it. From then on decoded blocks are cached by their bytes: Envoy sends the same request
headers on every ext_proc stream of a filter, so the common case costs one dict lookup instead
of ~25 µs of pure-Python Huffman decoding. Before the acknowledgement (the first blocks of a
connection may use the default 4 KiB table) every block goes through the stateful decoder.

Validation of request headers (RFC 9113 §8.2, §8.3) is part of the cached result: it depends
on the block's bytes only.

Encoding. Our header lists are a handful of constants (``:status: 200``, ``content-type``,
``grpc-status``, …): literal fields "without indexing", no Huffman, no dynamic table, cached per
list. The peer may shrink our table limit at any time (SETTINGS_HEADER_TABLE_SIZE); since we
never index, a table-size update to 0 at the start of the next block keeps us compliant
(RFC 7541 §4.2), see `ServerConnection`.
"""

from __future__ import annotations

from collections.abc import Sequence

import hpack

from tokenbook.extproc.h2.frames import ErrorCode, H2ConnectionError

Header = tuple[bytes, bytes]
HeaderList = tuple[Header, ...]

_REQUEST_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path"))
# RFC 9113 §8.2.2: connection-specific fields are malformed in HTTP/2.
_CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
_UPPER = bytes(range(65, 91))
_CACHE_ENTRIES = 512
# Our encoder's static-table shortcuts (RFC 7541 Appendix A).
_STATIC_FULL = {(b":status", b"200"): 0x88}
_STATIC_NAME = {b"content-type": 31, b":status": 8}


def header_list_size(headers: Sequence[Header]) -> int:
    """The size that SETTINGS_MAX_HEADER_LIST_SIZE limits (RFC 9113 §6.5.2)."""
    return sum(len(k) + len(v) + 32 for k, v in headers)


def request_malformed(headers: Sequence[Header]) -> str | None:
    """Why a request header list is malformed (RFC 9113 §8.2, §8.3.1), or None."""
    seen_regular = False
    pseudo: set[bytes] = set()
    for name, value in headers:
        if not name:
            return "empty header name"
        if name.translate(None, _UPPER) != name:
            return f"upper-case header name {name!r}"
        if b"\0" in value or b"\r" in value or b"\n" in value:
            return f"forbidden character in the value of {name!r}"
        if name[0] == 0x3A:  # ":"
            if seen_regular:
                return f"pseudo-header {name!r} after a regular header"
            if name not in _REQUEST_PSEUDO:
                return f"unknown pseudo-header {name!r}"
            if name in pseudo:
                return f"duplicate pseudo-header {name!r}"
            pseudo.add(name)
            if name == b":path" and not value:
                return "empty :path"
            continue
        seen_regular = True
        if name in _CONNECTION_SPECIFIC:
            return f"connection-specific header {name!r}"
        if name == b"te" and value != b"trailers":
            return "te header other than 'trailers'"
    missing = {b":method", b":scheme", b":path"} - pseudo
    if missing:
        return f"missing {b', '.join(sorted(missing)).decode()}"
    return None


def trailers_malformed(headers: Sequence[Header]) -> str | None:
    for name, value in headers:
        if not name or name[0] == 0x3A:
            return "pseudo-header in trailers"
        if name.translate(None, _UPPER) != name:
            return f"upper-case header name {name!r}"
        if b"\0" in value or b"\r" in value or b"\n" in value:
            return f"forbidden character in the value of {name!r}"
    return None


class HeaderDecoder:
    """Decode header blocks of one connection, in the order they arrived."""

    def __init__(self, *, max_list_size: int, table_size: int = 0) -> None:
        # A block whose decoded size exceeds `hard_limit` aborts mid-block and leaves the HPACK
        # state unusable: that is a connection error. Between `max_list_size` (advertised) and
        # `hard_limit` the block decodes fully and only its stream is refused.
        self.hard_limit = max_list_size * 4
        self._decoder = hpack.Decoder(max_header_list_size=self.hard_limit)
        self._table_size = table_size  # what we advertise; effective once acknowledged
        self._stateless = False
        self._cache: dict[bytes, tuple[HeaderList, int, str | None]] = {}

    def settings_acknowledged(self) -> None:
        """The peer acknowledged our SETTINGS: its encoder must now fit our table size."""
        self._decoder.max_allowed_table_size = self._table_size
        self._stateless = self._table_size == 0

    def decode_request(self, block: bytes) -> tuple[HeaderList, int, str | None]:
        """(headers, header list size, why malformed or None)."""
        if self._stateless:
            hit = self._cache.get(block)
            if hit is not None:
                return hit
        headers = self._decode(block)
        result = (headers, header_list_size(headers), request_malformed(headers))
        if self._stateless and self._decoder.header_table_size == 0:
            if len(self._cache) >= _CACHE_ENTRIES:
                self._cache.clear()
            self._cache[block] = result
        return result

    def decode_trailers(self, block: bytes) -> tuple[HeaderList, int, str | None]:
        headers = self._decode(block)
        return headers, header_list_size(headers), trailers_malformed(headers)

    def decode_and_discard(self, block: bytes) -> None:
        """A block for a stream we ignore: decoded only to keep the HPACK state in step."""
        if not self._stateless:
            self._decode(block)

    def _decode(self, block: bytes) -> HeaderList:
        try:
            decoded = self._decoder.decode(block, raw=True)
        except hpack.OversizedHeaderListError as exc:
            raise H2ConnectionError(ErrorCode.ENHANCE_YOUR_CALM, str(exc)) from None
        except hpack.HPACKError as exc:
            raise H2ConnectionError(ErrorCode.COMPRESSION_ERROR, str(exc)) from None
        except (IndexError, ValueError) as exc:  # defensive: a decoder bug must not escape
            raise H2ConnectionError(
                ErrorCode.COMPRESSION_ERROR, f"bad header block: {exc}"
            ) from None
        return tuple((bytes(k), bytes(v)) for k, v in decoded)


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """HPACK integer (RFC 7541 §5.1) with `first` holding the bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(data: bytes) -> bytes:
    return _integer(len(data), 7, 0) + data  # H bit 0: no Huffman


class HeaderEncoder:
    """Stateless encoder (no dynamic table), with a cache for repeated header lists."""

    def __init__(self) -> None:
        self._cache: dict[HeaderList, bytes] = {}

    def encode(self, headers: HeaderList) -> bytes:
        block = self._cache.get(headers)
        if block is not None:
            return block
        block = encode_headers(headers)
        if len(self._cache) < _CACHE_ENTRIES:
            self._cache[headers] = block
        return block


def encode_headers(headers: Sequence[Header]) -> bytes:
    parts: list[bytes] = []
    for name, value in headers:
        full = _STATIC_FULL.get((name, value))
        if full is not None:
            parts.append(bytes((full,)))
            continue
        index = _STATIC_NAME.get(name)
        if index is not None:
            parts.append(_integer(index, 4, 0x00) + _literal(value))
        else:
            parts.append(b"\x00" + _literal(name) + _literal(value))
    return b"".join(parts)
