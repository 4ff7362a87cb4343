"""Which models of the recorded provider corpus can be priced (tests/corpus/index.jsonl).

The meter prices the model the provider reports having served, falling back to the requested one
(DESIGN.md), so a sample counts as priceable if either can be priced. Run with ``-s`` to see the
table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tokenbook.pricing import Pricer
from tokenbook.usage.types import TokenUsage

INDEX = Path(__file__).resolve().parents[1] / "corpus" / "index.jsonl"

# Every billed sample of these providers must be priceable from the bundled data.
MUST_PRICE = {
    "openai",
    "azure_openai",
    "anthropic",
    "gemini",
    "vertex_ai",
    "deepseek",
    "mistral",
    "groq",
    "cerebras",
    "together",
    "zai",
    "snowflake",
}
# Not a consumption record, or no model named.
SKIPPED_APIS = {"count_tokens"}


def billed_samples() -> list[dict[str, Any]]:
    out = []
    for line in INDEX.read_text().splitlines():
        sample = json.loads(line)
        if sample["http_status"] != 200 or sample["api"] in SKIPPED_APIS:
            continue
        if sample["expected"]["response_model"] is None and sample["request_model"] is None:
            continue
        out.append(sample)
    return out


def usage_for(sample: dict[str, Any]) -> TokenUsage:
    # Embeddings have no output price; everything else is priced with output tokens too.
    return (
        TokenUsage(input=1000)
        if sample["api"] == "embeddings"
        else TokenUsage(input=1000, output=100)
    )


def test_corpus_models_priceable() -> None:
    pricer = Pricer()
    samples = billed_samples()
    assert len(samples) > 80
    rows: list[tuple[str, str, str, str]] = []
    priced_by_provider: dict[str, list[bool]] = {}
    for sample in samples:
        provider = sample["provider"]
        served, requested = sample["expected"]["response_model"], sample["request_model"]
        price = None
        for model in (served, requested):
            if model is not None and price is None:
                price = pricer.price(provider, model, usage_for(sample))
        priced_by_provider.setdefault(provider, []).append(price is not None)
        shown = served or requested
        result = "-" if price is None else f"{price.matched_provider}/{price.matched_model}"
        rows.append((provider, sample["api"], str(shown), result))
        if price is not None:
            assert sum(price.by_type.values()) == price.total_usd
    print()
    for row in sorted(set(rows)):
        print(f"{row[0]:15} {row[1]:15} {row[2]:52} {row[3]}")
    for provider, flags in sorted(priced_by_provider.items()):
        print(f"{provider:15} {sum(flags)}/{len(flags)} priced")

    unpriced = [r for r in rows if r[0] in MUST_PRICE and r[3] == "-"]
    assert unpriced == []
    # Local models have no list price.
    assert not any(priced_by_provider["ollama"])
    total = sum(len(v) for v in priced_by_provider.values())
    priced = sum(sum(v) for v in priced_by_provider.values())
    assert priced / total > 0.8


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("bedrock", "us.anthropic.claude-sonnet-4-5-20250929-v1:0"),
        ("bedrock", "eu.anthropic.claude-haiku-4-5-20251001-v1:0"),
        ("bedrock", "us.amazon.nova-lite-v1:0"),
        ("bedrock_mantle", "openai.gpt-oss-120b"),
        ("openrouter", "anthropic/claude-4.6-sonnet-20260217"),
        ("openrouter", "x-ai/grok-4"),
        ("cohere", "command-r7b-12-2024"),
    ],
)
def test_corpus_models_outside_the_big_three(provider: str, model: str) -> None:
    assert Pricer().known(provider, model)
