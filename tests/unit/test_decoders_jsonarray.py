"""JSONArrayDecoder: Gemini/Vertex streamed arrays at every boundary, strings, errors."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenbook.usage.decoders import DecodeError, JSONArrayDecoder, SSEDecoder

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
VERTEX_ARRAY = CORPUS / "vertex_ai/generate_content/stream_json_array_enum_int.json"


def decode_chunks(chunks: Iterable[bytes], **kwargs: int) -> list[bytes]:
    decoder = JSONArrayDecoder(**kwargs)
    elements: list[bytes] = []
    for chunk in chunks:
        elements.extend(decoder.decode(chunk))
    elements.extend(decoder.flush())
    return elements


def gemini_array_body() -> bytes:
    """A multi-element array built from the recorded Gemini SSE payloads, Google-style."""
    body = (CORPUS / "gemini/generate_content/stream_sse_thoughts_gemini25pro.sse").read_bytes()
    decoder = SSEDecoder()
    payloads = [e.data for e in decoder.decode(body) + decoder.flush()]
    assert len(payloads) > 10
    return b"[" + b"\r\n,\r\n".join(payloads) + b"]"


def test_vertex_corpus_file() -> None:
    body = VERTEX_ARRAY.read_bytes()
    elements = decode_chunks([body])
    assert [orjson.loads(e) for e in elements] == orjson.loads(body)
    [element] = elements
    usage = orjson.loads(element)["usageMetadata"]
    assert (usage["promptTokenCount"], usage["candidatesTokenCount"]) == (11, 16)
    assert usage["thoughtsTokenCount"] == 232
    assert decode_chunks(body[i : i + 1] for i in range(len(body))) == elements
    for i in range(len(body) + 1):
        assert decode_chunks([body[:i], body[i:]]) == elements


def test_multi_element_array_from_gemini_payloads() -> None:
    body = gemini_array_body()
    elements = decode_chunks([body])
    assert [orjson.loads(e) for e in elements] == orjson.loads(body)
    assert "usageMetadata" in orjson.loads(elements[-1])
    assert decode_chunks(body[i : i + 1] for i in range(len(body))) == elements
    for i in range(0, len(body) + 1, max(1, len(body) // 400)):
        assert decode_chunks([body[:i], body[i:]]) == elements


def test_elements_come_out_as_soon_as_complete() -> None:
    decoder = JSONArrayDecoder()
    assert decoder.decode(b'[{"a": 1}') == [b'{"a": 1}']
    assert decoder.decode(b',\n{"b": ') == []
    assert decoder.decode(b"[2]}") == [b'{"b": [2]}']
    assert decoder.decode(b"]\n") == []
    assert decoder.flush() == []


@settings(max_examples=60, deadline=None, database=None)
@given(data=st.data())
def test_random_chunks(data: st.DataObject) -> None:
    body = data.draw(st.sampled_from([VERTEX_ARRAY.read_bytes(), gemini_array_body()]))
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(body)), max_size=40))))
    points = [0, *cuts, len(body)]
    chunks = [body[a:b] for a, b in itertools.pairwise(points)]
    assert decode_chunks(chunks) == decode_chunks([body])


def test_strings_with_brackets_quotes_and_escapes() -> None:
    elements = [
        {"text": 'a } ] [ { " inside \\" \\\\ \\\\" ', "n": [1, [2, {"x": "]"}]]},
        {"t": "\\", "u": "\u00e9\u4e16\U0001f389", "e": "\\u005d"},
        [],
        {},
    ]
    body = json.dumps(elements).encode()
    expected = [json.dumps(e).encode() for e in elements]
    for i in range(len(body) + 1):
        assert decode_chunks([body[:i], body[i:]]) == expected


def test_scalars_commas_and_whitespace() -> None:
    body = b' \n[ 1 , "two" ,true,null,-3.5e2 ,, {"k":"v"} ,]\r\n '
    expected = [b"1", b'"two"', b"true", b"null", b"-3.5e2", b'{"k":"v"}']
    for i in range(len(body) + 1):
        assert decode_chunks([body[:i], body[i:]]) == expected
    assert decode_chunks([b"[]"]) == []


def test_single_object_body_is_yielded_at_flush() -> None:
    body = b'{"error": {"code": 400, "message": "bad [request]"}}\n'
    decoder = JSONArrayDecoder()
    assert decoder.decode(body) == []
    assert decoder.flush() == [body.strip()]
    for i in range(len(body) + 1):
        assert decode_chunks([body[:i], body[i:]]) == [body.strip()]
    error_body = (
        CORPUS / "vertex_ai/generate_content/error_400_invalid_argument.json"
    ).read_bytes()
    [whole] = decode_chunks([error_body])
    assert orjson.loads(whole) == orjson.loads(error_body)


def test_unclosed_array_after_complete_elements_is_accepted() -> None:
    assert decode_chunks([b'[{"a":1},\n']) == [b'{"a":1}']


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   \n",
        b'[{"a": 1}, {"b"',
        b'[{"a": "unterminated}]',
        b"[1",
        b'{"a": 1',
        b'{"a": 1}{"b": 2}',
        b"[1] trailing",
        b'[1] {"a": 1}',
        b"[1]]",
        b'[{"a": 1]',
        b"[}",
        b"42",
        b'"text"',
        b"<html>",
        b"[?]",
    ],
)
def test_malformed_bodies_raise(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_chunks([body])
    with pytest.raises(DecodeError):
        decode_chunks(body[i : i + 1] for i in range(len(body)))


def test_oversize_element_raises() -> None:
    big = b'{"t": "' + b"x" * 200 + b'"}'
    with pytest.raises(DecodeError, match="limit"):
        decode_chunks([b"[" + big + b"]"], max_element_bytes=100)
    decoder = JSONArrayDecoder(max_element_bytes=100)
    decoder.decode(b'[{"t": "')
    for _ in range(9):
        assert decoder.decode(b"y" * 10) == []  # 97 bytes of the element buffered
    with pytest.raises(DecodeError, match="limit"):
        decoder.decode(b"y" * 10)
    # Many elements each under the limit are fine, even in one chunk.
    small = b'{"t": "' + b"x" * 80 + b'"}'
    assert (
        len(decode_chunks([b"[" + b",".join([small] * 100) + b"]"], max_element_bytes=100)) == 100
    )


def test_long_string_in_many_chunks_stays_linear() -> None:
    decoder = JSONArrayDecoder()
    decoder.decode(b'[{"t": "')
    for _ in range(4096):
        assert decoder.decode(b"a" * 1024) == []
    [element] = decoder.decode(b'"}]')
    assert len(orjson.loads(element)["t"]) == 4096 * 1024


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=100, deadline=None, database=None)
@given(st.lists(json_values, max_size=5), st.sampled_from([", ", ",\r\n", ","]), st.data())
def test_generated_arrays(values: list[object], sep: str, data: st.DataObject) -> None:
    body = ("[" + sep.join(json.dumps(v) for v in values) + "]").encode()
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(body)), max_size=10))))
    points = [0, *cuts, len(body)]
    chunks = [body[a:b] for a, b in itertools.pairwise(points)]
    assert [json.loads(e) for e in decode_chunks(chunks)] == values


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.sampled_from([b"", b"[", b"{", b'["']),
    st.lists(
        st.binary(max_size=32) | st.sampled_from([b'"', b"\\", b"[", b"]", b"{", b"}", b","]),
        max_size=12,
    ),
)
def test_fuzz_only_decode_error(prefix: bytes, chunks: list[bytes]) -> None:
    try:
        whole = decode_chunks([prefix, *chunks])
    except DecodeError:
        whole = None
    try:
        split = decode_chunks([prefix, *chunks], max_element_bytes=16)
    except DecodeError:
        return
    # When a small limit did not trip, the answer is the same as without it.
    assert split == whole
