"""NDJSONDecoder: recorded Ollama / Cohere streams at every boundary, and line rules."""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Iterable
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenbook.usage.decoders import DecodeError, NDJSONDecoder

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
NDJSON_FILES = sorted(CORPUS.rglob("*.ndjson"))
INDEX = {
    row["file"]: row for row in map(json.loads, (CORPUS / "index.jsonl").read_text().splitlines())
}


def decode_chunks(chunks: Iterable[bytes], **kwargs: int) -> list[bytes]:
    decoder = NDJSONDecoder(**kwargs)
    lines: list[bytes] = []
    for chunk in chunks:
        lines.extend(decoder.decode(chunk))
    lines.extend(decoder.flush())
    return lines


def test_corpus_is_present() -> None:
    assert len(NDJSON_FILES) == 3


@pytest.mark.parametrize("path", NDJSON_FILES, ids=lambda p: str(p.relative_to(CORPUS)))
def test_corpus_file(path: Path) -> None:
    body = path.read_bytes()
    lines = decode_chunks([body])
    assert lines == [line.strip() for line in body.splitlines() if line.strip()]
    docs = [orjson.loads(line) for line in lines]
    assert all(isinstance(d, dict) for d in docs)
    assert decode_chunks(body[i : i + 1] for i in range(len(body))) == lines
    for i in range(0, len(body) + 1, max(1, len(body) // 400)):
        assert decode_chunks([body[:i], body[i:]]) == lines
    # The final line carries the totals the index records for this file.
    expected = INDEX[str(path.relative_to(CORPUS))]["expected"]
    last = docs[-1]
    if "eval_count" in last:  # Ollama
        assert last["done"] is True
        assert last["prompt_eval_count"] == expected["input_tokens"]
        assert last["eval_count"] == expected["output_tokens"]
    else:  # Cohere v1 stream-end
        assert last["is_finished"] is True
        tokens = last["response"]["meta"]["tokens"]
        assert tokens["input_tokens"] == expected["input_tokens"]


@settings(max_examples=40, deadline=None, database=None)
@given(data=st.data())
def test_corpus_random_chunks(data: st.DataObject) -> None:
    body = data.draw(st.sampled_from(NDJSON_FILES)).read_bytes()
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(body)), max_size=40))))
    points = [0, *cuts, len(body)]
    chunks = [body[a:b] for a, b in itertools.pairwise(points)]
    assert decode_chunks(chunks) == decode_chunks([body])


def test_crlf_blank_lines_and_whitespace() -> None:
    body = b'{"a":1}\r\n\r\n  {"b":2}  \n\t\n{"c":3}'
    expected = [b'{"a":1}', b'{"b":2}', b'{"c":3}']
    for i in range(len(body) + 1):
        assert decode_chunks([body[:i], body[i:]]) == expected


def test_flush_returns_last_line_once() -> None:
    decoder = NDJSONDecoder()
    assert decoder.decode(b'{"x":1}\n{"y"') == [b'{"x":1}']
    assert decoder.decode(b":2}") == []
    assert decoder.flush() == [b'{"y":2}']
    assert decoder.flush() == []


def test_oversize_line_raises() -> None:
    with pytest.raises(DecodeError, match="limit"):
        decode_chunks([b"x" * 101 + b"\n"], max_line_bytes=100)
    decoder = NDJSONDecoder(max_line_bytes=100)
    decoder.decode(b"y" * 60)
    with pytest.raises(DecodeError, match="limit"):
        decoder.decode(b"y" * 60)
    assert decode_chunks([(b"z" * 100 + b"\n") * 10], max_line_bytes=100) == [b"z" * 100] * 10


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_fuzz_only_decode_error(chunks: list[bytes]) -> None:
    assert decode_chunks(chunks) == decode_chunks([b"".join(chunks)])
    with contextlib.suppress(DecodeError):
        decode_chunks(chunks, max_line_bytes=16)
