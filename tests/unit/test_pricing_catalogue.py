"""Provider table, model id normalisation and cross-provider matching, on the bundled data."""

from __future__ import annotations

import pytest

from tokenbook.pricing import Pricer
from tokenbook.pricing.catalogue import bundled_catalogue
from tokenbook.pricing.names import bedrock_candidates, generic_candidates
from tokenbook.pricing.providers import ROUTES
from tokenbook.providers import KNOWN_PROVIDERS
from tokenbook.usage.types import TokenUsage

USAGE = TokenUsage(input=10_000, cached_input=2_000, output=1_000)


@pytest.fixture(scope="module")
def pricer() -> Pricer:
    return Pricer()


def test_every_tokenbook_provider_has_a_route_to_real_ids() -> None:
    assert set(ROUTES) == KNOWN_PROVIDERS
    ids = bundled_catalogue().provider_ids
    for provider, route in ROUTES.items():
        assert set(route.genai_ids) <= ids, provider
        kinds = [route.local, route.cross_provider, route.huggingface_router, bool(route.genai_ids)]
        assert sum(kinds) == 1, provider
    assert any(i.startswith("huggingface_") for i in ids)


def test_generic_candidates() -> None:
    assert generic_candidates("gpt-4o") == ["gpt-4o"]
    assert generic_candidates("models/gemini-2.5-flash") == [
        "models/gemini-2.5-flash",
        "gemini-2.5-flash",
    ]
    assert generic_candidates("projects/p/locations/l/publishers/google/models/gemini-2.5-pro")[
        -1
    ] == ("gemini-2.5-pro")
    assert generic_candidates("a%3Ab") == ["a%3Ab", "a:b"]
    assert generic_candidates("  ") == []


def test_bedrock_candidates() -> None:
    arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-x-v2:0"
    assert bedrock_candidates(arn) == [arn, "us.anthropic.claude-x-v2:0", "anthropic.claude-x-v2:0"]
    assert bedrock_candidates("openai.gpt-oss-120b") == [
        "openai.gpt-oss-120b",
        "openai.gpt-oss-120b-1:0",
        "openai.gpt-oss-120b-v1:0",
    ]


@pytest.mark.parametrize(
    ("provider", "model", "reference"),
    [
        # Resource names and prefixes price like the bare id.
        ("gemini", "models/gemini-2.5-flash", ("gemini", "gemini-2.5-flash")),
        (
            "vertex_ai",
            "projects/p/locations/us-central1/publishers/google/models/gemini-2.5-pro",
            ("vertex_ai", "gemini-2.5-pro"),
        ),
        (
            "vertex_ai",
            "publishers/anthropic/models/claude-sonnet-4-5@20250929",
            ("anthropic", "claude-sonnet-4-5"),
        ),
        (
            "bedrock",
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/"
            "us.anthropic.claude-3-5-sonnet-20241022-v2:0",
            ("bedrock", "us.anthropic.claude-3-5-sonnet-20241022-v2:0"),
        ),
        (
            "bedrock",
            "us.anthropic.claude-3-5-sonnet-20241022-v2%3A0",
            ("bedrock", "us.anthropic.claude-3-5-sonnet-20241022-v2:0"),
        ),
        ("bedrock_mantle", "openai.gpt-oss-120b", ("bedrock", "openai.gpt-oss-120b-1:0")),
        ("azure_openai", "gpt-4o-2024-11-20", ("azure_openai", "gpt-4o")),
    ],
)
def test_normalised_ids_price_like_the_plain_id(
    pricer: Pricer, provider: str, model: str, reference: tuple[str, str]
) -> None:
    price = pricer.price(provider, model, USAGE)
    expected = pricer.price(*reference, USAGE)
    assert price is not None
    assert expected is not None
    assert price.total_usd == pytest.approx(expected.total_usd)
    assert price.matched_model == expected.matched_model


def test_bedrock_global_and_regional_prices_stay_distinct(pricer: Pricer) -> None:
    regional = pricer.price("bedrock", "us.anthropic.claude-sonnet-4-5-20250929-v1:0", USAGE)
    global_ = pricer.price("bedrock", "global.anthropic.claude-sonnet-4-5-20250929-v1:0", USAGE)
    assert regional is not None
    assert global_ is not None
    assert regional.matched_model.startswith("regional.")
    assert global_.matched_model.startswith("global.")


def test_application_inference_profile_is_unknown(pricer: Pricer) -> None:
    arn = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3d4e5f6"
    assert pricer.price("bedrock", arn, USAGE) is None


def test_openrouter_vendor_fallback(pricer: Pricer) -> None:
    price = pricer.price("openrouter", "x-ai/grok-4", USAGE)
    direct = pricer.price("x-ai", "grok-4", USAGE)
    assert price is not None
    assert direct is not None
    assert price.matched_provider == "x-ai"
    assert price.total_usd == direct.total_usd
    # A variant the snapshot lacks is not priced at the vendor's paid price.
    assert pricer.price("openrouter", "minimax/minimax-m2:free", USAGE) is None


def test_huggingface_router(pricer: Pricer) -> None:
    model = "meta-llama/Llama-3.1-8B-Instruct"
    by_backend = {
        backend: pricer.price("huggingface", f"{model}:{backend}", USAGE)
        for backend in ("cerebras", "novita")
    }
    assert all(p is not None for p in by_backend.values())
    totals = {b: p.total_usd for b, p in by_backend.items() if p is not None}
    assert totals["cerebras"] != totals["novita"]
    # Without a backend the router may pick any of them, at different prices: ambiguous.
    assert pricer.price("huggingface", model, USAGE) is None
    assert pricer.price("huggingface", f"{model}:fastest", USAGE) is None
    assert pricer.price("huggingface", f"{model}:no-such-backend", USAGE) is None


def test_unknown_provider_matches_across_providers_only_if_unambiguous(pricer: Pricer) -> None:
    # genai-prices' own inference of the maker (model_match: "claude" -> anthropic).
    snowflake = pricer.price("snowflake", "claude-sonnet-4-6", USAGE)
    anthropic = pricer.price("anthropic", "claude-sonnet-4-6", USAGE)
    assert snowflake is not None
    assert anthropic is not None
    assert (snowflake.matched_provider, snowflake.total_usd) == ("anthropic", anthropic.total_usd)
    # Listed by a single provider.
    groq_only = pricer.price("my-gateway", "llama-3.3-70b-versatile", USAGE)
    assert groq_only is not None
    assert groq_only.matched_provider == "groq"
    # Listed by several providers at different prices.
    assert pricer.price("my-gateway", "meta-llama/llama-3.1-8b-instruct", USAGE) is None


def test_operator_route_named_like_a_genai_prices_provider(pricer: Pricer) -> None:
    price = pricer.price("fireworks", "accounts/fireworks/models/llama-v3p1-8b-instruct", USAGE)
    assert price is not None
    assert price.matched_provider == "fireworks"
