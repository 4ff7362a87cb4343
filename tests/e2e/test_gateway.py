"""End to end: official SDKs -> real Envoy -> tokenbook (gate + meter) -> fake provider.

What the upstream received is checked on the fake provider's own record of the request; what was
booked is checked on tokenbook's scraped /metrics.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta

import anthropic
import openai
import pytest

from tests.e2e.conftest import (
    ANTHROPIC_PROVIDER_KEY,
    issue_key,
    sample,
    tokenbook_cli,
    wait_for_sample,
)
from tokenbook.testing.stack import Stack

pytestmark = pytest.mark.e2e

ATTRIBUTION = ("key-id", "owner", "team", "agent", "workload")


def _openai(stack: Stack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.gateway}/openai/v1", api_key=key, max_retries=0)


def _anthropic(stack: Stack, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"{stack.gateway}/anthropic", api_key=key, max_retries=0)


def _tag() -> str:
    return uuid.uuid4().hex


def test_openai_json_is_attributed_and_booked(stack: Stack) -> None:
    issued = issue_key(stack, "alice", "search", "crawler", "indexing")
    key, key_id = issued["key"], issued["key_id"]
    tag = _tag()
    reply = _openai(stack, key).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={
            "x-test-id": tag,
            "x-fake-fixture": "openai/chat/nonstream_prompt_cache_hit.json",
            # spoofed attribution, in several case variants: all must be gone or overwritten
            "x-tokenbook-owner": "mallory",
            "X-Tokenbook-Team": "evil",
            "X-TOKENBOOK-KEY-ID": "forged",
            "x-tokenbook-extra": "1",
        },
    )
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == 1149

    got = stack.fake.provider.find("x-test-id", tag) if stack.fake else None
    assert got is not None
    assert got.path == "/openai/v1/chat/completions"
    expected = {
        "key-id": key_id,
        "owner": "alice",
        "team": "search",
        "agent": "crawler",
        "workload": "indexing",
    }
    for name in ATTRIBUTION:
        assert got.header_all(f"x-tokenbook-{name}") == [expected[name]], name
    assert got.header("x-tokenbook-extra") is None
    # the tokenbook key never leaves the gateway (no credential configured for openai)
    assert got.header("authorization") is None
    assert key not in json.dumps(got.headers)

    labels = {"key_id": key_id, "provider": "openai", "model": "gpt-4o-mini-2024-07-18"}
    text = wait_for_sample(stack, "tokenbook_requests_total", outcome="ok", **labels)
    for token_type, count in {"input": 125, "cached_input": 1024, "output": 353}.items():
        got_count = sample(
            text, "tokenbook_tokens_total", token_type=token_type, owner="alice", **labels
        )
        assert got_count == count, (token_type, got_count)
    cost = sample(text, "tokenbook_cost_usd_total", token_type="input", **labels)
    assert cost is not None
    assert cost > 0
    assert key.split("_")[-1] not in text  # the secret never reaches the metrics


def test_openai_sse_stream_is_booked(stack: Stack) -> None:
    issued = issue_key(stack, "bob", "support", "helper", "tickets")
    stream = _openai(stack, issued["key"]).chat.completions.create(
        model="gpt-5-nano",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={
            "x-fake-fixture": "openai/chat/stream_include_usage_reasoning.sse",
            "x-fake-chunk-bytes": "97",
        },
    )
    chunks = list(stream)
    assert chunks
    assert chunks[-1].usage is not None
    labels = {"key_id": issued["key_id"], "provider": "openai"}
    text = wait_for_sample(stack, "tokenbook_requests_total", outcome="ok", **labels)
    assert sample(text, "tokenbook_tokens_total", token_type="reasoning", **labels) == 100
    assert sample(text, "tokenbook_tokens_total", token_type="input", **labels) == 12
    assert sample(text, "tokenbook_tokens_total", token_type="output", **labels) == 0


def test_anthropic_credential_swap_and_booking(stack: Stack) -> None:
    issued = issue_key(stack, "carol", "research", "summariser", "papers")
    tag = _tag()
    msg = _anthropic(stack, issued["key"]).messages.create(
        model="claude-sonnet-4-5",
        max_tokens=64,
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={
            "x-test-id": tag,
            "x-fake-fixture": "anthropic/messages/nonstream_cache_write_and_read.json",
        },
    )
    assert msg.usage.cache_read_input_tokens == 1111
    assert stack.fake is not None
    got = stack.fake.provider.find("x-test-id", tag)
    # credential swap: the provider credential replaces the tokenbook key
    assert got.header_all("x-api-key") == [ANTHROPIC_PROVIDER_KEY]
    assert got.header("x-tokenbook-agent") == "summariser"
    labels = {"key_id": issued["key_id"], "provider": "anthropic"}
    text = wait_for_sample(stack, "tokenbook_requests_total", outcome="ok", **labels)
    for token_type, count in {
        "input": 3,
        "cached_input": 1111,
        "cache_write": 418,
        "output": 33,
    }.items():
        assert sample(text, "tokenbook_tokens_total", token_type=token_type, **labels) == count


def test_unknown_and_missing_keys_are_refused_in_provider_shape(stack: Stack) -> None:
    with pytest.raises(openai.AuthenticationError) as oe:
        _openai(stack, "tb_aaaaaaaaaaaa_notarealsecretnotarealsecretnotarealsecret").models.list()
    assert oe.value.status_code == 401
    assert "tokenbook" in str(oe.value)
    with pytest.raises(anthropic.AuthenticationError) as ae:
        _anthropic(stack, "sk-ant-unknown").messages.create(
            model="claude-sonnet-4-5", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
    assert ae.value.status_code == 401
    assert ae.value.body is not None
    assert "tokenbook" in json.dumps(ae.value.body)
    req = urllib.request.Request(
        f"{stack.gateway}/openai/v1/chat/completions", data=b"{}", method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as he:
        urllib.request.urlopen(req, timeout=5)
    assert he.value.code == 401
    body = json.loads(he.value.read())
    assert body["error"]["code"] == "missing_key"


def test_revoked_key_refused_within_one_second(stack: Stack) -> None:
    issued = issue_key(stack, "dave", "ops", "janitor", "cleanup")
    client = _openai(stack, issued["key"])
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    done = tokenbook_cli(stack, "keys", "revoke", issued["key_id"])
    assert done.returncode == 0, done.stderr
    revoked_at = time.monotonic()
    refusal: openai.AuthenticationError | None = None
    while refusal is None:
        try:
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
            )
        except openai.AuthenticationError as exc:
            refusal = exc
            continue
        assert time.monotonic() - revoked_at < 1.0, "revocation took longer than 1 s"
        time.sleep(0.02)
    assert time.monotonic() - revoked_at < 1.0
    assert "revoked" in str(refusal)


def test_expired_key_is_refused(stack: Stack) -> None:
    expires = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    issued = issue_key(stack, "erin", "ops", "batch", "nightly", "--expires", expires)
    client = _openai(stack, issued["key"])
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    time.sleep(2.2)
    with pytest.raises(openai.AuthenticationError) as exc:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    assert "expired" in str(exc.value)


def test_gemini_query_key_is_removed_from_the_path(stack: Stack) -> None:
    issued = issue_key(stack, "frank", "growth", "writer", "copy")
    tag = _tag()
    req = urllib.request.Request(
        f"{stack.gateway}/gemini/v1beta/models/gemini-3-pro-preview:generateContent"
        f"?key={issued['key']}&alt=json",
        data=b'{"contents":[{"parts":[{"text":"hi"}]}]}',
        headers={"content-type": "application/json", "x-test-id": tag},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200
    assert stack.fake is not None
    got = stack.fake.provider.find("x-test-id", tag)
    assert issued["key"] not in got.path
    assert got.path == "/gemini/v1beta/models/gemini-3-pro-preview:generateContent?alt=json"
    assert got.header("x-tokenbook-owner") == "frank"


def test_openai_stream_without_include_usage_still_books_reported_usage(stack: Stack) -> None:
    issued = issue_key(stack, "gina", "search", "ranker", "indexing")
    tag = _tag()
    stream = _openai(stack, issued["key"]).chat.completions.create(
        model="gpt-5-nano",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,  # no stream_options: the gate adds include_usage
        extra_headers={"x-test-id": tag},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None  # the client sees the usage chunk too
    assert stack.fake is not None
    sent = json.loads(stack.fake.provider.find("x-test-id", tag).body)
    assert sent["stream_options"] == {"include_usage": True}
    labels = {"key_id": issued["key_id"], "provider": "openai", "source": "reported"}
    text = wait_for_sample(stack, "tokenbook_requests_total", outcome="ok", key_id=issued["key_id"])
    assert sample(text, "tokenbook_tokens_total", token_type="reasoning", **labels) == 100


def test_duplicate_spoofed_headers_are_all_replaced(stack: Stack) -> None:
    import http.client

    issued = issue_key(stack, "ruth", "search", "dup", "indexing")
    tag = _tag()
    conn = http.client.HTTPConnection("127.0.0.1", stack.envoy_port, timeout=10)
    conn.putrequest("POST", "/openai/v1/chat/completions")
    conn.putheader("authorization", f"Bearer {issued['key']}")
    conn.putheader("x-test-id", tag)
    for forged in ("mallory", "eve"):  # the same header twice, in two cases
        conn.putheader("x-tokenbook-owner", forged)
        conn.putheader("X-Tokenbook-Workload", forged)
    conn.putheader("content-length", "2")
    conn.endheaders(b"{}")
    resp = conn.getresponse()
    resp.read()
    conn.close()
    assert resp.status == 200
    assert stack.fake is not None
    got = stack.fake.provider.find("x-test-id", tag)
    assert got.header_all("x-tokenbook-owner") == ["ruth"]
    assert got.header_all("x-tokenbook-workload") == ["indexing"]


def test_no_secret_in_any_log_or_metric(stack: Stack) -> None:
    issued = issue_key(stack, "sam", "search", "quiet", "indexing")
    _openai(stack, issued["key"]).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
    )
    with pytest.raises(openai.AuthenticationError):
        _openai(stack, issued["key"] + "x").models.list()  # an unknown key is not logged either
    text = wait_for_sample(stack, "tokenbook_requests_total", key_id=issued["key_id"], outcome="ok")
    secret = issued["key"][len("tb_") + 13 :]
    assert len(secret) >= 40
    for proc in (stack.tokenbook, stack.envoy, stack.redis):
        assert proc is not None
        assert secret not in proc.log(), f"the secret appears in the {proc.name} log"
    assert secret not in text
