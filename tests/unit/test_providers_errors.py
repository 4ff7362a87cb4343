"""Gate refusals are shaped like each provider's own errors, so SDKs raise their usual types."""

from __future__ import annotations

import orjson
import pytest

from tokenbook.providers import KNOWN_PROVIDERS, error_reply


def test_openai_shape() -> None:
    r = error_reply("openai", 401, "unknown_key", "unknown API key")
    body = orjson.loads(r.body)
    assert body["error"]["code"] == "unknown_key"
    assert body["error"]["message"].startswith("tokenbook: ")
    assert ("content-type", "application/json") in r.headers


def test_anthropic_shape() -> None:
    body = orjson.loads(error_reply("anthropic", 401, "unknown_key", "m").body)
    assert body["type"] == "error"
    assert body["error"]["type"] == "authentication_error"


def test_google_shape() -> None:
    body = orjson.loads(error_reply("gemini", 429, "budget", "m").body)
    assert body["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert body["error"]["code"] == 429


def test_bedrock_shape_has_error_type_header() -> None:
    r = error_reply("bedrock", 403, "suspended", "m")
    assert dict(r.headers)["x-amzn-errortype"] == "AccessDeniedException"


@pytest.mark.parametrize("provider", sorted(KNOWN_PROVIDERS))
def test_every_provider_gets_json_with_the_message(provider: str) -> None:
    r = error_reply(provider, 503, "registry_unavailable", "retry shortly")
    assert r.status == 503
    assert b"retry shortly" in r.body
    orjson.loads(r.body)
