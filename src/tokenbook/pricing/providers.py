"""tokenbook provider ids (route prefixes) -> where genai-prices keeps their prices.

One row per provider of DESIGN.md's routing contract. The genai-prices ids are those of the
bundled snapshot (``genai_prices.data.providers``); `tests/unit/test_pricing_catalogue.py`
checks that every id named here exists in it.

Provider ids that are not in this table (an operator's own route) are looked up with
genai-prices' own provider matching (``find_provider_by_id``: its ids and ``provider_match``
rules, e.g. ``fireworks``, ``xai``); if that finds nothing, the model is matched across
providers, but only where the match is unambiguous (see `catalogue`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Route:
    """How to find prices for one tokenbook provider."""

    genai_ids: tuple[str, ...] = ()  # genai-prices provider ids, tried in order
    # Never priced from the snapshot: self-hosted models have no list price (overrides still apply).
    local: bool = False
    # Model ids are Bedrock ids: ARNs, cross-region prefixes (us., eu., global., ...), versions.
    bedrock_ids: bool = False
    # OpenRouter: a "vendor/model" id the snapshot lacks is priced at the vendor's own list price.
    vendor_fallback: bool = False
    # Hugging Face router: prices are in genai-prices' per-backend "huggingface_<backend>" ids.
    huggingface_router: bool = False
    # No genai-prices provider: match the model across providers if unambiguous.
    cross_provider: bool = False


ROUTES: dict[str, Route] = {
    "openai": Route(("openai",)),
    # genai-prices' "azure" falls back to openai (and anthropic, deepseek, x-ai, moonshotai) itself.
    "azure_openai": Route(("azure",)),
    "anthropic": Route(("anthropic",)),
    # "google" covers the Gemini API and Vertex AI; it falls back to anthropic (Claude on Vertex).
    "gemini": Route(("google",)),
    "vertex_ai": Route(("google",)),
    "bedrock": Route(("aws",), bedrock_ids=True),
    # Bedrock's OpenAI-compatible endpoint sells the same models at Bedrock's prices.
    "bedrock_mantle": Route(("aws",), bedrock_ids=True),
    "mistral": Route(("mistral",)),
    "groq": Route(("groq",)),
    "deepseek": Route(("deepseek",)),
    "openrouter": Route(("openrouter",), vendor_fallback=True),
    "together": Route(("together",)),
    "cerebras": Route(("cerebras",)),
    "huggingface": Route(huggingface_router=True),
    "zai": Route(("zai",)),
    # Snowflake Cortex is not in genai-prices; its models are other vendors' (e.g. Claude).
    "snowflake": Route(cross_provider=True),
    "cohere": Route(("cohere",)),
    "ollama": Route(local=True),
    "voyage": Route(("voyageai",)),
}

#: genai-prices' provider-id prefix for the Hugging Face router backends.
HUGGINGFACE_PREFIX = "huggingface_"
