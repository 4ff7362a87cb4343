"""Content-Encoding decoders: round trips at any chunking, bombs, truncation, bad input."""

from __future__ import annotations

import gzip
import itertools
import os
import tracemalloc
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import brotli
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenbook.usage.decoders import DecodeError, make_content_decoder
from tokenbook.usage.decoders.content import PIECE_BYTES, DeflateDecoder

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
# A realistic mixed payload: recorded bodies (text), random bytes (incompressible), zeros.
SAMPLE = (
    b"".join(p.read_bytes() for p in sorted(CORPUS.rglob("*.sse"))[:12])
    + os.urandom(50_000)
    + bytes(300_000)
)


def raw_deflate(data: bytes) -> bytes:
    obj = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return obj.compress(data) + obj.flush()


def br(data: bytes) -> bytes:
    return bytes(brotli.compress(data, quality=5))


def zstd(data: bytes, *, write_checksum: bool = False, write_content_size: bool = True) -> bytes:
    compressor = zstandard.ZstdCompressor(
        level=3, write_checksum=write_checksum, write_content_size=write_content_size
    )
    return bytes(compressor.compress(data))


ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": br,
    "zstd": zstd,
    # Applied left to right, so the body is br(gzip(data)).
    "gzip, br": lambda d: br(gzip.compress(d)),
    "zstd, deflate": lambda d: zlib.compress(zstd(d)),
}


def decode(encoding: str, chunks: Iterable[bytes], **kwargs: int) -> bytes:
    decoder = make_content_decoder(encoding, **kwargs)
    pieces: list[bytes] = []
    for chunk in chunks:
        pieces.extend(decoder.decode(chunk))
    pieces.extend(decoder.flush())
    assert all(0 < len(p) <= PIECE_BYTES for p in pieces)
    return b"".join(pieces)


def chunked(data: bytes, size: int) -> Iterator[bytes]:
    return (data[i : i + size] for i in range(0, len(data), size))


@pytest.mark.parametrize("encoding", ENCODERS)
@pytest.mark.parametrize("size", [1, 13, 4096, 1 << 20])
def test_round_trip(encoding: str, size: int) -> None:
    body = ENCODERS[encoding](SAMPLE)
    if size == 1:
        body_plain = SAMPLE[:3000]
        body = ENCODERS[encoding](body_plain)
        assert decode(encoding, chunked(body, 1)) == body_plain
    else:
        assert decode(encoding, chunked(body, size)) == SAMPLE


@settings(max_examples=40, deadline=None, database=None)
@given(
    encoding=st.sampled_from(list(ENCODERS)),
    plain=st.binary(max_size=2000) | st.sampled_from([SAMPLE[:20_000], bytes(100_000)]),
    data=st.data(),
)
def test_round_trip_random_chunks(encoding: str, plain: bytes, data: st.DataObject) -> None:
    body = ENCODERS[encoding](plain)
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(body)), max_size=30))))
    points = [0, *cuts, len(body)]
    chunks = [body[a:b] for a, b in itertools.pairwise(points)]
    assert decode(encoding, chunks) == plain


@pytest.mark.parametrize("encoding", ["", "identity", " Identity ", "identity, identity"])
def test_identity_passes_through(encoding: str) -> None:
    decoder = make_content_decoder(encoding)
    chunk = b"x" * (PIECE_BYTES * 3)
    assert decoder.decode(chunk) == [chunk]
    assert decoder.decode(b"") == []
    assert decoder.flush() == []


def test_names_are_case_insensitive() -> None:
    assert decode("GZIP", [gzip.compress(b"abc")]) == b"abc"
    assert decode(" Br ,GZip ", [gzip.compress(brotli.compress(b"abc"))]) == b"abc"


def test_gzip_multi_member() -> None:
    body = gzip.compress(b"first ") + gzip.compress(b"second ") + gzip.compress(b"")
    body += gzip.compress(b"third")
    assert decode("gzip", [body]) == b"first second third"
    assert decode("gzip", chunked(body, 1)) == b"first second third"


def test_gzip_trailing_garbage_after_a_member_is_ignored() -> None:
    body = gzip.compress(b"payload") + b"\x00\x00garbage"
    assert decode("gzip", chunked(body, 3)) == b"payload"
    # But a body that is not gzip at all is an error, not "garbage".
    with pytest.raises(DecodeError, match="gzip"):
        decode("gzip", [b"plain text"])


def test_deflate_zlib_and_raw() -> None:
    for body, raw in ((zlib.compress(SAMPLE), False), (raw_deflate(SAMPLE), True)):
        decoder = DeflateDecoder()
        out = [p for c in chunked(body, 1000) for p in decoder.decode(c)]
        out += decoder.flush()
        assert b"".join(out) == SAMPLE
        assert decoder.raw is raw
    # The zlib wrapper's Adler-32 is checked.
    broken = bytearray(zlib.compress(b"hello world"))
    broken[-1] ^= 1
    with pytest.raises(DecodeError):
        decode("deflate", [bytes(broken)])


@pytest.mark.parametrize("size", [PIECE_BYTES + 1, PIECE_BYTES + 3, PIECE_BYTES + 7])
def test_deflate_output_left_inside_zlib_is_drained(size: int) -> None:
    # Raw deflate of zeros ends with a long match: the input runs out exactly when a full
    # piece has been returned, and the rest of the match is still inside zlib.
    assert decode("deflate", [raw_deflate(bytes(size))]) == bytes(size)


