"""Which provider API a response belongs to, from what the route and the request line say.

The meter knows the route's provider id (never client-chosen), the provider's own path (route
prefix removed), the query string and the request headers. That is enough to pick the usage
parser; the response's content type then picks the framing (`tokenbook.usage.pipeline`).

Paths are matched on their distinctive tail, so the OpenAI-compatible providers need no entry of
their own (Azure ``/openai/deployments/X/chat/completions``, OpenRouter ``/api/v1/...``, the
Hugging Face router ``/novita/v3/openai/...``, Snowflake ``/api/v2/cortex/v1/...``, Groq
``/openai/v1/...``, DeepSeek's bare ``/chat/completions``). A *dialect* (``openai``,
``anthropic``, ``gemini``, ``bedrock``, ``cohere``, ``ollama``) settles the few paths that mean
different things to different providers (``/v1/chat`` is Cohere's, ``/messages`` is Anthropic's);
providers an operator adds in the config name the dialect they speak.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from urllib.parse import parse_qsl, unquote

__all__ = [
    "DEFAULT_DIALECTS",
    "Api",
    "detect_api",
    "dialect_for",
    "request_model_from_path",
]


class Api(StrEnum):
    """One provider API whose response format tokenbook can read."""

    CHAT = "chat"  # OpenAI-style /chat/completions (and every compatible provider)
    COMPLETIONS = "completions"  # legacy /completions
    RESPONSES = "responses"  # OpenAI Responses API
    EMBEDDINGS = "embeddings"  # every embedding API (OpenAI-style, Gemini, Vertex, Cohere, ...)
    MESSAGES = "messages"  # Anthropic Messages
    COUNT_TOKENS = "count_tokens"  # token-count estimates (Anthropic, Gemini, OpenAI)
    GENERATE_CONTENT = "generate_content"  # Gemini/Vertex :generateContent (one JSON document)
    STREAM_GENERATE_CONTENT = "stream_generate_content"  # :streamGenerateContent, JSON array
    STREAM_GENERATE_CONTENT_SSE = "stream_generate_content_sse"  # ...?alt=sse
    CONVERSE = "converse"  # Bedrock /model/X/converse
    CONVERSE_STREAM = "converse_stream"  # Bedrock /model/X/converse-stream
    INVOKE = "invoke"  # Bedrock /model/X/invoke (model-native body)
    INVOKE_STREAM = "invoke_stream"  # Bedrock /model/X/invoke-with-response-stream
    COHERE_CHAT_V1 = "cohere_chat_v1"
    COHERE_CHAT_V2 = "cohere_chat_v2"
    OLLAMA_CHAT = "ollama_chat"  # native /api/chat
    OLLAMA_GENERATE = "ollama_generate"  # native /api/generate
    AUDIO_TRANSCRIPTIONS = "audio_transcriptions"  # /audio/transcriptions, /audio/translations
    UNKNOWN = "unknown"

    @property
    def family(self) -> str:
        """The API name without the stream variant (the corpus ``api`` column uses these)."""
        return _FAMILY.get(self, self.value)


_FAMILY: dict[Api, str] = {
    Api.STREAM_GENERATE_CONTENT: "generate_content",
    Api.STREAM_GENERATE_CONTENT_SSE: "generate_content",
    Api.CONVERSE_STREAM: "converse",
    Api.INVOKE_STREAM: "invoke",
}

#: Route provider id -> the dialect it speaks. Operators map their own providers in the config.
DEFAULT_DIALECTS: Mapping[str, str] = {
    "openai": "openai",
    "azure_openai": "openai",
    "bedrock_mantle": "openai",
    "mistral": "openai",
    "groq": "openai",
    "deepseek": "openai",
    "openrouter": "openai",
    "together": "openai",
    "cerebras": "openai",
    "huggingface": "openai",
    "zai": "openai",
    "snowflake": "openai",
    "voyage": "openai",
    "vllm": "openai",
    "anthropic": "anthropic",
    "gemini": "gemini",
    "vertex_ai": "gemini",
    "bedrock": "bedrock",
    "cohere": "cohere",
    "ollama": "ollama",
}

# Bedrock runtime: /model/<url-encoded model id>/<operation>
_BEDROCK = re.compile(
    r"/model/([^/]+)/(converse|converse-stream|invoke|invoke-with-response-stream)$"
)
_BEDROCK_OPS: Mapping[str, Api] = {
    "converse": Api.CONVERSE,
    "converse-stream": Api.CONVERSE_STREAM,
    "invoke": Api.INVOKE,
    "invoke-with-response-stream": Api.INVOKE_STREAM,
}
# Gemini / Vertex: .../models/<model>:<method>
_GOOGLE = re.compile(r"/models/([^/:]+):([A-Za-z]+)$")
_MODEL_IN_PATH = (
    re.compile(r"/models/([^/:]+):"),  # Gemini, Vertex
    re.compile(r"/model/([^/]+)/"),  # Bedrock
    re.compile(r"/deployments/([^/]+)/"),  # Azure OpenAI
)
# Tails that mean the same thing for every OpenAI-compatible provider.
_OPENAI_TAILS: tuple[tuple[str, Api], ...] = (
    ("/chat/completions", Api.CHAT),
    ("/completions", Api.COMPLETIONS),
    ("/responses", Api.RESPONSES),
    ("/embeddings", Api.EMBEDDINGS),
    ("/audio/transcriptions", Api.AUDIO_TRANSCRIPTIONS),
    ("/audio/translations", Api.AUDIO_TRANSCRIPTIONS),
)
_OLLAMA_NATIVE: Mapping[str, Api] = {
    "/api/chat": Api.OLLAMA_CHAT,
    "/api/generate": Api.OLLAMA_GENERATE,
    "/api/embed": Api.EMBEDDINGS,
    "/api/embeddings": Api.EMBEDDINGS,
}
_COHERE_NATIVE: Mapping[str, Api] = {
    "/v1/chat": Api.COHERE_CHAT_V1,
    "/v2/chat": Api.COHERE_CHAT_V2,
    "/v1/embed": Api.EMBEDDINGS,
    "/v2/embed": Api.EMBEDDINGS,
}


def dialect_for(provider: str, dialect: str | None = None) -> str | None:
    """The dialect to use: the explicit one, else the default for a known provider id."""
    return dialect or DEFAULT_DIALECTS.get(provider)


def request_model_from_path(path: str) -> str | None:
    """The model named in the URL (Gemini ``/models/X:``, Bedrock ``/model/X/``, Azure
    ``/deployments/X/``), URL-decoded; ``None`` if the path names none."""
    for pattern in _MODEL_IN_PATH:
        match = pattern.search(path)
        if match:
            return unquote(match.group(1))
    return None


def detect_api(
    provider: str,
    path: str,
    query: str = "",
    request_headers: Mapping[str, str] | None = None,
    *,
    dialect: str | None = None,
) -> Api:
    """The API of a request, from the route's provider id, the provider path and the query.

    ``request_headers`` is accepted so that callers pass what they have; the current rules need
    only the path and the query (``alt=sse``). Unrecognised paths give `Api.UNKNOWN`, which the
    pipeline books as ``unsupported`` rather than guessing.
    """
    del request_headers  # no rule needs them yet; kept in the signature for callers
    spoken = dialect_for(provider, dialect)
    path = path.split("?", 1)[0].rstrip("/") or "/"

    bedrock = _BEDROCK.search(path)
    if bedrock:
        api = _BEDROCK_OPS[bedrock.group(2)]
        if api is Api.INVOKE and _is_embedding_model(unquote(bedrock.group(1))):
            return Api.EMBEDDINGS
        return api

    google = _GOOGLE.search(path)
    if google:
        return _google_api(google.group(1), google.group(2), path, query)

    if path.endswith(("/messages/count_tokens", "/responses/input_tokens", "/count-tokens")):
        return Api.COUNT_TOKENS  # Anthropic, OpenAI, Bedrock CountTokens: estimates
    if spoken == "cohere" and path in _COHERE_NATIVE:
        return _COHERE_NATIVE[path]
    if path in _OLLAMA_NATIVE and spoken in ("ollama", None):
        return _OLLAMA_NATIVE[path]
    if path.endswith("/v1/messages") or (spoken == "anthropic" and path.endswith("/messages")):
        return Api.MESSAGES
    for tail, api in _OPENAI_TAILS:
        if path.endswith(tail):
            return api
    return Api.UNKNOWN


def _google_api(model: str, method: str, path: str, query: str) -> Api:
    if method == "generateContent":
        return Api.GENERATE_CONTENT
    if method == "streamGenerateContent":
        if _alt_is_sse(query):
            return Api.STREAM_GENERATE_CONTENT_SSE
        return Api.STREAM_GENERATE_CONTENT
    if method in ("embedContent", "batchEmbedContents", "asyncBatchEmbedContent"):
        return Api.EMBEDDINGS
    if method == "predict" and _is_embedding_model(model):
        return Api.EMBEDDINGS
    if method == "countTokens":
        return Api.COUNT_TOKENS
    # Anthropic models on Vertex speak the Messages API (body and SSE events) unchanged.
    if method in ("rawPredict", "streamRawPredict") and "/publishers/anthropic/" in path:
        return Api.MESSAGES
    return Api.UNKNOWN


def _alt_is_sse(query: str) -> bool:
    # Google accepts both ``alt`` and the system-parameter spelling ``$alt``; the value may
    # carry options after ';' (``$alt=json;enum-encoding=int``).
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in ("alt", "$alt"):
            return value.split(";", 1)[0].strip().lower() == "sse"
    return False


def _is_embedding_model(model: str) -> bool:
    return "embed" in model.lower()
