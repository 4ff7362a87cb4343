"""The include_usage rewrite of OpenAI-style streaming requests."""

from __future__ import annotations

import orjson

from tokenbook.request_body import (
    INCLUDE_USAGE,
    MAX_REWRITE_BYTES,
    READ_MODEL,
    body_use,
    read_model,
    rewrite_for_usage,
    wants_body,
)

PROVIDERS = frozenset({"openai"})


def test_adds_include_usage_to_a_stream() -> None:
    r = rewrite_for_usage(b'{"model":"gpt-4o","stream":true,"messages":[]}')
    assert r.body is not None
    assert orjson.loads(r.body)["stream_options"] == {"include_usage": True}
    assert r.request_model == "gpt-4o"
    assert r.stream


def test_merges_into_existing_stream_options() -> None:
    r = rewrite_for_usage(b'{"model":"m","stream":true,"stream_options":{"x":1}}')
    assert r.body is not None
    assert orjson.loads(r.body)["stream_options"] == {"x": 1, "include_usage": True}


def test_client_choice_wins_and_non_streams_untouched() -> None:
    assert (
        rewrite_for_usage(b'{"stream":true,"stream_options":{"include_usage":false}}').body is None
    )
    assert rewrite_for_usage(b'{"model":"m","stream":false}').body is None
    assert rewrite_for_usage(b'{"model":"m","stream":false}').request_model == "m"
    assert rewrite_for_usage(b'{"model":"m"}').request_model == "m"


def test_malformed_bodies_are_left_alone() -> None:
    for body in (b"", b"not json", b"[1,2]", b'{"stream":', b'"stream"'):
        assert rewrite_for_usage(body).body is None


def test_wants_body_only_for_chat_posts_of_listed_providers() -> None:
    assert wants_body("openai", "POST", "/v1/chat/completions", None, PROVIDERS)
    assert wants_body("openai", "POST", "/v1/completions", "100", PROVIDERS)
    assert not wants_body("openai", "GET", "/v1/chat/completions", None, PROVIDERS)
    assert not wants_body("openai", "POST", "/v1/embeddings", None, PROVIDERS)
    assert not wants_body("mistral", "POST", "/v1/chat/completions", None, PROVIDERS)
    assert not wants_body(None, "POST", "/v1/chat/completions", None, PROVIDERS)
    too_big = str(MAX_REWRITE_BYTES + 1)
    assert not wants_body("openai", "POST", "/v1/chat/completions", too_big, PROVIDERS)


def test_wants_body_for_the_model_where_the_response_names_none() -> None:
    # Cohere's chat and embed responses name no model, nor do their paths.
    assert wants_body("cohere", "POST", "/v2/chat", None, PROVIDERS)
    assert wants_body("cohere", "POST", "/v1/chat/", None, PROVIDERS)
    assert wants_body("cohere", "POST", "/v2/embed", "100", PROVIDERS)
    # ... whatever the include_usage set (the option can be switched off)
    assert wants_body("cohere", "POST", "/v2/chat", None, frozenset())
    assert not wants_body("cohere", "POST", "/v2/rerank", None, PROVIDERS)
    assert not wants_body("cohere", "GET", "/v2/chat", None, PROVIDERS)
    assert not wants_body("mistral", "POST", "/v1/chat", None, PROVIDERS)
    assert not wants_body("cohere", "POST", "/v2/chat", str(MAX_REWRITE_BYTES + 1), PROVIDERS)


def test_read_model_never_rewrites() -> None:
    r = read_model(b'{"model":"command-a-03-2025","stream":true,"messages":[]}')
    assert r.body is None
    assert r.request_model == "command-a-03-2025"
    assert read_model(b"not json").request_model is None
    assert read_model(b'{"model":7}').request_model is None


def test_body_use_names_why_the_body_is_asked_for() -> None:
    assert body_use("openai", "POST", "/v1/chat/completions", None, PROVIDERS) == INCLUDE_USAGE
    assert body_use("cohere", "POST", "/v2/chat", None, PROVIDERS) == READ_MODEL
    assert body_use("openai", "POST", "/v1/embeddings", None, PROVIDERS) is None
