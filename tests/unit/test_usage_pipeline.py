"""`open_adapter` as the meter uses it: framing choice, failures, caps and constant memory."""

from __future__ import annotations

import gzip
import itertools
import tracemalloc
import zlib
from collections.abc import Iterator

import brotli
import pytest
import zstandard

from tokenbook.usage import Extraction, Reason, ResponseContext, Source, TokenUsage, open_adapter
from tokenbook.usage.pipeline import FixedAdapter, StreamAdapter

CHAT = "/v1/chat/completions"
SSE = {"content-type": "text/event-stream"}
JSON = {"content-type": "application/json"}
USAGE_CHUNK = (
    b'data: {"id":"c","model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":9,'
    b'"completion_tokens":3,"total_tokens":12,"prompt_tokens_details":{"cached_tokens":4}}}\n\n'
    b"data: [DONE]\n\n"
)
CHAT_BODY = (
    b'{"model":"gpt-4o-mini","choices":[{"message":{"content":"hi"}}],'
    b'"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}'
)


def ctx(
    headers: dict[str, str],
    *,
    provider: str = "openai",
    path: str = CHAT,
    status: int = 200,
    max_json_bytes: int = 4 * 1024 * 1024,
) -> ResponseContext:
    return ResponseContext(
        provider=provider,
        path=path,
        status=status,
        response_headers=headers,
        request_model="requested-model",
        max_json_bytes=max_json_bytes,
    )


def run(context: ResponseContext, *chunks: bytes, end_of_stream: bool = True) -> Extraction:
    adapter = open_adapter(context)
    for chunk in chunks:
        adapter.feed(chunk)
    return adapter.finish(end_of_stream=end_of_stream)


def test_sse_stream_books_the_usage_chunk() -> None:
    got = run(ctx(SSE), b'data: {"model":"gpt-4o-mini","choices":[]}\n\n', USAGE_CHUNK)
    assert got.usage == TokenUsage(input=5, cached_input=4, output=3)
    assert (got.source, got.reason, got.model, got.provider_total) == (
        Source.REPORTED,
        Reason.NONE,
        "gpt-4o-mini",
        12,
    )


def test_finish_is_idempotent_and_feed_after_finish_is_ignored() -> None:
    adapter = open_adapter(ctx(JSON))
    adapter.feed(CHAT_BODY)
    first = adapter.finish(end_of_stream=True)
    adapter.feed(b"garbage")
    assert adapter.finish(end_of_stream=True) == first
    assert first.usage.total() == 12


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("br", brotli.compress),
        ("zstd", lambda b: zstandard.ZstdCompressor().compress(b)),
        ("gzip, br", lambda b: brotli.compress(gzip.compress(b))),
    ],
)
def test_content_encodings(encoding: str, compress: object) -> None:
    assert callable(compress)
    data: bytes = compress(USAGE_CHUNK)
    chunks = [data[i : i + 7] for i in range(0, len(data), 7)]
    got = run(ctx({**SSE, "content-encoding": encoding}), *chunks)
    assert got.usage == TokenUsage(input=5, cached_input=4, output=3)


def test_unknown_content_encoding_is_unsupported() -> None:
    got = run(ctx({**SSE, "content-encoding": "compress"}), USAGE_CHUNK)
    assert got.reason is Reason.UNSUPPORTED
    assert got.usage.is_empty()


def test_corrupt_gzip_is_a_parse_error_not_an_exception() -> None:
    got = run(ctx({**JSON, "content-encoding": "gzip"}), b"\x1f\x8b\x08\x00garbage-garbage")
    assert got.reason is Reason.PARSE_ERROR
    assert "gzip" in got.detail


def test_malformed_json_body() -> None:
    got = run(ctx(JSON), b'{"usage": {"prompt_tokens": 3,')
    assert got.reason is Reason.PARSE_ERROR
    assert got.usage.is_empty()
    assert got.model == "requested-model"


def test_malformed_usage_event_in_an_sse_stream() -> None:
    got = run(
        ctx(SSE),
        b'data: {"choices":[{"delta":{"content":"Hello there"}}]}\n\n',
        b'data: {"usage":{"prompt_tokens": 9,, }\n\n',
    )
    assert got.reason is Reason.PARSE_ERROR
    assert got.source is Source.ESTIMATED
    assert got.usage.output is not None
    assert got.usage.output > 0
    assert "not valid JSON" in got.detail


