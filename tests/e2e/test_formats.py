"""End to end, one test per wire format: recorded provider responses through real Envoy.

Each test sends a request through the gateway, the fake provider answers with a recorded corpus
body (optionally gzip-encoded, chunked, or cut), and the test checks the counters tokenbook
booked: tokens per type, cost priced from the price database, outcome and source.
"""

from __future__ import annotations

import http.client
import json
import math
import time
import urllib.request
from collections.abc import Mapping

import anthropic
import openai
import pytest

from tests.e2e.conftest import issue_key, sample, samples_sum, wait_for_sample
from tokenbook.pricing import Pricer
from tokenbook.testing.stack import Stack
from tokenbook.usage.types import TokenUsage

pytestmark = pytest.mark.e2e

_PRICER = Pricer()


def _post(stack: Stack, path: str, key: str, headers: Mapping[str, str], body: bytes) -> bytes:
    req = urllib.request.Request(
        f"{stack.gateway}{path}",
        data=body,
        headers={"content-type": "application/json", "authorization": f"Bearer {key}", **headers},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
        data: bytes = resp.read()
        return data


def _check_booked(
    stack: Stack,
    key_id: str,
    provider: str,
    model: str,
    expected: Mapping[str, int],
    *,
    outcome: str = "ok",
    source: str = "reported",
) -> str:
    labels = {"key_id": key_id, "provider": provider, "model": model}
    text = wait_for_sample(stack, "tokenbook_requests_total", outcome=outcome, **labels)
    for token_type, count in expected.items():
        got = sample(text, "tokenbook_tokens_total", token_type=token_type, source=source, **labels)
        assert got == count, (token_type, got, count)
    price = _PRICER.price(provider, model, TokenUsage(**expected))
    assert price is not None, f"{provider}/{model} should be priced"
    for token_type in expected:
        cost = sample(text, "tokenbook_cost_usd_total", token_type=token_type, **labels)
        assert cost is not None
        assert math.isclose(cost, price.by_type[token_type], rel_tol=1e-9, abs_tol=1e-12)
    return text


def test_gzip_encoded_anthropic_sse(stack: Stack) -> None:
    issued = issue_key(stack, "hana", "research", "reader", "papers")
    client = anthropic.Anthropic(
        base_url=f"{stack.gateway}/anthropic", api_key=issued["key"], max_retries=0
    )
    with client.messages.stream(
        model="claude-3-5-sonnet-20240620",
        max_tokens=300,
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={
            "x-fake-fixture": "anthropic/messages/stream_cache_read.sse",
            "x-fake-gzip": "1",
            "x-fake-chunk-bytes": "64",
        },
    ) as s:
        text = "".join(s.text_stream)
    assert text
    _check_booked(
        stack,
        issued["key_id"],
        "anthropic",
        "claude-3-5-sonnet-20240620",
        {"input": 4, "cached_input": 1165, "cache_write": 0, "output": 221},
    )


def test_gemini_sse_with_thoughts(stack: Stack) -> None:
    issued = issue_key(stack, "ivan", "growth", "writer", "copy")
    body = _post(
        stack,
        "/gemini/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
        issued["key"],
        {"x-fake-fixture": "gemini/generate_content/stream_sse_thoughts_gemini25pro.sse"},
        b'{"contents":[{"parts":[{"text":"hi"}]}]}',
    )
    assert b"usageMetadata" in body
    _check_booked(
        stack,
        issued["key_id"],
        "gemini",
        "gemini-2.5-pro",
        {"input": 34, "output": 469, "reasoning": 787},
    )


def test_vertex_json_array_stream(stack: Stack) -> None:
    issued = issue_key(stack, "jane", "growth", "tagger", "catalog")
    _post(
        stack,
        "/vertex_ai/v1beta1/projects/test-project/locations/us-central1/publishers/google/"
        "models/gemini-2.5-flash:streamGenerateContent",
        issued["key"],
        {
            "x-fake-fixture": "vertex_ai/generate_content/stream_json_array_enum_int.json",
            "x-fake-chunk-bytes": "50",
        },
        b'{"contents":[{"parts":[{"text":"hi"}]}]}',
    )
    _check_booked(
        stack,
        issued["key_id"],
        "vertex_ai",
        "gemini-2.5-flash",
        {"input": 11, "output": 16, "reasoning": 232},
    )


def test_bedrock_converse_event_stream(stack: Stack) -> None:
    issued = issue_key(stack, "kim", "platform", "router", "chatops")
    body = _post(
        stack,
        "/bedrock/model/us.amazon.nova-micro-v1%3A0/converse-stream",
        issued["key"],
        {"x-fake-fixture": "bedrock/converse/stream_nova_micro.bin", "x-fake-chunk-bytes": "33"},
        b'{"messages":[{"role":"user","content":[{"text":"hi"}]}]}',
    )
    assert body[:4] != b"{"  # binary frames reached the client untouched
    _check_booked(
        stack,
        issued["key_id"],
        "bedrock",
        "us.amazon.nova-micro-v1:0",
        {"input": 13, "output": 82},
    )


def test_cohere_is_priced_with_the_model_of_its_request_body(stack: Stack) -> None:
    """Cohere's responses name no model, nor does the URL: the gate reads it from the request
    body (which it buffers for that, and leaves as it is), so the usage can be priced."""
    issued = issue_key(stack, "cleo", "research", "ranker", "search")
    request = b'{"model":"command-r7b-12-2024","messages":[{"role":"user","content":"hi"}]}'
    tag = f"cohere-{issued['key_id']}"
    received = _post(
        stack,
        "/cohere/v2/chat",
        issued["key"],
        {
            "x-fake-fixture": "cohere/cohere_chat_v2/nonstream_v2_cached_tokens.json",
            "x-test-id": tag,
        },
        request,
    )
    assert b"cached_tokens" in received
    _check_booked(
        stack,
        issued["key_id"],
        "cohere",
        "command-r7b-12-2024",
        {"input": 7, "cached_input": 2928, "output": 4},
    )
    assert stack.fake is not None
    assert stack.fake.provider.find("x-test-id", tag).body == request  # read, not rewritten


def test_cut_stream_is_booked_as_aborted_with_estimate(stack: Stack) -> None:
    issued = issue_key(stack, "leo", "research", "reader", "papers")
    fixture = stack.corpus / "anthropic/messages/stream_cache_read.sse"
    raw = fixture.read_bytes()
    cut = raw.index(b"content_block_delta") + 2000  # past message_start and some text
    conn = http.client.HTTPConnection("127.0.0.1", stack.envoy_port, timeout=10)
    conn.request(
        "POST",
        "/anthropic/v1/messages",
        body=json.dumps({"model": "claude-3-5-sonnet-20240620", "stream": True}),
        headers={
            "x-api-key": issued["key"],
            "content-type": "application/json",
            "x-fake-fixture": "anthropic/messages/stream_cache_read.sse",
            "x-fake-chunk-bytes": "500",
            "x-fake-abort-after": str(cut),
        },
    )
    resp = conn.getresponse()
    with pytest.raises(http.client.IncompleteRead):
        resp.read()
    conn.close()
    labels = {"key_id": issued["key_id"], "provider": "anthropic"}
    text = wait_for_sample(stack, "tokenbook_requests_total", outcome="aborted", **labels)
    # What the provider stated before the cut (message_start) is booked as stated ...
    assert sample(text, "tokenbook_tokens_total", token_type="input", **labels) == 4
    assert sample(text, "tokenbook_tokens_total", token_type="cached_input", **labels) == 1165
    # ... and the output is an estimate, marked as such, never mixed with reported numbers.
    estimated = samples_sum(text, "tokenbook_tokens_total", source="estimated", **labels)
    assert estimated > 0
    reported_output = sample(
        text, "tokenbook_tokens_total", token_type="output", source="reported", **labels
    )
    assert reported_output is None


def test_unknown_model_books_tokens_without_cost(stack: Stack) -> None:
    issued = issue_key(stack, "mia", "platform", "local", "offline")
    _post(
        stack,
        "/ollama/api/chat",
        issued["key"],
        {"x-fake-fixture": "ollama/ollama_chat/nonstream_api_chat.json"},
        b'{"model":"llama3","messages":[]}',
    )
    labels = {"key_id": issued["key_id"], "provider": "ollama", "model": "llama3"}
    text = wait_for_sample(stack, "tokenbook_requests_total", outcome="ok", **labels)
    assert sample(text, "tokenbook_tokens_total", token_type="input", **labels) == 17
    assert sample(text, "tokenbook_tokens_total", token_type="output", **labels) == 66
    assert sample(text, "tokenbook_cost_usd_total", token_type="input", **labels) is None
    missing = sample(text, "tokenbook_price_missing_total", provider="ollama", model="llama3")
    assert missing is not None
    assert missing >= 1


def test_error_body_books_no_tokens(stack: Stack) -> None:
    issued = issue_key(stack, "nia", "platform", "probe", "health")
    req = urllib.request.Request(
        f"{stack.gateway}/openai/v1/chat/completions",
        data=b'{"model":"gpt-9","messages":[]}',
        headers={
            "authorization": f"Bearer {issued['key']}",
            "content-type": "application/json",
            "x-fake-fixture": "openai/chat/error_404_model_not_found.json",
        },
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=10)
    assert exc.value.code == 404
    labels = {"key_id": issued["key_id"], "provider": "openai"}
    text = wait_for_sample(stack, "tokenbook_requests_total", outcome="upstream_error", **labels)
    assert math.isnan(samples_sum(text, "tokenbook_tokens_total", **labels))


def test_stream_whose_end_arrives_late_is_booked_ok(stack: Stack) -> None:
    """A chunked upstream whose final empty chunk comes after a pause: Envoy 1.40's observability
    mode forwards no end-of-stream message then; the usage seen makes the booking complete."""
    issued = issue_key(stack, "olga", "search", "slowpoke", "indexing")
    client = openai.OpenAI(
        base_url=f"{stack.gateway}/openai/v1", api_key=issued["key"], max_retries=0
    )
    chunks = list(
        client.chat.completions.create(
            model="gpt-5-nano",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={
                "x-fake-fixture": "openai/chat/stream_include_usage_reasoning.sse",
                "x-fake-chunk-bytes": "300",
                "x-fake-chunk-delay-ms": "100",
            },
        )
    )
    assert chunks[-1].usage is not None
    streamed = time.monotonic()
    labels = {"key_id": issued["key_id"], "provider": "openai"}
    text = wait_for_sample(stack, "tokenbook_requests_total", outcome="ok", **labels)
    # Booked at `[DONE]`, not when Envoy gives up on the stream (deferred_close_timeout, 2 s).
    assert time.monotonic() - streamed < 1.5
    assert (
        sample(text, "tokenbook_tokens_total", token_type="reasoning", source="reported", **labels)
        == 100
    )
    assert sample(text, "tokenbook_requests_total", outcome="aborted", **labels) is None


@pytest.mark.parametrize(
    ("path", "fixture", "provider", "model", "expected"),
    [
        (
            "/ollama/api/chat",
            "ollama/ollama_chat/stream_ndjson_api_chat.ndjson",
            "ollama",
            "llama3",
            {"input": 17, "output": 50},
        ),
        (
            "/cohere/v2/chat",
            "cohere/cohere_chat_v2/stream_v2_message_end_usage.sse",
            "cohere",
            "command",  # from the request body: Cohere's responses name no model
            {"input": 69, "output": 110},
        ),
        (
            "/bedrock/model/us.amazon.nova-micro-v1%3A0/converse-stream",
            "bedrock/converse/stream_nova_micro.bin",
            "bedrock",
            "us.amazon.nova-micro-v1:0",
            {"input": 13, "output": 82},
        ),
    ],
    ids=["ollama-done-line", "cohere-message-end", "bedrock-metadata-event"],
)
def test_other_terminal_events_book_without_waiting_for_a_late_end(
    stack: Stack,
    path: str,
    fixture: str,
    provider: str,
    model: str,
    expected: Mapping[str, int],
) -> None:
    """As above, for the formats whose last event is not OpenAI's or Anthropic's: Ollama's
    `done` line, Cohere's `message-end`, ConverseStream's `metadata` event."""
    issued = issue_key(stack, "otto", "search", f"late-{provider}", "indexing")
    _post(
        stack,
        path,
        issued["key"],
        {"x-fake-fixture": fixture, "x-fake-chunk-bytes": "1500", "x-fake-chunk-delay-ms": "100"},
        json.dumps({"model": model, "stream": True, "messages": []}).encode(),
    )
    streamed = time.monotonic()  # the client has the whole body, its final chunk included
    labels = {"key_id": issued["key_id"], "provider": provider, "model": model}
    text = wait_for_sample(stack, "tokenbook_requests_total", outcome="ok", **labels)
    # Booked at the terminal event, not at Envoy's deferred close (2 s after the last bytes).
    assert time.monotonic() - streamed < 1.5
    for token_type, count in expected.items():
        got = sample(
            text, "tokenbook_tokens_total", token_type=token_type, source="reported", **labels
        )
        assert got == count, (token_type, got, count)
    assert sample(text, "tokenbook_requests_total", outcome="aborted", **labels) is None
