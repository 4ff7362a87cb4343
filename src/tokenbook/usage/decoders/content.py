"""Content-Encoding decoders: compressed body chunks in, decompressed pieces out.

Each decoder is fed the body chunk by chunk (`decode`) and told when the body ends (`flush`).
No decoder ever re-reads earlier input, and none keeps more than a bounded amount of memory:

* **Output per call is chopped.** Pieces are at most `PIECE_BYTES` (64 KiB); every library here
  can be asked to stop after a given amount of output, so a 40-byte brotli bomb does not turn
  into 20 MB inside one C call.
* **Output in total is capped.** More than ``max_output_bytes`` of decompressed output (per
  coding, default 64 MiB) raises `DecodeError` the moment it is exceeded: the decompression-bomb
  guard. A single `decode` call holds at most the pieces it returns, so memory is bounded by the
  cap, and in practice by the compression ratio times the chunk size.
* **A truncated stream is an error.** `flush` raises `DecodeError` when the compressed stream
  stopped before its end marker (gzip member trailer, deflate final block, brotli last
  meta-block, zstd last block and checksum). An empty body is not truncated: a 204 or a HEAD
  reply may carry ``Content-Encoding`` with no bytes at all.

How each library is kept bounded (checked against the installed versions):

========  ==================================================================================
gzip      ``zlib.decompressobj(wbits=31).decompress(data, max_length)`` plus ``unconsumed_tail``;
deflate   after ``eof``, ``unused_data`` starts the next gzip member (RFC 1952 §2.2). ``deflate``
          is meant to be zlib-wrapped (RFC 9110 §8.4.1.2) but some servers send raw deflate; the
          first two bytes decide (a valid zlib header: CM=8, CINFO<=7, FCHECK), as browsers do.
br        ``brotli.Decompressor.process(data, output_buffer_limit=N)`` then ``process(b"")`` until
          it has nothing more (brotli >= 1.2; ``can_accept_more_data`` tells whether new input
          may be given). With an older brotli there is no output limit: each call's output is
          still counted against the cap, but one call can allocate a whole bomb.
zstd      ``zstandard`` has no ``max_length``: its ``decompressobj`` returns everything one input
          produces, and its ``stream_writer`` does not tell where a frame ends. So
          `_ZstdFrameWalker` follows the frame layout (RFC 8878 §3.1: header, 3-byte block
          headers, checksum) without decompressing, and the input is fed to ``decompressobj``
          cut at block ends, at most `_ZSTD_FEED_BOUND` bytes of possible output at a time. The
          same walk tells at `flush` whether the last frame was complete. The window is capped
          at 8 MiB, the limit RFC 9659 §3 sets for the ``zstd`` content coding.
========  ==================================================================================

Trailing bytes after the compressed stream: after at least one complete gzip member, bytes that
do not start another member are ignored (browsers, curl and urllib3 do the same; some servers
pad). For deflate, br and zstd, data after the end is malformed and raises.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any, Protocol

import brotli
import zstandard

from tokenbook.usage.decoders.errors import DecodeError

__all__ = [
    "DEFAULT_MAX_OUTPUT_BYTES",
    "MAX_CODINGS",
    "PIECE_BYTES",
    "BrotliDecoder",
    "ContentDecoder",
    "DeflateDecoder",
    "GzipDecoder",
    "IdentityDecoder",
    "MultiDecoder",
    "ZstdDecoder",
    "make_content_decoder",
]

#: Largest decompressed piece a decoder returns.
PIECE_BYTES = 64 * 1024
#: Default cap on the decompressed size of one body (per coding in a chain).
DEFAULT_MAX_OUTPUT_BYTES = 64 * 1024 * 1024
#: Most codings accepted in one Content-Encoding header; each costs a decompressor state, and
#: real servers apply one (two at most).
MAX_CODINGS = 4

_GZIP_MAGIC = b"\x1f\x8b"


class ContentDecoder(Protocol):
    """One Content-Encoding, decoded incrementally."""

    def decode(self, data: bytes) -> list[bytes]:
        """Decompressed pieces for this chunk (possibly none), each at most `PIECE_BYTES`."""
        ...

    def flush(self) -> list[bytes]:
        """The body ended: remaining pieces; `DecodeError` if the stream was cut short."""
        ...


class _Budget:
    """Counts decompressed bytes and raises once the cap is passed."""

    __slots__ = ("_left", "_limit", "coding")

    def __init__(self, limit: int, coding: str) -> None:
        if limit <= 0:
            raise ValueError("max_output_bytes must be positive")
        self._limit = limit
        self._left = limit
        self.coding = coding

    def spend(self, n: int) -> None:
        self._left -= n
        if self._left < 0:
            raise DecodeError(
                f"{self.coding}: decompressed body exceeds the limit of {self._limit} bytes"
            )


def _chop(data: bytes, out: list[bytes]) -> None:
    """Append `data` to `out` in pieces of at most `PIECE_BYTES`."""
    if len(data) <= PIECE_BYTES:
        if data:
            out.append(data)
        return
    view = memoryview(data)
    for start in range(0, len(data), PIECE_BYTES):
        out.append(bytes(view[start : start + PIECE_BYTES]))


class IdentityDecoder:
    """No coding: chunks pass through unchanged (no copy, no cap: nothing is amplified)."""

    def decode(self, data: bytes) -> list[bytes]:
        return [data] if data else []

    def flush(self) -> list[bytes]:
        return []


def _inflate(obj: Any, data: bytes, budget: _Budget, out: list[bytes]) -> None:
    """Run `data` through a zlib decompressobj in bounded steps, until it needs more input."""
    while True:
        try:
            piece: bytes = obj.decompress(data, PIECE_BYTES)
        except zlib.error as exc:
            raise DecodeError(f"{budget.coding}: invalid compressed data") from exc
        if piece:
            budget.spend(len(piece))
            out.append(piece)
        if obj.eof:
            return
        data = obj.unconsumed_tail
        # A full piece with no input left may still leave output inside zlib (a long match
        # copy that was cut off): ask again with empty input until it returns less.
        if not data and len(piece) < PIECE_BYTES:
            return


class GzipDecoder:
    """``gzip`` / ``x-gzip``: one or more gzip members (RFC 1952), CRC32 and size checked."""

    def __init__(self, *, max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES) -> None:
        self._budget = _Budget(max_output_bytes, "gzip")
        self._obj: Any = None  # the member being decoded; None between members
        self._members = 0  # complete members so far
        self._head = b""  # the first byte of a possible next member, awaiting the second
        self._ignoring = False  # trailing garbage seen: the rest of the body is ignored

    def decode(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        while data and not self._ignoring:
            if self._obj is None:
                data = self._head + data
                if len(data) < 2:
                    self._head = data
                    break
                self._head = b""
                if data[:2] != _GZIP_MAGIC:
                    if self._members == 0:
                        raise DecodeError("gzip: not a gzip stream (bad magic bytes)")
                    self._ignoring = True
                    break
                self._obj = zlib.decompressobj(16 + zlib.MAX_WBITS)
            _inflate(self._obj, data, self._budget, out)
            if self._obj.eof:
                data = self._obj.unused_data
                self._obj = None
                self._members += 1
            else:
                data = b""
        return out

    def flush(self) -> list[bytes]:
        if self._obj is not None:
            raise DecodeError("gzip: stream ended inside a gzip member (truncated body)")
        if self._head and self._members == 0:
            raise DecodeError("gzip: stream ended inside the gzip header (truncated body)")
        return []


def _is_zlib_header(b0: int, b1: int) -> bool:
    """RFC 1950 §2.2: CM=8 (deflate), CINFO<=7 (window <= 32K), and FCHECK makes it % 31."""
    return (b0 & 0x0F) == 8 and (b0 >> 4) <= 7 and (b0 * 256 + b1) % 31 == 0


class DeflateDecoder:
    """``deflate``: zlib-wrapped (RFC 1950) or, failing a zlib header, raw deflate (RFC 1951)."""

    def __init__(self, *, max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES) -> None:
        self._budget = _Budget(max_output_bytes, "deflate")
        self._obj: Any = None  # created once the first two bytes are known
        self._head = b""
        self._raw = False

    @property
    def raw(self) -> bool:
        """True when the body turned out to be raw deflate without the zlib wrapper."""
        return self._raw

    def decode(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        if not data:
            return out
        if self._obj is None:
            data = self._head + data
            if len(data) < 2:
                self._head = data
                return out
            self._head = b""
            self._raw = not _is_zlib_header(data[0], data[1])
            self._obj = zlib.decompressobj(-zlib.MAX_WBITS if self._raw else zlib.MAX_WBITS)
        if self._obj.eof:
            raise DecodeError("deflate: data after the end of the compressed stream")
        _inflate(self._obj, data, self._budget, out)
        if self._obj.eof and self._obj.unused_data:
            raise DecodeError("deflate: data after the end of the compressed stream")
        return out

    def flush(self) -> list[bytes]:
        if self._head or (self._obj is not None and not self._obj.eof):
            raise DecodeError("deflate: stream ended before its final block (truncated body)")
        return []


class BrotliDecoder:
    """``br`` (RFC 7932), with brotli's ``output_buffer_limit`` where the library has it."""

    def __init__(self, *, max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES) -> None:
        self._budget = _Budget(max_output_bytes, "br")
        self._obj: Any = brotli.Decompressor()
        self._bounded = hasattr(self._obj, "can_accept_more_data")
        self._fed = False

    def decode(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        if not data:
            return out
        self._fed = True
        try:
            if self._obj.is_finished():
                raise DecodeError("br: data after the end of the compressed stream")
            if not self._bounded:
                piece = self._obj.process(data)
                self._budget.spend(len(piece))
                _chop(piece, out)
                return out
            piece = self._obj.process(data, output_buffer_limit=PIECE_BYTES)
            while piece:
                self._budget.spend(len(piece))
                _chop(piece, out)
                # Until the decoder has handed out everything this input yields it must be
                # called with empty input; an empty answer while it still cannot take input
                # would loop forever, so that is treated as a broken stream.
                piece = self._obj.process(b"", output_buffer_limit=PIECE_BYTES)
            if not self._obj.can_accept_more_data():
                raise DecodeError("br: decoder stalled")
        except brotli.error as exc:
            raise DecodeError("br: invalid compressed data") from exc
        return out

    def flush(self) -> list[bytes]:
        if self._fed and not self._obj.is_finished():
            raise DecodeError("br: stream ended before its last meta-block (truncated body)")
        return []


# -- zstd ------------------------------------------------------------------------------------

_ZSTD_MAGIC = 0xFD2FB528
_ZSTD_SKIPPABLE_MIN = 0x184D2A50
_ZSTD_SKIPPABLE_MAX = 0x184D2A5F
_ZSTD_BLOCK_MAX = 128 * 1024  # Block_Maximum_Size upper bound (RFC 8878 §3.1.1.2)
_ZSTD_DID_SIZES = (0, 1, 2, 4)
_ZSTD_FCS_SIZES = (0, 2, 4, 8)  # for FCS flag 0 the size is 1 when Single_Segment is set
#: Window cap for the zstd content coding (RFC 9659 §3).
ZSTD_MAX_WINDOW_BYTES = 8 * 1024 * 1024
#: Feed the decompressor at most this much *possible* output at once (plus one block).
_ZSTD_FEED_BOUND = 256 * 1024

# Walker states. "Field" states collect a few bytes and parse them; "skip" states step over
# a known number of bytes without looking at them.
_MAGIC, _SKIP_SIZE, _FHD, _BLOCK_HEADER = 0, 1, 2, 3  # field states
_SKIP_DATA, _FRAME_HEADER, _BLOCK_BODY, _CHECKSUM = 4, 5, 6, 7  # skip states
_FIELD_SIZES = {_MAGIC: 4, _SKIP_SIZE: 4, _FHD: 1, _BLOCK_HEADER: 3}


class _ZstdFrameWalker:
    """Follows zstd frame structure (RFC 8878 §3.1) without decompressing anything.

    It reports where each block ends and how much output that block can at most produce, and
    whether the input so far ends exactly between frames. The decompressor still checks
    everything else (entropy tables, checksums); the walker only has to agree on lengths.
    """

    __slots__ = ("_bound", "_checksum", "_field", "_last", "_left", "_offset", "_state")

    def __init__(self) -> None:
        self._state = _MAGIC
        self._field = bytearray()  # a field state's bytes collected so far
        self._left = 0  # bytes still to step over in a skip state
        self._checksum = False  # the current frame ends with a 4-byte content checksum
        self._last = False  # the current block is the frame's last
        self._bound = 0  # most output the current block can produce
        self._offset = 0  # stream offset of the current chunk, for error messages

    @property
    def between_frames(self) -> bool:
        return self._state == _MAGIC and not self._field

    def walk(self, data: bytes) -> list[tuple[int, int]]:
        """(end offset in `data`, output bound) for each block that completes in `data`."""
        ends: list[tuple[int, int]] = []
        pos, size = 0, len(data)
        while pos < size:
            state = self._state
            if state >= _SKIP_DATA:
                step = min(self._left, size - pos)
                pos += step
                self._left -= step
                if self._left:
                    break
                if state == _BLOCK_BODY:
                    ends.append((pos, self._bound))
                    self._end_block()
                else:
                    self._state = _BLOCK_HEADER if state == _FRAME_HEADER else _MAGIC
                continue
            want = _FIELD_SIZES[state] - len(self._field)
            self._field += data[pos : pos + want]
            pos += min(want, size - pos)
            if len(self._field) < _FIELD_SIZES[state]:
                break
            field = bytes(self._field)
            self._field.clear()
            if state == _MAGIC:
                magic = int.from_bytes(field, "little")
                if magic == _ZSTD_MAGIC:
                    self._state = _FHD
                elif _ZSTD_SKIPPABLE_MIN <= magic <= _ZSTD_SKIPPABLE_MAX:
                    self._state = _SKIP_SIZE
                else:
                    raise DecodeError(
                        f"zstd: no frame magic number at byte {self._offset + pos - 4}"
                    )
            elif state == _SKIP_SIZE:
                self._skip(_SKIP_DATA, int.from_bytes(field, "little"))
            elif state == _FHD:
                fhd = field[0]
                if fhd & 0x08:
                    raise DecodeError("zstd: reserved bit set in frame header")
                single_segment = bool(fhd & 0x20)
                fcs_size = _ZSTD_FCS_SIZES[fhd >> 6] or (1 if single_segment else 0)
                self._checksum = bool(fhd & 0x04)
                # Window descriptor (absent for single-segment frames), dictionary id, size.
                self._skip(
                    _FRAME_HEADER, (not single_segment) + _ZSTD_DID_SIZES[fhd & 3] + fcs_size
                )
            else:  # _BLOCK_HEADER
                header = int.from_bytes(field, "little")
                self._last = bool(header & 1)
                block_type = (header >> 1) & 3
                block_size = header >> 3
                if block_type == 3 or block_size > _ZSTD_BLOCK_MAX:
                    raise DecodeError("zstd: invalid block header")
                # Raw and RLE blocks state their output size; a compressed block can produce
                # up to Block_Maximum_Size. An RLE block's body is the one repeated byte.
                self._bound = _ZSTD_BLOCK_MAX if block_type == 2 else block_size
                body = 1 if block_type == 1 else block_size
                if body:
                    self._state, self._left = _BLOCK_BODY, body
                else:  # an empty raw block ends with its header
                    ends.append((pos, 0))
                    self._end_block()
        self._offset += size
        return ends

    def _skip(self, state: int, length: int) -> None:
        """Step over `length` bytes in `state`; nothing to step over moves straight on."""
        if length:
            self._state, self._left = state, length
        else:
            self._state = _BLOCK_HEADER if state == _FRAME_HEADER else _MAGIC

    def _end_block(self) -> None:
        if self._last:
            self._skip(_CHECKSUM, 4 if self._checksum else 0)
        else:
            self._state = _BLOCK_HEADER


class ZstdDecoder:
    """``zstd`` (RFC 8878 / RFC 9659): one or more frames, skippable frames, checksums."""

    def __init__(self, *, max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES) -> None:
        self._budget = _Budget(max_output_bytes, "zstd")
        dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW_BYTES)
        self._obj: Any = dctx.decompressobj(read_across_frames=True)
        self._walker = _ZstdFrameWalker()

    def decode(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        if not data:
            return out
        view = memoryview(data)
        start = 0
        pending = 0  # output bound of the blocks between `start` and the current cut
        for end, bound in self._walker.walk(data):
            pending += bound
            if pending >= _ZSTD_FEED_BOUND:
                self._feed(view[start:end], out)
                start, pending = end, 0
        if start < len(data):
            # The rest holds at most `pending` plus one unfinished block's worth of output.
            self._feed(view[start:], out)
        return out

    def _feed(self, data: memoryview, out: list[bytes]) -> None:
        try:
            piece: bytes = self._obj.decompress(data)
        except zstandard.ZstdError as exc:
            raise DecodeError("zstd: invalid compressed data") from exc
        self._budget.spend(len(piece))
        _chop(piece, out)

    def flush(self) -> list[bytes]:
        if not self._walker.between_frames:
            raise DecodeError("zstd: stream ended inside a frame (truncated body)")
        return []


# -- chains and the factory -------------------------------------------------------------------


class MultiDecoder:
    """Several codings: `stages` in decoding order (the header's list reversed)."""

    def __init__(self, stages: Sequence[ContentDecoder]) -> None:
        self._stages = tuple(stages)

    def decode(self, data: bytes) -> list[bytes]:
        pieces = [data]
        for stage in self._stages:
            pieces = [out for piece in pieces for out in stage.decode(piece)]
        return pieces

    def flush(self) -> list[bytes]:
        pieces: list[bytes] = []
        for stage in self._stages:
            decoded = [out for piece in pieces for out in stage.decode(piece)]
            decoded.extend(stage.flush())
            pieces = decoded
        return pieces


_CODINGS: dict[str, type[GzipDecoder | DeflateDecoder | BrotliDecoder | ZstdDecoder]] = {
    "gzip": GzipDecoder,
    "x-gzip": GzipDecoder,
    "deflate": DeflateDecoder,
    "br": BrotliDecoder,
    "zstd": ZstdDecoder,
}


def make_content_decoder(
    encoding: str, *, max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
) -> ContentDecoder:
    """A decoder for a ``Content-Encoding`` header value.

    ``""`` and ``identity`` pass bytes through. A list (``"gzip, br"``) names the codings in
    the order they were applied, so they are undone from the last to the first. Names are
    case-insensitive. An unknown coding, or more than `MAX_CODINGS`, raises `DecodeError`
    here, before any body byte is seen. `max_output_bytes` caps each coding's output.
    """
    names = [name.strip().lower() for name in encoding.split(",")]
    names = [name for name in names if name and name != "identity"]
    if len(names) > MAX_CODINGS:
        raise DecodeError(f"content encoding: more than {MAX_CODINGS} codings")
    stages: list[ContentDecoder] = []
    for name in reversed(names):
        cls = _CODINGS.get(name)
        if cls is None:
            raise DecodeError(f"content encoding: unsupported coding {name[:32]!r}")
        stages.append(cls(max_output_bytes=max_output_bytes))
    if not stages:
        return IdentityDecoder()
    if len(stages) == 1:
        return stages[0]
    return MultiDecoder(stages)
