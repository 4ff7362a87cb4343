"""The providers of the routing contract and their default upstreams.

Each default was checked against the recorded corpus (`tests/corpus/index.jsonl`,
`request_host` and `request_path`): once Envoy strips `/<provider>`, the recorded path is what
reaches the upstream, so `/openrouter/api/v1/chat/completions` goes to
`https://openrouter.ai/api/v1/chat/completions`. A test replays every corpus path through a
real Envoy to keep it so.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Provider:
    """One route of the contract. `default_upstream` None = account-specific, must be configured."""

    id: str
    default_upstream: str | None
    # What an operator has to pass when there is no usable default (shown in the 503 body).
    example_upstream: str
    note: str = ""


PROVIDERS: tuple[Provider, ...] = (
    Provider("openai", "https://api.openai.com", "https://api.openai.com"),
    Provider(
        "azure_openai",
        None,
        "https://<resource>.openai.azure.com",
        "per-resource host; corpus paths are /openai/deployments/<d>/... and /openai/v1/...",
    ),
    Provider("anthropic", "https://api.anthropic.com", "https://api.anthropic.com"),
    Provider(
        "gemini",
        "https://generativelanguage.googleapis.com",
        "https://generativelanguage.googleapis.com",
    ),
    Provider(
        "vertex_ai",
        "https://aiplatform.googleapis.com",
        "https://us-central1-aiplatform.googleapis.com",
        "global endpoint; regional hosts (<region>-aiplatform.googleapis.com) via --upstream",
    ),
    Provider(
        "bedrock",
        "https://bedrock-runtime.us-east-1.amazonaws.com",
        "https://bedrock-runtime.eu-central-1.amazonaws.com",
        "us-east-1; other regions via --upstream",
    ),
    Provider(
        "bedrock_mantle",
        "https://bedrock-mantle.us-east-1.api.aws",
        "https://bedrock-mantle.us-east-1.api.aws",
        "AWS OpenAI-compatible endpoint (corpus request_host)",
    ),
    Provider("mistral", "https://api.mistral.ai", "https://api.mistral.ai"),
    Provider("groq", "https://api.groq.com", "https://api.groq.com", "paths are /openai/v1/..."),
    Provider("deepseek", "https://api.deepseek.com", "https://api.deepseek.com"),
    Provider(
        "openrouter", "https://openrouter.ai", "https://openrouter.ai", "paths are /api/v1/..."
    ),
    Provider(
        "together",
        "https://api.together.xyz",
        "https://api.together.xyz",
        "the SDKs' default host; the corpus was recorded against api.together.ai (same API)",
    ),
    Provider("cerebras", "https://api.cerebras.ai", "https://api.cerebras.ai"),
    Provider(
        "huggingface",
        "https://router.huggingface.co",
        "https://router.huggingface.co",
        "inference router; paths are /<backend>/...",
    ),
    Provider("zai", "https://api.z.ai", "https://api.z.ai", "paths are /api/paas/v4/..."),
    Provider(
        "snowflake",
        None,
        "https://<account>.snowflakecomputing.com",
        "per-account host; paths are /api/v2/cortex/...",
    ),
    Provider("cohere", "https://api.cohere.com", "https://api.cohere.com"),
    Provider(
        "ollama",
        "http://127.0.0.1:11434",
        "http://127.0.0.1:11434",
        "a local server; Ollama's cloud (https://ollama.com) via --upstream",
    ),
    Provider("voyage", "https://api.voyageai.com", "https://api.voyageai.com"),
)

PROVIDER_IDS: tuple[str, ...] = tuple(p.id for p in PROVIDERS)
