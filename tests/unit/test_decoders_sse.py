"""SSEDecoder: the recorded corpus at every chunk boundary, and the WHATWG parsing rules."""

from __future__ import annotations

import contextlib
import itertools
import re
from collections.abc import Iterable
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenbook.usage.decoders import DecodeError, SSEDecoder, SSEEvent

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
SSE_FILES = sorted(CORPUS.rglob("*.sse"))


def decode_chunks(chunks: Iterable[bytes], **kwargs: int) -> list[SSEEvent]:
    decoder = SSEDecoder(**kwargs)
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(decoder.decode(chunk))
    events.extend(decoder.flush())
    return events


def decode_all(body: bytes) -> list[SSEEvent]:
    return decode_chunks([body])


def split_at(body: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = [0, *sorted(set(cuts)), len(body)]
    return [body[a:b] for a, b in itertools.pairwise(points)]


def test_corpus_is_present() -> None:
    assert len(SSE_FILES) >= 40


@pytest.mark.parametrize("path", SSE_FILES, ids=lambda p: str(p.relative_to(CORPUS)))
def test_corpus_file_whole_and_bytewise(path: Path) -> None:
    body = path.read_bytes()
    events = decode_all(body)

    # An independent count: blocks between blank lines that hold at least one data line.
    normalized = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    blocks = [b for b in re.split(rb"\n\n+", normalized) if re.search(rb"(?m)^data", b)]
    assert len(events) == len(blocks) > 0
    # Every payload is JSON (or OpenAI's terminator), and the last JSON one is an object.
    payloads = [e.data for e in events if e.data != b"[DONE]"]
    assert all(isinstance(orjson.loads(p), dict | list) for p in payloads)
    assert isinstance(orjson.loads(payloads[-1]), dict)
    # Named events carry the name the body gave them.
    named = re.findall(rb"(?m)^event: ?([^\r\n]*)", body)
    assert [e.event for e in events if e.event] == [n.decode() for n in named]

    assert decode_chunks(body[i : i + 1] for i in range(len(body))) == events
    # Two pieces, cut at every byte of small files and at ~400 places in larger ones.
    for i in range(0, len(body) + 1, max(1, len(body) // 400)):
        assert decode_chunks([body[:i], body[i:]]) == events, i


@settings(max_examples=60, deadline=None, database=None)
@given(data=st.data())
def test_corpus_random_chunks(data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(SSE_FILES))
    body = path.read_bytes()
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=40))
    assert decode_chunks(split_at(body, cuts)) == decode_all(body)


def test_anthropic_event_sequence() -> None:
    events = decode_all((CORPUS / "anthropic/messages/stream_basic_sonnet45.sse").read_bytes())
    assert events[0].event == "message_start"
    assert events[-1].event == "message_stop"
    start = orjson.loads(events[0].data)
    assert start["type"] == "message_start"
    assert "usage" in start["message"]
    assert orjson.loads(events[-2].data)["type"] == "message_delta"


def test_openrouter_comments_are_skipped() -> None:
    body = (CORPUS / "openrouter/chat/stream_comments_and_error_chunk_with_usage.sse").read_bytes()
    assert body.count(b": OPENROUTER PROCESSING") > 0
    events = decode_all(body)
    assert all(not e.data.startswith(b":") and b"OPENROUTER" not in e.data for e in events)
    assert events[-1].data == b"[DONE]"


def test_gemini_crlf_corpus() -> None:
    body = (CORPUS / "gemini/generate_content/stream_sse_gemini20.sse").read_bytes()
    assert b"\r\n\r\n" in body
    events = decode_all(body)
    assert all(b"\r" not in e.data for e in events)
    assert "usageMetadata" in orjson.loads(events[-1].data)


# -- the parsing rules -----------------------------------------------------------------------


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_line_endings(eol: bytes) -> None:
    body = eol.join([b"event: a", b"data: 1", b"", b"data: 2", b"data: 3", b"", b""])
    expected = [SSEEvent("a", b"1"), SSEEvent("", b"2\n3")]
    assert decode_all(body) == expected
    for i in range(len(body) + 1):
        assert decode_chunks([body[:i], body[i:]]) == expected


def test_cr_at_chunk_end_then_lf() -> None:
    decoder = SSEDecoder()
    assert decoder.decode(b"data: x\r") == []
    # The LF completes the CRLF: it must not count as the blank line that dispatches.
    assert decoder.decode(b"\n") == []
    assert decoder.decode(b"\r") == [SSEEvent("", b"x")]
    assert decoder.decode(b"\ndata: y\r\n\r\n") == [SSEEvent("", b"y")]
    assert decoder.flush() == []


def test_lone_cr_then_lf_lines_are_two_lines() -> None:
    # "\r" then "\n" in *one* chunk is one CRLF; "\n\r" is two line ends.
    assert decode_all(b"data: a\n\rdata: b\n\n") == [SSEEvent("", b"a"), SSEEvent("", b"b")]


def test_comments_fields_and_spaces() -> None:
    body = (
        b": a comment\n"
        b"data:no-space\n"
        b"data:  two spaces\n"
        b"data\n"
        b":another\n"
        b"unknown: field\n"
        b"retry: 100\n"
        b"event:e1\n"
        b"event: e2\n"
        b"\n"
    )
    assert decode_all(body) == [SSEEvent("e2", b"no-space\n two spaces\n")]


def test_colon_in_value_and_empty_data() -> None:
    assert decode_all(b'data: {"a": "b:c"}\n\n') == [SSEEvent("", b'{"a": "b:c"}')]
    assert decode_all(b"data:\n\n") == [SSEEvent("", b"")]
    assert decode_all(b"data\n\n") == [SSEEvent("", b"")]


def test_event_without_data_is_not_dispatched() -> None:
    body = b"event: ping\n\nid: 7\n\n: keepalive\n\ndata: real\n\n"
    # The "ping" name does not leak into the next event; the id carries over (spec).
    assert decode_all(body) == [SSEEvent("", b"real", "7")]


def test_id_rules() -> None:
    body = b"id: 1\ndata: a\n\ndata: b\n\nid: x\0y\ndata: c\n\nid\ndata: d\n\n"
    assert decode_all(body) == [
        SSEEvent("", b"a", "1"),
        SSEEvent("", b"b", "1"),
        SSEEvent("", b"c", "1"),  # an id with NUL is ignored
        SSEEvent("", b"d", ""),  # an empty id resets it
    ]


def test_bom_only_at_start() -> None:
    bom = b"\xef\xbb\xbf"
    body = bom + b"data: 1\n\n" + bom + b"data: 2\n\n"
    # The second BOM is part of a field name, so that line is an unknown field.
    expected = [SSEEvent("", b"1")]
    assert decode_all(body) == expected
    assert decode_chunks(body[i : i + 1] for i in range(len(body))) == expected
    assert decode_chunks([b"\xef", b"\xbb", b"\xbfdata: 1\n\n"]) == expected
    assert decode_all(b"\xef\xbb") == []  # a body that is only part of a BOM
    assert decode_chunks([b"\xef", b"x\n\n"]) == []


def test_split_inside_multibyte_utf8() -> None:
    text = "data: héllo → 世界 🎉\n\n".encode()
    expected = [SSEEvent("", "héllo → 世界 🎉".encode())]
    for i in range(len(text) + 1):
        assert decode_chunks([text[:i], text[i:]]) == expected
    assert orjson.loads(b'"' + expected[0].data + b'"') == "héllo → 世界 🎉"


def test_flush_dispatches_unterminated_event() -> None:
    assert decode_all(b"event: last\ndata: tail") == [SSEEvent("last", b"tail")]
    assert decode_all(b"data: a\n") == [SSEEvent("", b"a")]
    assert decode_all(b"") == []
    assert decode_all(b"event: only-name") == []


def test_oversize_event_raises() -> None:
    limit = 1000
    big = b"data: " + b"x" * 600 + b"\n"
    with pytest.raises(DecodeError, match="limit"):
        decode_chunks([big, big, b"\n"], max_event_bytes=limit)
    # One long line arriving in small chunks is stopped before its end arrives.
    decoder = SSEDecoder(max_event_bytes=limit)
    decoder.decode(b"data: ")
    for _ in range(19):
        assert decoder.decode(b"y" * 50) == []  # 956 bytes buffered
    with pytest.raises(DecodeError, match="limit"):
        decoder.decode(b"y" * 50)
    # Many events each under the limit are fine.
    assert len(decode_chunks([big + b"\n"] * 50, max_event_bytes=limit)) == 50


def test_long_line_in_many_chunks_stays_linear() -> None:
    piece = b"z" * 1024
    decoder = SSEDecoder()
    decoder.decode(b"data: ")
    for _ in range(4096):  # 4 MiB over 4096 chunks: quadratic joining would take minutes
        assert decoder.decode(piece) == []
    [event] = decoder.decode(b"\n\n")
    assert len(event.data) == 4096 * 1024


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_fuzz_only_decode_error(chunks: list[bytes]) -> None:
    # Without a binding limit any bytes parse, and chunking changes nothing.
    assert decode_chunks(chunks) == decode_all(b"".join(chunks))
    with contextlib.suppress(DecodeError):
        decode_chunks(chunks, max_event_bytes=16)


@settings(max_examples=200, deadline=None, database=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["", "a", "message_delta"]),
            st.lists(st.binary(max_size=20).filter(lambda b: not (set(b) & {10, 13})), max_size=3),
        ),
        max_size=6,
    ),
    st.sampled_from([b"\n", b"\r\n", b"\r"]),
    st.data(),
)
def test_roundtrip_generated_streams(
    spec: list[tuple[str, list[bytes]]], eol: bytes, data: st.DataObject
) -> None:
    body = b""
    expected = []
    for name, lines in spec:
        if name:
            body += b"event: " + name.encode() + eol
        for line in lines:
            body += b"data: " + line + eol
        body += eol
        if lines:
            expected.append(SSEEvent(name, b"\n".join(lines)))
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=10))
    assert decode_chunks(split_at(body, cuts)) == expected
