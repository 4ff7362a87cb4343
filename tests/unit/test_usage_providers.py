"""Provider parsers on shapes the corpus has too few of: cut streams, errors, fallbacks.

The corpus itself is run by test_corpus.py; here each case is a small synthetic body built from
the provider's documented shape, or a corpus body cut or re-routed on purpose.
"""

from __future__ import annotations

import base64
import struct
import zlib

import orjson
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_corpus import CORPUS
from tokenbook.usage import Extraction, Reason, ResponseContext, Source, TokenUsage, open_adapter
from tokenbook.usage.providers.anthropic_messages import anthropic_usage
from tokenbook.usage.providers.bedrock_converse import converse_usage
from tokenbook.usage.providers.gemini import gemini_usage
from tokenbook.usage.providers.openai_chat import chat_usage
from tokenbook.usage.providers.openai_responses import responses_usage

SSE = "text/event-stream"
JSON = "application/json"
EVENTSTREAM = "application/vnd.amazon.eventstream"


def run(
    provider: str,
    path: str,
    content_type: str,
    *chunks: bytes,
    end_of_stream: bool = True,
    headers: dict[str, str] | None = None,
    query: str = "",
) -> Extraction:
    ctx = ResponseContext(
        provider=provider,
        path=path,
        query=query,
        response_headers={"content-type": content_type, **(headers or {})},
        request_model="requested",
    )
    adapter = open_adapter(ctx)
    for chunk in chunks:
        adapter.feed(chunk)
    return adapter.finish(end_of_stream=end_of_stream)


def sse(*events: tuple[str, object]) -> bytes:
    out = b""
    for name, payload in events:
        if name:
            out += b"event: " + name.encode() + b"\n"
        out += b"data: " + orjson.dumps(payload) + b"\n\n"
    return out


