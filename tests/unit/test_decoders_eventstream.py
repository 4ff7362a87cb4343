"""EventStreamDecoder: recorded Bedrock streams, every header type, CRCs, lengths, unwrap."""

from __future__ import annotations

import contextlib
import itertools
import json
import struct
import uuid
import zlib
from collections.abc import Iterable
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenbook.usage.decoders import (
    DecodeError,
    EventStreamDecoder,
    EventStreamMessage,
    decode_chunk_bytes,
)

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
BIN_FILES = sorted(CORPUS.rglob("*.bin"))
INVOKE_FILES = sorted((CORPUS / "bedrock/invoke").glob("*.bin"))
CONVERSE_FILES = sorted((CORPUS / "bedrock/converse").glob("*.bin"))
INDEX = {
    row["file"]: row for row in map(json.loads, (CORPUS / "index.jsonl").read_text().splitlines())
}


def decode_chunks(chunks: Iterable[bytes], **kwargs: int) -> list[EventStreamMessage]:
    decoder = EventStreamDecoder(**kwargs)
    messages: list[EventStreamMessage] = []
    for chunk in chunks:
        messages.extend(decoder.decode(chunk))
    messages.extend(decoder.flush())
    return messages


def frame_offsets(body: bytes) -> list[int]:
    """Frame starts found by stepping over the length prefixes (no CRC checks)."""
    offsets, pos = [], 0
    while pos < len(body):
        offsets.append(pos)
        pos += int.from_bytes(body[pos : pos + 4], "big")
    assert pos == len(body)
    return offsets


# An independent encoder for synthetic frames (AWS event-stream encoding).
def encode_header(name: str, kind: int, value: object) -> bytes:
    out = bytes([len(name)]) + name.encode() + bytes([kind])
    if kind in (0, 1):
        return out
    if kind in (2, 3, 4, 5, 8):
        fmt = {2: ">b", 3: ">h", 4: ">i", 5: ">q", 8: ">q"}[kind]
        return out + struct.pack(fmt, value)
    if kind in (6, 7):
        raw = value if isinstance(value, bytes) else str(value).encode()
        return out + struct.pack(">H", len(raw)) + raw
    assert isinstance(value, uuid.UUID)
    return out + value.bytes


def encode_frame(headers: bytes, payload: bytes) -> bytes:
    total = 12 + len(headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(headers))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + headers + payload
    return body + struct.pack(">I", zlib.crc32(body))


def event_headers(event_type: str) -> bytes:
    return (
        encode_header(":event-type", 7, event_type)
        + encode_header(":content-type", 7, "application/json")
        + encode_header(":message-type", 7, "event")
    )


def test_corpus_is_present() -> None:
    assert len(BIN_FILES) == 6
    assert len(INVOKE_FILES) == 3


@pytest.mark.parametrize("path", BIN_FILES, ids=lambda p: str(p.relative_to(CORPUS)))
def test_corpus_file_at_every_boundary(path: Path) -> None:
    body = path.read_bytes()
    messages = decode_chunks([body])
    assert len(messages) == len(frame_offsets(body))
    assert all(m.message_type == "event" for m in messages)
    assert all(m.content_type == "application/json" for m in messages)
    assert all(isinstance(orjson.loads(m.payload), dict) for m in messages)
    assert decode_chunks(body[i : i + 1] for i in range(len(body))) == messages
    # Two pieces, cut at every byte of small files and at ~400 places in larger ones.
    for i in range(0, len(body) + 1, max(1, len(body) // 400)):
        assert decode_chunks([body[:i], body[i:]]) == messages


@settings(max_examples=40, deadline=None, database=None)
@given(data=st.data())
def test_corpus_random_chunks(data: st.DataObject) -> None:
    body = data.draw(st.sampled_from(BIN_FILES)).read_bytes()
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(body)), max_size=40))))
    points = [0, *cuts, len(body)]
    chunks = [body[a:b] for a, b in itertools.pairwise(points)]
    assert decode_chunks(chunks) == decode_chunks([body])


@pytest.mark.parametrize("path", CONVERSE_FILES, ids=lambda p: p.name)
def test_converse_stream_facts(path: Path) -> None:
    messages = decode_chunks([path.read_bytes()])
    assert messages[0].event_type == "messageStart"
    assert messages[-1].event_type == "metadata"
    assert "messageStop" in [m.event_type for m in messages]
    usage = orjson.loads(messages[-1].payload)["usage"]
    expected = INDEX[str(path.relative_to(CORPUS))]["expected"]
    assert usage["inputTokens"] == expected["input_tokens"]
    assert usage["outputTokens"] == expected["output_tokens"]


@pytest.mark.parametrize("path", INVOKE_FILES, ids=lambda p: p.name)
def test_invoke_chunk_bytes_unwrap(path: Path) -> None:
    messages = decode_chunks([path.read_bytes()])
    assert {m.event_type for m in messages} == {"chunk"}
    inner = [decode_chunk_bytes(m.payload) for m in messages]
    assert all(isinstance(b, bytes) for b in inner)
    docs = [orjson.loads(b) for b in inner if b is not None]
    metrics = docs[-1]["amazon-bedrock-invocationMetrics"]
    expected = INDEX[str(path.relative_to(CORPUS))]["expected"]
    assert metrics["inputTokenCount"] == expected["input_tokens"]
    assert metrics["outputTokenCount"] == expected["output_tokens"]


