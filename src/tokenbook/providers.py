"""Provider ids (route prefixes and the `provider` label) and each provider's error shape.

The ids are those of DESIGN.md's routing contract. When the gate refuses a request it answers in
the provider's own error format, so that the official SDK raises its normal typed error
(`openai.AuthenticationError`, `anthropic.AuthenticationError`, ...) with tokenbook's message.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

KNOWN_PROVIDERS: frozenset[str] = frozenset(
    {
        "openai",
        "azure_openai",
        "anthropic",
        "gemini",
        "vertex_ai",
        "bedrock",
        "bedrock_mantle",
        "mistral",
        "groq",
        "deepseek",
        "openrouter",
        "together",
        "cerebras",
        "huggingface",
        "zai",
        "snowflake",
        "cohere",
        "ollama",
        "voyage",
    }
)

# Error `type` strings in the OpenAI and Anthropic vocabularies, by HTTP status.
_OPENAI_TYPES = {
    401: "invalid_request_error",
    403: "permission_denied",
    429: "insufficient_quota",
    503: "service_unavailable",
}
_ANTHROPIC_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
    503: "overloaded_error",
}
_GOOGLE_STATUS = {
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    429: "RESOURCE_EXHAUSTED",
    503: "UNAVAILABLE",
}
_AWS_TYPES = {
    401: "UnrecognizedClientException",
    403: "AccessDeniedException",
    429: "ThrottlingException",
    503: "ServiceUnavailableException",
}


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """An immediate response the gate sends instead of forwarding the request."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]


def error_reply(provider: str, status: int, code: str, message: str) -> ErrorReply:
    """The JSON error body a client of `provider` expects, with tokenbook's `code` and message."""
    message = f"tokenbook: {message}"
    headers: list[tuple[str, str]] = [
        ("content-type", "application/json"),
        ("x-tokenbook-error", code),
    ]
    body: object
    if provider == "anthropic":
        body = {
            "type": "error",
            "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message},
        }
    elif provider in {"gemini", "vertex_ai"}:
        body = {
            "error": {
                "code": status,
                "message": message,
                "status": _GOOGLE_STATUS.get(status, "UNKNOWN"),
            }
        }
    elif provider == "bedrock":
        body = {"message": message}
        headers.append(("x-amzn-errortype", _AWS_TYPES.get(status, "InternalServerException")))
    elif provider in {"cohere", "voyage"}:
        body = {"message": message}
    elif provider == "ollama":
        body = {"error": message}
    else:  # OpenAI and every OpenAI-compatible API
        body = {
            "error": {
                "message": message,
                "type": _OPENAI_TYPES.get(status, "api_error"),
                "param": None,
                "code": code,
            }
        }
    return ErrorReply(status=status, body=orjson.dumps(body), headers=tuple(headers))