def eventstream_frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message (string headers only), CRCs included."""
    block = b""
    for name, value in headers.items():
        raw = value.encode()
        block += bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(raw)) + raw
    total = 12 + len(block) + len(payload) + 4
    prelude = struct.pack(">II", total, len(block))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + block + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event(kind: str, payload: object) -> bytes:
    return eventstream_frame(
        {":event-type": kind, ":message-type": "event", ":content-type": JSON},
        orjson.dumps(payload),
    )


# --- conversions: the disjoint split adds up to what the provider says it billed -----------

counts = st.integers(min_value=0, max_value=10**7)


@given(counts, counts, counts, counts, counts)
def test_openai_chat_split_adds_up(
    prompt: int, cached: int, write: int, completion: int, reasoning: int
) -> None:
    cached, write, reasoning = cached % (prompt + 1), write, reasoning % (completion + 1)
    write %= prompt - cached + 1
    usage, total = chat_usage(
        {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached, "cache_write_tokens": write},
            "completion_tokens_details": {"reasoning_tokens": reasoning},
        }
    )
    assert usage.total() == total == prompt + completion
    assert (usage.cached_input, usage.cache_write, usage.reasoning) == (cached, write, reasoning)


@given(counts, counts, counts, counts)
def test_responses_split_adds_up(prompt: int, cached: int, completion: int, reasoning: int) -> None:
    cached, reasoning = cached % (prompt + 1), reasoning % (completion + 1)
    usage, total = responses_usage(
        {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": prompt + completion,
        }
    )
    assert usage.total() == total
    assert usage.input == prompt - cached
    assert usage.output == completion - reasoning


@given(counts, counts, st.none() | counts, st.none() | counts, st.none() | counts)
def test_gemini_split_adds_up(
    prompt: int, cached: int, candidates: int | None, thoughts: int | None, tool: int | None
) -> None:
    cached %= prompt + 1
    meta: dict[str, int] = {"promptTokenCount": prompt, "cachedContentTokenCount": cached}
    total = prompt
    for key, value in (
        ("candidatesTokenCount", candidates),
        ("thoughtsTokenCount", thoughts),
        ("toolUsePromptTokenCount", tool),
    ):
        if value is not None:  # Gemini omits a count rather than send 0
            meta[key] = value
            total += value
    meta["totalTokenCount"] = total
    usage, stated_total = gemini_usage(meta)
    assert usage.total() == stated_total == total
    assert usage.output == candidates  # unstated stays unknown
    assert usage.reasoning == thoughts


@given(counts, counts, counts, counts)
def test_converse_split_adds_up(inp: int, read: int, write: int, out: int) -> None:
    usage, total = converse_usage(
        {
            "inputTokens": inp,
            "cacheReadInputTokens": read,
            "cacheWriteInputTokens": write,
            "outputTokens": out,
            "totalTokens": inp + read + write + out,
        }
    )
    assert usage.total() == total


def test_unstated_counts_stay_unknown() -> None:
    usage, total = chat_usage({"prompt_tokens": 7, "completion_tokens": 2})
    assert usage == TokenUsage(input=7, output=2)
    assert total is None
    # Gemini's OpenAI endpoint only: a total above prompt + completion is hidden thinking.
    assert chat_usage({"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 19})[0] == (
        TokenUsage(input=7, output=2)
    )
    assert chat_usage(
        {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 19},
        hidden_reasoning_in_total=True,
    )[0] == TokenUsage(input=7, output=2, reasoning=10)


def test_anthropic_delta_overrides_only_stated_fields() -> None:
    start = anthropic_usage({"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 1})
    final = anthropic_usage({"output_tokens": 30, "input_tokens": None}, start)
    assert final == TokenUsage(input=10, cached_input=5, output=30)


# --- Anthropic -----------------------------------------------------------------------------


def test_anthropic_stream_cut_after_message_start_keeps_what_was_stated() -> None:
    raw = (CORPUS / "anthropic/messages/stream_cache_read.sse").read_bytes()
    cut = raw[: raw.index(b"event: message_delta")]
    got = run("anthropic", "/v1/messages", SSE, cut, end_of_stream=False)
    assert got.source is Source.ESTIMATED
    assert got.reason is Reason.TRUNCATED
    # message_start's input and cache read are the provider's words, kept as they are...
    assert (got.usage.input, got.usage.cached_input, got.usage.cache_write) == (4, 1165, 0)
    # ...and the output (221 reported later) is estimated from the streamed text.
    assert got.usage.output is not None
    assert 180 <= got.usage.output <= 260
    assert got.model == "claude-3-5-sonnet-20240620"


def test_anthropic_error_event_mid_stream() -> None:
    body = sse(
        (
            "message_start",
            {
                "type": "message_start",
                "message": {"model": "claude-x", "usage": {"input_tokens": 9, "output_tokens": 1}},
            },
        ),
        ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "x"}}),
    )
    got = run("anthropic", "/v1/messages", SSE, body)
    assert got.reason is Reason.UPSTREAM_ERROR
    assert got.usage.is_empty()


def test_anthropic_on_vertex_raw_predict() -> None:
    raw = (CORPUS / "anthropic/messages/stream_cache_write.sse").read_bytes()
    got = run(
        "vertex_ai",
        "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-3-5-sonnet:streamRawPredict",
        SSE,
        raw,
    )
    assert got.usage == TokenUsage(input=4, cached_input=0, cache_write=1165, output=201)


# --- OpenAI-style --------------------------------------------------------------------------


def test_chat_stream_without_usage_is_estimated() -> None:
    body = (
        sse(
            ("", {"model": "gpt-4o", "choices": [{"delta": {"content": "Hello, how are you?"}}]}),
            ("", {"model": "gpt-4o", "choices": [{"delta": {}, "finish_reason": "stop"}]}),
        )
        + b"data: [DONE]\n\n"
    )
    got = run("openai", "/v1/chat/completions", SSE, body)
    assert got.source is Source.ESTIMATED
    assert got.reason is Reason.NO_USAGE
    assert got.usage.input is None  # the request body is not seen: input stays unknown
    assert got.usage.output == 5  # 19 bytes / 4.4 -> 4, plus the end-of-turn token
    assert got.model == "gpt-4o"


def test_chat_error_chunk_without_usage() -> None:
    body = sse(("", {"error": {"message": "upstream overloaded", "code": 502}}))
    assert run("openrouter", "/api/v1/chat/completions", SSE, body).reason is (
        Reason.UPSTREAM_ERROR
    )


def test_chat_error_document_with_200() -> None:
    got = run("openai", "/v1/chat/completions", JSON, b'{"error": {"message": "x"}}')
    assert got.reason is Reason.UPSTREAM_ERROR


def test_responses_incomplete_books_its_usage() -> None:
    usage = {"input_tokens": 20, "output_tokens": 8, "total_tokens": 28}
    body = sse(
        ("response.output_text.delta", {"type": "response.output_text.delta", "delta": "Hi"}),
        (
            "response.incomplete",
            {"type": "response.incomplete", "response": {"model": "gpt-5", "usage": usage}},
        ),
    )
    got = run("openai", "/v1/responses", SSE, body)
    assert got.usage == TokenUsage(input=20, output=8)
    assert got.model == "gpt-5"


def test_responses_cut_stream_is_estimated_from_deltas_only() -> None:
    raw = (CORPUS / "openai/responses/stream_basic_gpt55.sse").read_bytes()
    cut = raw[: raw.index(b"event: response.completed")]
    got = run("openai", "/v1/responses", SSE, cut, end_of_stream=False)
    assert got.source is Source.ESTIMATED
    # The *.done events repeat the text; counting only deltas keeps the estimate near 5.
    assert got.usage.output is not None
    assert got.usage.output <= 5


def test_audio_transcription_token_usage() -> None:
    body = (
        b'{"text":"hi","usage":{"type":"tokens","input_tokens":14,"output_tokens":3,'
        b'"total_tokens":17,"input_token_details":{"audio_tokens":14,"text_tokens":0}}}'
    )
    got = run("openai", "/v1/audio/transcriptions", JSON, body)
    assert got.usage == TokenUsage(input=14, output=3)
    assert got.provider_total == 17


def test_audio_transcription_duration_usage_is_not_tokens() -> None:
    body = b'{"text":"hi","usage":{"type":"duration","seconds":7}}'
    got = run("openai", "/v1/audio/transcriptions", JSON, body)
    assert got.reason is Reason.NO_USAGE
    assert got.usage.is_empty()
    assert "duration" in got.detail


# --- Gemini --------------------------------------------------------------------------------


def test_gemini_stream_cut_books_the_last_snapshot_plus_the_text_after_it() -> None:
    def chunk(text: str, meta: dict[str, int], finish: bool = False) -> tuple[str, object]:
        candidate: dict[str, object] = {"content": {"parts": [{"text": text}]}}
        if finish:
            candidate["finishReason"] = "STOP"
        return "", {"candidates": [candidate], "usageMetadata": meta, "modelVersion": "g-2"}

    first = chunk("x" * 44, {"promptTokenCount": 7, "candidatesTokenCount": 10})
    second = ("", {"candidates": [{"content": {"parts": [{"text": "y" * 88}]}}]})
    body = sse(first, second)
    got = run(
        "gemini",
        "/v1beta/models/g:streamGenerateContent",
        SSE,
        body,
        end_of_stream=False,
        query="alt=sse",
    )
    assert got.source is Source.ESTIMATED
    assert got.usage.input == 7
    assert got.usage.output == 10 + 20 + 1  # stated 10, then 88 bytes of text after it
    final = chunk("", {"promptTokenCount": 7, "candidatesTokenCount": 31}, finish=True)
    done = run(
        "gemini",
        "/v1beta/models/g:streamGenerateContent",
        SSE,
        body + sse(final),
        end_of_stream=False,
        query="alt=sse",
    )
    assert done.source is Source.REPORTED  # the finishReason chunk is the last word
    assert done.usage == TokenUsage(input=7, output=31)


def test_gemini_error_element_in_a_json_array_stream() -> None:
    body = b'[{"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}]'
    got = run("gemini", "/v1beta/models/g:streamGenerateContent", JSON, body)
    assert got.reason is Reason.UPSTREAM_ERROR


# --- Bedrock -------------------------------------------------------------------------------


def test_converse_stream_exception_frame() -> None:
    body = event("messageStart", {"role": "assistant"}) + eventstream_frame(
        {":message-type": "exception", ":exception-type": "throttlingException"},
        b'{"message":"slow down"}',
    )
    got = run("bedrock", "/model/amazon.nova-micro-v1%3A0/converse-stream", EVENTSTREAM, body)
    assert got.reason is Reason.UPSTREAM_ERROR
    assert got.model == "requested"


def test_invoke_stream_nova_cut_before_metadata_is_estimated() -> None:
    def chunk(inner: object) -> bytes:
        return event("chunk", {"bytes": base64.b64encode(orjson.dumps(inner)).decode()})

    body = chunk({"messageStart": {"role": "assistant"}}) + chunk(
        {"contentBlockDelta": {"delta": {"text": "z" * 44}, "contentBlockIndex": 0}}
    )
    path = "/model/amazon.nova-micro-v1%3A0/invoke-with-response-stream"
    got = run("bedrock", path, EVENTSTREAM, body, end_of_stream=False)
    assert got.source is Source.ESTIMATED
    assert got.usage.output == 11
    metrics = {"inputTokenCount": 5, "outputTokenCount": 12}
    final = chunk(
        {
            "metadata": {"usage": {"inputTokens": 5, "outputTokens": 12}},
            "amazon-bedrock-invocationMetrics": metrics,
        }
    )
    got = run("bedrock", path, EVENTSTREAM, body + final)
    assert got.usage == TokenUsage(input=5, output=12)


def test_invoke_body_without_counts_uses_the_bedrock_headers() -> None:
    headers = {
        "x-amzn-bedrock-input-token-count": "12",
        "x-amzn-bedrock-output-token-count": "40",
    }
    body = b'{"outputs":[{"text":"bonjour","stop_reason":"stop"}]}'  # Mistral on Bedrock
    got = run(
        "bedrock", "/model/mistral.mistral-large-2402-v1%3A0/invoke", JSON, body, headers=headers
    )
    assert got.usage == TokenUsage(input=12, output=40)
    assert got.model == "requested"


def test_invoke_llama_body() -> None:
    body = b'{"generation":"hi","prompt_token_count":11,"generation_token_count":2}'
    got = run("bedrock", "/model/meta.llama3-8b-instruct-v1%3A0/invoke", JSON, body)
    assert got.usage == TokenUsage(input=11, output=2)


# --- Cohere, Ollama ------------------------------------------------------------------------


def test_cohere_falls_back_to_billed_units() -> None:
    body = b'{"message":{},"usage":{"billed_units":{"input_tokens":5,"output_tokens":7}}}'
    assert run("cohere", "/v2/chat", JSON, body).usage == TokenUsage(input=5, output=7)


def test_ollama_error_line_mid_stream() -> None:
    body = (
        b'{"model":"llama3","message":{"content":"He"},"done":false}\n'
        b'{"error":"an error was encountered while running the model"}\n'
    )
    got = run("ollama", "/api/chat", "application/x-ndjson", body)
    assert got.reason is Reason.UPSTREAM_ERROR
    assert got.model == "llama3"


def test_ollama_cut_stream_is_estimated() -> None:
    body = b"".join(
        b'{"model":"llama3","message":{"content":"tok"},"done":false}\n' for _ in range(9)
    )
    got = run("ollama", "/api/chat", "application/x-ndjson", body, end_of_stream=False)
    assert got.source is Source.ESTIMATED
    assert got.usage.output == 10  # one token per line, plus end of turn