def test_decode_chunk_bytes_edge_cases() -> None:
    assert decode_chunk_bytes(b'{"bytes": "aGk=", "p": "abc"}') == b"hi"
    assert decode_chunk_bytes(b'{"p": "abc"}') is None
    assert decode_chunk_bytes(b'{"bytes": ""}') == b""
    for bad in (b"not json", b"[1]", b'{"bytes": 5}', b'{"bytes": "***"}', b'{"bytes": "aGk"}'):
        with pytest.raises(DecodeError):
            decode_chunk_bytes(bad)


def test_every_header_type() -> None:
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    headers = (
        encode_header("t", 0, True)
        + encode_header("f", 1, False)
        + encode_header("byte", 2, -5)
        + encode_header("short", 3, -30000)
        + encode_header("int", 4, 2_000_000_000)
        + encode_header("long", 5, -(2**62))
        + encode_header("bin", 6, b"\x00\xff")
        + encode_header("str", 7, "héllo")
        + encode_header("ts", 8, 1_700_000_000_123)
        + encode_header("id", 9, u)
    )
    [message] = decode_chunks([encode_frame(headers, b"payload")])
    assert dict(message.headers) == {
        "t": True,
        "f": False,
        "byte": -5,
        "short": -30000,
        "int": 2_000_000_000,
        "long": -(2**62),
        "bin": b"\x00\xff",
        "str": "héllo",
        "ts": 1_700_000_000_123,
        "id": str(u),
    }
    assert message.payload == b"payload"
    assert message.event_type is None


def test_empty_headers_and_payload() -> None:
    frame = encode_frame(b"", b"")
    assert len(frame) == 16
    assert decode_chunks([frame * 3]) == [EventStreamMessage({}, b"")] * 3


def test_exception_message() -> None:
    headers = (
        encode_header(":exception-type", 7, "throttlingException")
        + encode_header(":content-type", 7, "application/json")
        + encode_header(":message-type", 7, "exception")
    )
    [message] = decode_chunks([encode_frame(headers, b'{"message":"slow down"}')])
    assert message.message_type == "exception"
    assert message.exception_type == "throttlingException"


def test_flipped_byte_anywhere_raises() -> None:
    body = (CORPUS / "bedrock/invoke/stream_titan_text.bin").read_bytes()
    for i in range(len(body)):
        broken = bytearray(body)
        broken[i] ^= 0x01
        with pytest.raises(DecodeError):
            decode_chunks([bytes(broken)])


def test_crc_errors_name_the_crc() -> None:
    frame = bytearray(encode_frame(event_headers("chunk"), b"{}"))
    frame[-1] ^= 0xFF
    with pytest.raises(DecodeError, match="message CRC"):
        decode_chunks([bytes(frame)])
    frame = bytearray(encode_frame(event_headers("chunk"), b"{}"))
    frame[9] ^= 0xFF
    with pytest.raises(DecodeError, match="prelude CRC"):
        decode_chunks([bytes(frame)])


def test_bad_lengths_raise() -> None:
    def prelude(total: int, headers_len: int) -> bytes:
        head = struct.pack(">II", total, headers_len)
        return head + struct.pack(">I", zlib.crc32(head))

    for total, headers_len in ((15, 0), (20, 10), (0, 0)):
        with pytest.raises(DecodeError, match="lengths"):
            decode_chunks([prelude(total, headers_len) + bytes(32)])
    # Over the size limit: rejected from the prelude alone, before the frame is buffered.
    decoder = EventStreamDecoder(max_message_bytes=1024)
    with pytest.raises(DecodeError, match="limit"):
        decoder.decode(prelude(2048, 0))


def test_malformed_headers_raise() -> None:
    for headers in (
        b"\x05ab",  # name runs past the block
        b"\x01a\x0a",  # unknown type 10
        b"\x01a\x07\x00\x09abc",  # string longer than the block
        b"\x01a\x04\x00\x01",  # int32 cut short
        b"\x01a\x09" + bytes(8),  # uuid cut short
        b"\x02\xff\xfe\x00",  # name not UTF-8
        b"\x00\x00",  # empty name
    ):
        with pytest.raises(DecodeError):
            decode_chunks([encode_frame(headers, b"")])


def test_partial_frame_at_flush_raises() -> None:
    frame = encode_frame(event_headers("chunk"), b'{"bytes":"aGk="}')
    for cut in (1, 11, 12, 13, len(frame) - 1):
        decoder = EventStreamDecoder()
        assert decoder.decode(frame + frame[:cut]) != []
        with pytest.raises(DecodeError, match="truncated"):
            decoder.flush()


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.binary(max_size=64), max_size=6), st.booleans())
def test_fuzz_only_decode_error(chunks: list[bytes], valid_prelude: bool) -> None:
    if valid_prelude and chunks:
        # Give the fuzzer a correct prelude so it reaches the header and CRC code.
        rest = b"".join(chunks)
        head = struct.pack(">II", 16 + len(rest), min(len(rest), 255))
        chunks = [head + struct.pack(">I", zlib.crc32(head)), *chunks, b"\0\0\0\0"]
    with contextlib.suppress(DecodeError):
        decode_chunks(chunks)