def test_malformed_event_stream_frame() -> None:
    got = run(
        ctx(
            {"content-type": "application/vnd.amazon.eventstream"},
            provider="bedrock",
            path="/model/amazon.nova-micro-v1%3A0/converse-stream",
        ),
        b"\x00\x00\x00\x20\x00\x00\x00\x00\xde\xad\xbe\xef" + b"\x00" * 20,
    )
    assert got.reason is Reason.PARSE_ERROR
    assert got.usage.is_empty()


def test_json_body_over_the_cap_is_too_large_and_released() -> None:
    adapter = open_adapter(ctx(JSON, max_json_bytes=1000))
    assert isinstance(adapter, StreamAdapter)
    adapter.feed(b'{"choices":[{"message":{"content":"' + b"x" * 900)
    assert adapter.retained_bytes() > 900
    adapter.feed(b"y" * 200 + b'"}}],"usage":{"prompt_tokens":1,"completion_tokens":1}}')
    assert adapter.retained_bytes() == 0
    got = adapter.finish(end_of_stream=True)
    assert got.reason is Reason.TOO_LARGE
    assert got.usage.is_empty()
    assert "1000" in got.detail


def test_compressed_json_over_the_cap_is_too_large() -> None:
    body = b'{"pad":"' + b"x" * 5000 + b'","usage":{"prompt_tokens":1}}'
    got = run(ctx({**JSON, "content-encoding": "gzip"}, max_json_bytes=1000), gzip.compress(body))
    assert got.reason is Reason.TOO_LARGE


def test_error_status_books_nothing_without_looking_at_the_body() -> None:
    adapter = open_adapter(ctx(JSON, status=429))
    assert isinstance(adapter, FixedAdapter)
    adapter.feed(CHAT_BODY)  # even a body with usage: a 4xx/5xx is not consumption
    got = adapter.finish(end_of_stream=True)
    assert got.reason is Reason.UPSTREAM_ERROR
    assert got.usage.is_empty()
    assert "429" in got.detail


def test_unknown_api_is_unsupported() -> None:
    got = run(ctx(JSON, path="/v1/models"), b'{"data": []}')
    assert got.reason is Reason.UNSUPPORTED
    assert got.model == "requested-model"


def test_count_tokens_is_not_billed() -> None:
    got = run(
        ctx(JSON, provider="anthropic", path="/v1/messages/count_tokens"), b'{"input_tokens": 12}'
    )
    assert got.reason is Reason.NOT_BILLED
    assert got.usage.is_empty()


def test_empty_body() -> None:
    assert run(ctx(JSON)).reason is Reason.NO_USAGE
    assert run(ctx({})).reason is Reason.NO_USAGE


@pytest.mark.parametrize(
    ("provider", "path", "data"),
    [
        ("openai", CHAT, USAGE_CHUNK),  # SSE
        ("openai", CHAT, b"\n  " + CHAT_BODY),  # JSON after blank lines
        (
            "ollama",
            "/api/chat",
            b'{"model":"llama3","message":{"content":"a"},"done":false}\n'
            b'{"model":"llama3","done":true,"prompt_eval_count":9,"eval_count":3}\n',
        ),
        (
            "gemini",
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            b'[{"candidates":[{"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":9,'
            b'"candidatesTokenCount":3,"totalTokenCount":12}}]',
        ),
    ],
)
def test_missing_content_type_is_sniffed(provider: str, path: str, data: bytes) -> None:
    got = run(ctx({}, provider=provider, path=path), data[:5], data[5:])
    assert got.reason is Reason.NONE
    assert got.usage.input is not None
    assert got.usage.output == 3


def test_html_body_is_unsupported() -> None:
    got = run(ctx({"content-type": "text/html"}), b"<html>bad gateway</html>")
    assert got.reason is Reason.UNSUPPORTED


def test_cut_json_body_is_estimated_from_its_text() -> None:
    got = run(
        ctx(JSON),
        b'{"model":"m","choices":[{"message":{"content":"' + b"word " * 40 + b'"}}],"usa',
        end_of_stream=False,
    )
    assert got.reason is Reason.TRUNCATED
    assert got.source is Source.ESTIMATED
    assert got.usage.output is not None
    assert 40 <= got.usage.output <= 60  # 200 bytes of text