def test_zstd_frames_skippable_and_checksum() -> None:
    skippable = b"\x5a\x2a\x4d\x18" + (3).to_bytes(4, "little") + b"abc"
    body = (
        skippable
        + zstd(b"one ", write_checksum=True)
        + zstd(b"", write_content_size=False)
        + skippable
        + zstd(b"two", write_content_size=False, write_checksum=False)
    )
    assert decode("zstd", [body]) == b"one two"
    assert decode("zstd", chunked(body, 1)) == b"one two"
    # A streamed frame (no content size, many blocks) decodes too.
    streamed = zstandard.ZstdCompressor().compressobj()
    frame = streamed.compress(SAMPLE) + streamed.flush()
    assert decode("zstd", chunked(frame, 7777)) == SAMPLE
    # A corrupted content checksum is caught by the library.
    bad = bytearray(zstd(b"checked", write_checksum=True))
    bad[-1] ^= 0xFF
    with pytest.raises(DecodeError, match="zstd"):
        decode("zstd", [bytes(bad)])


def test_zstd_window_over_rfc9659_limit_rejected() -> None:
    # A streamed frame declares its window (16 MiB here) instead of its content size.
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=24)
    obj = zstandard.ZstdCompressor(compression_params=params).compressobj()
    body = obj.compress(b"small") + obj.flush()
    with pytest.raises(DecodeError, match="zstd"):
        decode("zstd", [body])


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd", "gzip, br"])
def test_truncated_stream_raises_at_flush(encoding: str) -> None:
    body = ENCODERS[encoding](SAMPLE[:50_000])
    for cut in (1, 2, len(body) // 2, len(body) - 1):
        decoder = make_content_decoder(encoding)
        decoder.decode(body[:cut])
        with pytest.raises(DecodeError, match="truncated"):
            decoder.flush()


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd", "gzip, br"])
def test_empty_body_is_fine(encoding: str) -> None:
    assert decode(encoding, []) == b""
    assert decode(encoding, [b""]) == b""


@pytest.mark.parametrize("encoding", ["deflate", "br", "zstd"])
def test_data_after_end_raises(encoding: str) -> None:
    with pytest.raises(DecodeError):
        decode(encoding, [ENCODERS[encoding](b"abc"), b"\x01\x02\x03\x04more"])


@pytest.mark.parametrize("encoding", ["compress", "gzip, lzma", "br;q=1", "x-unknown"])
def test_unknown_encoding_raises_at_construction(encoding: str) -> None:
    with pytest.raises(DecodeError, match="unsupported"):
        make_content_decoder(encoding)


def test_too_many_codings() -> None:
    with pytest.raises(DecodeError, match="codings"):
        make_content_decoder(", ".join(["gzip"] * 5))


BOMB_BYTES = 200 * 1024 * 1024


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    # 200 MB of zeros, compressed once per module (about 0.6 s, the gzip one being the slowest).
    zeros = bytes(BOMB_BYTES)
    return {
        "gzip": gzip.compress(zeros, compresslevel=1),
        "deflate": zlib.compress(zeros, 1),
        "br": brotli.compress(zeros, quality=1),
        "zstd": zstd(zeros),
    }


@pytest.mark.parametrize("limit", [4 * 1024 * 1024, None], ids=["4MiB", "default"])
@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
def test_decompression_bomb_raises_with_bounded_memory(
    encoding: str, limit: int | None, bombs: dict[str, bytes]
) -> None:
    body = bombs[encoding]
    cap = limit or 64 * 1024 * 1024
    decoder = make_content_decoder(encoding, **({"max_output_bytes": limit} if limit else {}))
    seen = 0

    def feed() -> None:
        nonlocal seen
        for chunk in chunked(body, 16 * 1024):
            seen += sum(len(p) for p in decoder.decode(chunk))
        decoder.flush()

    tracemalloc.start()
    try:
        with pytest.raises(DecodeError, match="limit"):
            feed()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen <= cap
    # The body would be 200 MB. One decode call holds at most its own output, which the cap
    # bounds (brotli and zstd reach it from a single 16 KiB chunk of zeros).
    assert peak < cap + 4 * 1024 * 1024, peak
    assert peak < BOMB_BYTES / 2


def test_default_limit_stops_a_bomb_in_one_chunk(bombs: dict[str, bytes]) -> None:
    # The brotli bomb is tiny: all of it in one decode call, default 64 MiB cap.
    body = bombs["br"]
    assert len(body) < 64 * 1024
    with pytest.raises(DecodeError, match="limit"):
        make_content_decoder("br").decode(body)


def test_limit_counts_exact_output() -> None:
    body = gzip.compress(b"x" * 1000)
    assert decode("gzip", [body], max_output_bytes=1000) == b"x" * 1000
    with pytest.raises(DecodeError, match="limit"):
        decode("gzip", [body], max_output_bytes=999)


@settings(max_examples=300, deadline=None, database=None)
@given(
    encoding=st.sampled_from(["gzip", "deflate", "br", "zstd", "gzip, br"]),
    prefix=st.sampled_from([b"", b"\x1f\x8b\x08\x00", b"\x78\x9c", b"\x28\xb5\x2f\xfd"]),
    chunks=st.lists(st.binary(max_size=64), max_size=6),
)
def test_fuzz_only_decode_error(encoding: str, prefix: bytes, chunks: list[bytes]) -> None:
    decoder = make_content_decoder(encoding, max_output_bytes=1 << 16)
    try:
        for chunk in [prefix, *chunks]:
            decoder.decode(chunk)
        decoder.flush()
    except DecodeError:
        pass
