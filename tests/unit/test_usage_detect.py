"""API detection from provider id, path and query, and the model named in the URL."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.test_corpus import ROWS
from tokenbook.usage import Api, detect_api, request_model_from_path
from tokenbook.usage.detect import dialect_for


@pytest.mark.parametrize("row", ROWS, ids=[r["file"] for r in ROWS])
def test_every_corpus_request_is_detected_as_its_api(row: dict[str, Any]) -> None:
    api = detect_api(row["provider"], row["request_path"], row["request_query"] or "")
    assert api.family == row["api"]


def test_gemini_stream_framing_follows_alt() -> None:
    path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    assert detect_api("gemini", path, "alt=sse") is Api.STREAM_GENERATE_CONTENT_SSE
    assert detect_api("gemini", path, "alt=sse&key=x") is Api.STREAM_GENERATE_CONTENT_SSE
    assert detect_api("vertex_ai", path, "%24alt=json%3Benum-encoding%3Dint") is (
        Api.STREAM_GENERATE_CONTENT
    )
    assert detect_api("gemini", path, "") is Api.STREAM_GENERATE_CONTENT
    assert detect_api("gemini", path.replace("stream", "").replace("GenerateC", "generateC")) is (
        Api.GENERATE_CONTENT
    )


@pytest.mark.parametrize(
    ("path", "api"),
    [
        ("/model/us.amazon.nova-micro-v1%3A0/converse", Api.CONVERSE),
        ("/model/us.amazon.nova-micro-v1%3A0/converse-stream", Api.CONVERSE_STREAM),
        ("/model/anthropic.claude-3-5-haiku-20241022-v1:0/invoke", Api.INVOKE),
        ("/model/anthropic.claude-v2/invoke-with-response-stream", Api.INVOKE_STREAM),
        ("/model/amazon.titan-embed-text-v2%3A0/invoke", Api.EMBEDDINGS),
        ("/model/anthropic.claude-sonnet-4-5-v1%3A0/count-tokens", Api.COUNT_TOKENS),
        (
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fx/converse",
            Api.CONVERSE,
        ),
    ],
)
def test_bedrock_operations(path: str, api: Api) -> None:
    assert detect_api("bedrock", path) is api


@pytest.mark.parametrize(
    ("provider", "path", "api"),
    [
        ("openai", "/v1/responses", Api.RESPONSES),
        ("openai", "/v1/responses/resp_123", Api.UNKNOWN),  # a retrieval, not consumption
        ("openai", "/v1/responses/input_tokens", Api.COUNT_TOKENS),
        ("openai", "/v1/audio/translations", Api.AUDIO_TRANSCRIPTIONS),
        ("openai", "/v1/threads/t/messages", Api.UNKNOWN),  # Assistants, not Anthropic
        ("anthropic", "/v1/messages/count_tokens", Api.COUNT_TOKENS),
        ("deepseek", "/anthropic/v1/messages", Api.MESSAGES),  # an Anthropic-compatible endpoint
        ("gemini", "/v1beta/models/gemini-2.5-flash:countTokens", Api.COUNT_TOKENS),
        ("gemini", "/v1beta/openai/chat/completions", Api.CHAT),
        (
            "vertex_ai",
            "/v1/projects/p/locations/l/publishers/google/models/m:embedContent",
            Api.EMBEDDINGS,
        ),
        (
            "vertex_ai",
            "/v1/projects/p/locations/l/publishers/google/models/imagen-3:predict",
            Api.UNKNOWN,
        ),
        (
            "vertex_ai",
            "/v1/projects/p/locations/l/publishers/anthropic/models/claude:rawPredict",
            Api.MESSAGES,
        ),
        (
            "vertex_ai",
            "/v1/projects/p/locations/l/publishers/anthropic/models/claude:streamRawPredict",
            Api.MESSAGES,
        ),
        ("cohere", "/v2/embed", Api.EMBEDDINGS),
        ("cohere", "/compatibility/v1/chat/completions", Api.CHAT),
        ("ollama", "/api/embed", Api.EMBEDDINGS),
        ("ollama", "/v1/chat/completions", Api.CHAT),
        ("openai", "/v1/chat/completions/", Api.CHAT),  # trailing slash
        ("openai", "/v1/models", Api.UNKNOWN),
    ],
)
def test_paths(provider: str, path: str, api: Api) -> None:
    assert detect_api(provider, path) is api


def test_dialect_override_for_operator_providers() -> None:
    # An operator-added provider is unknown by id; its dialect settles the ambiguous paths.
    assert dialect_for("my-cohere") is None
    assert detect_api("my-cohere", "/v1/chat") is Api.UNKNOWN
    assert detect_api("my-cohere", "/v1/chat", dialect="cohere") is Api.COHERE_CHAT_V1
    assert detect_api("my-claude", "/messages", dialect="anthropic") is Api.MESSAGES
    assert detect_api("my-vllm", "/v1/chat/completions", dialect="openai") is Api.CHAT
    # A dialect that is not Ollama's keeps Ollama's native paths out.
    assert detect_api("my-vllm", "/api/chat", dialect="openai") is Api.UNKNOWN
    assert detect_api("my-ollama", "/api/chat") is Api.OLLAMA_CHAT


# The corpus takes request_model from the request body when it names one; these two Azure
# requests sent "model": "embedding" to the deployment "test-deployment".
_BODY_MODEL_DIFFERS = {
    "azure_openai/embeddings/error_401_access_denied.json",
    "azure_openai/embeddings/text_embedding_3_large.json",
}


@pytest.mark.parametrize("row", ROWS, ids=[r["file"] for r in ROWS])
def test_request_model_from_path_matches_the_corpus(row: dict[str, Any]) -> None:
    from_path = request_model_from_path(row["request_path"])
    if from_path is not None and row["file"] not in _BODY_MODEL_DIFFERS:
        assert from_path == row["request_model"]


def test_request_model_from_path_forms() -> None:
    assert request_model_from_path("/v1beta/models/gemini-2.5-pro:generateContent") == (
        "gemini-2.5-pro"
    )
    assert request_model_from_path("/model/us.anthropic.claude-v1%3A0/converse") == (
        "us.anthropic.claude-v1:0"
    )
    assert request_model_from_path("/openai/deployments/gpt-4o/chat/completions") == "gpt-4o"
    assert request_model_from_path("/v1/chat/completions") is None