def test_cut_stream_does_not_flush_a_partial_event() -> None:
    data = USAGE_CHUNK.split(b"\n\n")[0]  # the usage event without its blank line
    cut = run(ctx(SSE), data, end_of_stream=False)
    assert cut.source is Source.ESTIMATED
    assert cut.reason is Reason.TRUNCATED
    ended = run(ctx(SSE), data, end_of_stream=True)  # a complete body: the last event counts
    assert ended.source is Source.REPORTED


def _sse_stream(total: int, chunk: int) -> Iterator[bytes]:
    """``total`` bytes of chat deltas cut into ``chunk``-byte pieces at arbitrary offsets."""
    event = (
        b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","model":"gpt-4o-mini",'
        b'"choices":[{"index":0,"delta":{"content":"' + b"lorem ipsum dolor " * 20 + b'"},'
        b'"finish_reason":null}],"usage":null}\n\n'
    )
    window = event * (chunk // len(event) + 2)
    for i in range(total // chunk):
        offset = (i * chunk) % len(event)
        yield window[offset : offset + chunk]
    yield b"\n\n" + USAGE_CHUNK  # realign on an event boundary, then the usage chunk


def test_fifty_megabyte_stream_keeps_memory_constant() -> None:
    """50 MB of deltas in 16 KiB chunks: nothing accumulates (traced over the last 10 MB)."""
    adapter = open_adapter(ctx(SSE))
    assert isinstance(adapter, StreamAdapter)
    chunk_size = 16 * 1024
    chunks = _sse_stream(50 * 1024 * 1024, chunk_size)
    untraced = 40 * 1024 * 1024 // chunk_size
    fed = 0
    for chunk in itertools.islice(chunks, untraced):
        adapter.feed(chunk)
        fed += 1
        assert adapter.retained_bytes() == 0
    tracemalloc.start()
    try:
        baseline, _ = tracemalloc.get_traced_memory()
        for chunk in chunks:
            adapter.feed(chunk)
            fed += 1
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    got = adapter.finish(end_of_stream=True)
    assert fed * chunk_size >= 50 * 1024 * 1024
    assert got.usage == TokenUsage(input=5, cached_input=4, output=3)
    # 10 MB later the adapter holds what it held before; the peak is a few chunks' worth.
    assert current - baseline < 32 * 1024
    assert peak - baseline < 256 * 1024


def test_gemini_stream_retains_only_the_last_usage_chunk() -> None:
    adapter = open_adapter(
        ctx(
            SSE,
            provider="gemini",
            path="/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        )
    )
    assert isinstance(adapter, StreamAdapter)
    event = (
        b'data: {"candidates":[{"content":{"parts":[{"text":"' + b"abc " * 50 + b'"}]}}],'
        b'"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":%d}}\r\n\r\n'
    )
    for i in range(2000):
        adapter.feed(event % i)
        assert adapter.retained_bytes() <= len(event) + 8
    got = adapter.finish(end_of_stream=True)
    assert got.usage == TokenUsage(input=5, output=1999)


def test_feed_never_raises_on_arbitrary_bytes() -> None:
    import random

    rng = random.Random(7)
    for provider, path, headers in [
        ("openai", CHAT, SSE),
        ("openai", CHAT, JSON),
        (
            "bedrock",
            "/model/x/converse-stream",
            {"content-type": "application/vnd.amazon.eventstream"},
        ),
        (
            "bedrock",
            "/model/x/invoke-with-response-stream",
            {"content-type": "application/vnd.amazon.eventstream"},
        ),
        ("ollama", "/api/chat", {"content-type": "application/x-ndjson"}),
        ("gemini", "/v1beta/models/g:streamGenerateContent", JSON),
        ("openai", CHAT, {**SSE, "content-encoding": "br"}),
    ]:
        for _ in range(30):
            adapter = open_adapter(ctx(headers, provider=provider, path=path))
            for _ in range(5):
                adapter.feed(rng.randbytes(rng.randint(0, 300)))
            got = adapter.finish(end_of_stream=rng.random() < 0.5)
            assert isinstance(got, Extraction)
            assert got.source is Source.ESTIMATED or got.usage.is_empty()


def test_model_falls_back_to_the_url() -> None:
    context = ResponseContext(
        provider="bedrock",
        path="/model/us.amazon.nova-micro-v1%3A0/converse",
        response_headers=JSON,
    )
    got = run(context, b'{"usage":{"inputTokens":3,"outputTokens":1,"totalTokens":4}}')
    assert got.model == "us.amazon.nova-micro-v1:0"
    assert got.usage == TokenUsage(input=3, output=1)
