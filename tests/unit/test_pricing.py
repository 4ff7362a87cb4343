"""Pricer against genai-prices' own calculation, on the real bundled data (no fakes)."""

from __future__ import annotations

import socket
import threading
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import genai_prices
import pytest
from genai_prices import data_snapshot, update_prices
from genai_prices.data import providers as genai_providers

from tokenbook.pricing import (
    SOURCE_GENAI_PRICES,
    SOURCE_OVERRIDE,
    ModelPriceOverride,
    Price,
    PriceOverrides,
    Pricer,
)
from tokenbook.pricing.catalogue import Catalogue
from tokenbook.usage.types import TOKEN_TYPES, TokenUsage

AT = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
MIX = TokenUsage(input=1200, cached_input=3000, cache_write=500, output=400, reasoning=250)

# (tokenbook provider, model as reported, genai-prices provider id, genai-prices model ref)
KNOWN = [
    ("openai", "gpt-4o-2024-08-06", "openai", "gpt-4o-2024-08-06"),
    ("openai", "o3-mini-2025-01-31", "openai", "o3-mini-2025-01-31"),
    ("openai", "gpt-5-nano-2025-08-07", "openai", "gpt-5-nano-2025-08-07"),
    ("azure_openai", "gpt-4o-2024-11-20", "azure", "gpt-4o-2024-11-20"),
    ("anthropic", "claude-sonnet-4-5-20250929", "anthropic", "claude-sonnet-4-5-20250929"),
    ("anthropic", "claude-3-haiku-20240307", "anthropic", "claude-3-haiku-20240307"),
    ("gemini", "models/gemini-2.5-flash", "google", "gemini-2.5-flash"),
    ("vertex_ai", "gemini-2.5-pro", "google", "gemini-2.5-pro"),
    (
        "bedrock",
        "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "aws",
        "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
    ),
    ("bedrock", "amazon.nova-micro-v1:0", "aws", "amazon.nova-micro-v1:0"),
    ("deepseek", "deepseek-chat", "deepseek", "deepseek-chat"),
    ("mistral", "mistral-large-latest", "mistral", "mistral-large-latest"),
    ("groq", "llama-3.3-70b-versatile", "groq", "llama-3.3-70b-versatile"),
    ("openrouter", "anthropic/claude-sonnet-4.6", "openrouter", "anthropic/claude-sonnet-4.6"),
    (
        "together",
        "meta-llama/Llama-3.3-70B-Instruct-Turbo",
        "together",
        "meta-llama/Llama-3.3-70B-Instruct-Turbo",
    ),
    ("cohere", "command-r7b-12-2024", "cohere", "command-r7b-12-2024"),
    ("zai", "glm-4.6v", "zai", "glm-4.6v"),
]


def genai_usage(usage: TokenUsage) -> genai_prices.Usage:
    """tokenbook's disjoint usage in genai-prices' terms: input and output include their parts."""
    cached = usage.cached_input or 0
    write = usage.cache_write or 0
    reasoning = usage.reasoning or 0
    return genai_prices.Usage(
        input_tokens=(usage.input or 0) + cached + write,
        cache_read_tokens=cached,
        cache_write_tokens=write,
        output_tokens=(usage.output or 0) + reasoning,
        output_reasoning_tokens=reasoning,
    )


def genai_calc(provider_id: str, model_ref: str, usage: TokenUsage, at: datetime = AT) -> Any:
    return genai_prices.calc_price(
        genai_usage(usage), model_ref, provider_id=provider_id, genai_request_timestamp=at
    )


def only(token_type: str, count: int) -> TokenUsage:
    return TokenUsage(**{token_type: count})


def model_price(provider_id: str, model_id: str) -> Any:
    provider = next(p for p in genai_providers if p.id == provider_id)
    info = next(m for m in provider.models if m.id == model_id)
    return info.get_prices(AT)


def base(value: Decimal | Any) -> float:
    return float(value.base if hasattr(value, "base") else value)


@pytest.fixture(scope="module")
def pricer() -> Pricer:
    return Pricer()


@pytest.mark.parametrize(("provider", "model", "genai_id", "ref"), KNOWN)
def test_split_matches_genai_prices(
    pricer: Pricer, provider: str, model: str, genai_id: str, ref: str
) -> None:
    price = pricer.price(provider, model, MIX, at=AT)
    assert price is not None
    calc = genai_calc(genai_id, ref, MIX)
    assert price.source == SOURCE_GENAI_PRICES
    assert price.matched_model == calc.model.id
    assert list(price.by_type) == list(TOKEN_TYPES)
    assert sum(price.by_type.values()) == price.total_usd
    prompt_usd = (
        price.by_type["input"] + price.by_type["cached_input"] + price.by_type["cache_write"]
    )
    completion_usd = price.by_type["output"] + price.by_type["reasoning"]
    assert prompt_usd == pytest.approx(float(calc.input_price), rel=1e-9)
    assert completion_usd == pytest.approx(float(calc.output_price), rel=1e-9)
    assert price.total_usd == pytest.approx(float(calc.total_price), rel=1e-9)
    assert price.total_usd > 0


@pytest.mark.parametrize(("provider", "model", "genai_id", "ref"), KNOWN)
@pytest.mark.parametrize("token_type", TOKEN_TYPES)
def test_each_type_matches_genai_prices(
    pricer: Pricer, provider: str, model: str, genai_id: str, ref: str, token_type: str
) -> None:
    usage = only(token_type, 7_000)
    price = pricer.price(provider, model, usage, at=AT)
    assert price is not None
    assert list(price.by_type) == [token_type]
    calc = genai_calc(genai_id, ref, usage)
    assert price.by_type[token_type] == pytest.approx(float(calc.total_price), rel=1e-9)


def test_anthropic_cache_reads_and_writes_at_their_own_rates(pricer: Pricer) -> None:
    rates = model_price("anthropic", "claude-sonnet-4-5")
    n = 10_000
    price = pricer.price(
        "anthropic",
        "claude-sonnet-4-5-20250929",
        TokenUsage(input=n, cached_input=n, cache_write=n),
    )
    assert price is not None
    assert price.by_type["input"] == pytest.approx(n * base(rates.input_mtok) / 1e6)
    assert price.by_type["cached_input"] == pytest.approx(n * base(rates.cache_read_mtok) / 1e6)
    assert price.by_type["cache_write"] == pytest.approx(n * base(rates.cache_write_mtok) / 1e6)
    # Writes cost more than plain input, reads much less: no fallback to the input rate happened.
    assert price.by_type["cache_write"] > price.by_type["input"] > price.by_type["cached_input"]


def test_openai_reasoning_priced_as_output(pricer: Pricer) -> None:
    rates = model_price("openai", "o3-mini")
    assert rates.output_reasoning_mtok is None  # the entry has no separate reasoning price
    price = pricer.price("openai", "o3-mini-2025-01-31", TokenUsage(output=1000, reasoning=3000))
    assert price is not None
    assert price.by_type["reasoning"] == pytest.approx(3000 * base(rates.output_mtok) / 1e6)
    assert price.by_type["reasoning"] == pytest.approx(3 * price.by_type["output"])


def test_own_reasoning_rate_is_used_where_the_entry_has_one(pricer: Pricer) -> None:
    model = "perplexity/sonar-deep-research"
    rates = model_price("openrouter", model)
    assert rates.output_reasoning_mtok is not None
    assert rates.output_reasoning_mtok != rates.output_mtok
    price = pricer.price("openrouter", model, TokenUsage(output=1000, reasoning=1000))
    assert price is not None
    assert price.by_type["reasoning"] == pytest.approx(
        1000 * base(rates.output_reasoning_mtok) / 1e6
    )
    assert price.by_type["output"] == pytest.approx(1000 * base(rates.output_mtok) / 1e6)


def test_cache_types_fall_back_to_input_rate_where_entry_has_none(pricer: Pricer) -> None:
    rates = model_price("groq", "llama-3.3-70b-versatile")
    assert rates.cache_read_mtok is None
    assert rates.cache_write_mtok is None
    price = pricer.price(
        "groq", "llama-3.3-70b-versatile", TokenUsage(input=100, cached_input=100, cache_write=100)
    )
    assert price is not None
    assert price.by_type["cached_input"] == price.by_type["input"] == price.by_type["cache_write"]


@pytest.mark.parametrize(
    ("provider", "model", "genai_id", "entry"),
    [
        ("anthropic", "claude-sonnet-4-5-20250929", "anthropic", "claude-sonnet-4-5"),
        ("gemini", "gemini-2.5-pro", "google", "gemini-2.5-pro"),
    ],
)
def test_tier_resolved_on_full_prompt(
    pricer: Pricer, provider: str, model: str, genai_id: str, entry: str
) -> None:
    tiers = model_price(genai_id, entry).input_mtok.tiers
    start = tiers[0].start
    # Only the cache reads push the prompt over the tier start; plain input is tiny.
    big = TokenUsage(input=1000, cached_input=start, output=100)
    small = TokenUsage(input=1000, cached_input=1000, output=100)
    price = pricer.price(provider, model, big, at=AT)
    price_small = pricer.price(provider, model, small, at=AT)
    assert price is not None
    assert price_small is not None
    assert price.total_usd == pytest.approx(float(genai_calc(genai_id, model, big).total_price))
    assert price.by_type["input"] == pytest.approx(1000 * float(tiers[0].price) / 1e6)
    assert price.by_type["input"] > price_small.by_type["input"]
    assert price.by_type["output"] > price_small.by_type["output"]


def test_price_follows_time_of_day_prices() -> None:
    """DeepSeek's off-peak price: a cached lookup expires at the boundary and is resolved again."""
    peak_time = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
    off_peak_time = datetime(2026, 12, 3, 17, 0, tzinfo=UTC)
    now = [peak_time.timestamp()]
    pricer = Pricer(clock=lambda: now[0])
    usage = TokenUsage(input=100_000, output=10_000)
    peak = pricer.price("deepseek", "deepseek-chat", usage)
    assert pricer.price("deepseek", "deepseek-chat", usage) == peak  # a hit before the boundary
    now[0] = off_peak_time.timestamp()
    off_peak = pricer.price("deepseek", "deepseek-chat", usage)
    assert peak is not None
    assert off_peak is not None
    expected_peak = genai_calc("deepseek", "deepseek-chat", usage, peak_time).total_price
    expected_off_peak = genai_calc("deepseek", "deepseek-chat", usage, off_peak_time).total_price
    assert peak.total_usd == pytest.approx(float(expected_peak))
    assert off_peak.total_usd == pytest.approx(float(expected_off_peak))
    assert off_peak.total_usd != peak.total_usd
    assert pricer.cache_info()[:2] == (1, 2)  # (hits, misses): resolved again after the boundary


def test_price_at_another_instant_bypasses_cache(pricer: Pricer) -> None:
    usage = TokenUsage(input=100_000, output=10_000)
    naive = pricer.price("deepseek", "deepseek-chat", usage, at=datetime(2026, 12, 3, 17, 0))
    aware = pricer.price(
        "deepseek", "deepseek-chat", usage, at=datetime(2026, 12, 3, 17, 0, tzinfo=UTC)
    )
    assert naive == aware  # naive datetimes are UTC, as in genai-prices


def test_overlong_model_id_is_not_priced_nor_cached() -> None:
    pricer = Pricer()
    assert pricer.price("openai", "gpt-4o" + "x" * 5000, MIX) is None
    assert pricer.cache_info().size == 0


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("openai", "this-model-does-not-exist"),
        ("openai", "gpt-4.1-nano-wrong"),
        ("anthropic", "claude-sonet-4-5"),
        ("gemini", "nonexistent-model"),
        ("bedrock", "us.does-not-exist-model-v1:0"),
        ("no-such-provider", "no-such-model"),
        ("openai", ""),
        # Local models have no list price, even where the name matches a hosted model.
        ("ollama", "llama3"),
        ("ollama", "gpt-oss:20b"),
        # Priced only per audio hour: no token price, so unknown rather than $0.
        ("openai", "whisper-1"),
    ],
)
def test_unknown_is_none_never_zero(pricer: Pricer, provider: str, model: str) -> None:
    assert pricer.price(provider, model, MIX) is None
    assert pricer.known(provider, model) is False


def test_rate_missing_for_a_stated_count_is_none(pricer: Pricer) -> None:
    """An embedding model has no output price: output tokens cannot be priced (not as $0)."""
    assert pricer.price("openai", "text-embedding-3-small", TokenUsage(input=100, output=0))
    assert pricer.price("openai", "text-embedding-3-small", TokenUsage(input=100, output=5)) is None


def test_free_entry_prices_at_zero(pricer: Pricer) -> None:
    price = pricer.price("openrouter", "google/gemini-2.0-flash-exp:free", MIX)
    assert price is not None
    assert price.total_usd == 0.0
    assert price.source == SOURCE_GENAI_PRICES


def test_only_stated_types_and_negative_counts() -> None:
    pricer = Pricer()
    price = pricer.price("openai", "gpt-4o", TokenUsage(input=10, output=None))
    assert price is not None
    assert list(price.by_type) == ["input"]
    empty = pricer.price("openai", "gpt-4o", TokenUsage())
    assert empty == Price({}, 0, SOURCE_GENAI_PRICES, "gpt-4o", "openai")
    assert pricer.price("openai", "gpt-4o", TokenUsage(input=-1)) is None


def test_override_wins_over_genai_prices() -> None:
    overrides = PriceOverrides(
        models=(
            ModelPriceOverride("openai", "gpt-4o", {"input": 1.0, "output": 2.0}),
            ModelPriceOverride("ollama", "llama3", {"input": 0.01, "output": 0.02, "reasoning": 5}),
        )
    )
    pricer = Pricer(overrides)
    price = pricer.price("openai", "GPT-4o", TokenUsage(input=1_000_000, cached_input=1_000_000))
    assert price is not None
    assert price.source == SOURCE_OVERRIDE
    assert price.matched_model == "gpt-4o"
    # cached_input not stated: the input rate.
    assert price.by_type == {"input": 1.0, "cached_input": 1.0}
    # The same model elsewhere is still genai-prices'.
    other = pricer.price("azure_openai", "gpt-4o", TokenUsage(input=1_000_000))
    assert other is not None
    assert other.source == SOURCE_GENAI_PRICES
    local = pricer.price("ollama", "llama3", TokenUsage(output=1_000_000, reasoning=1_000_000))
    assert local is not None
    assert local.by_type == {"output": 0.02, "reasoning": 5.0}
    assert pricer.known("ollama", "llama3")


def test_override_matches_normalised_model_id() -> None:
    overrides = PriceOverrides(
        models=(ModelPriceOverride("gemini", "my-tuned-gemini", {"input": 1.0, "output": 2.0}),)
    )
    price = Pricer(overrides).price(
        "gemini", "models/my-tuned-gemini", TokenUsage(output=1_000_000)
    )
    assert price is not None
    assert price.total_usd == 2.0


def test_discount_applies_to_genai_prices_and_overrides() -> None:
    entry = ModelPriceOverride("openai", "my-deployment", {"input": 1.0, "output": 2.0})
    plain = Pricer(PriceOverrides(models=(entry,)))
    discounted = Pricer(PriceOverrides(models=(entry,), discounts={"openai": 0.8}))
    for model in ("gpt-4o-2024-08-06", "my-deployment"):
        full = plain.price("openai", model, MIX)
        cut = discounted.price("openai", model, MIX)
        assert full is not None
        assert cut is not None
        assert cut.total_usd == pytest.approx(0.8 * full.total_usd)
        for token_type, usd in full.by_type.items():
            assert cut.by_type[token_type] == pytest.approx(0.8 * usd)
        assert sum(cut.by_type.values()) == cut.total_usd
    # Other providers are untouched.
    assert discounted.price("anthropic", "claude-3-haiku", MIX) == plain.price(
        "anthropic", "claude-3-haiku", MIX
    )


def test_cache_hit_returns_identical_price_and_counts() -> None:
    pricer = Pricer()
    first = pricer.price("anthropic", "claude-sonnet-4-5-20250929", MIX)
    second = pricer.price("anthropic", "claude-sonnet-4-5-20250929", MIX)
    assert first is not None
    assert first == second
    assert pricer.price("openai", "nope-model", MIX) is None
    assert pricer.price("openai", "nope-model", MIX) is None  # negative result cached too
    info = pricer.cache_info()
    assert (info.hits, info.misses, info.size) == (2, 2, 2)


def test_cache_is_bounded_lru() -> None:
    pricer = Pricer(cache_size=2)
    for model in ("gpt-4o", "gpt-4o-mini", "gpt-4o"):
        pricer.price("openai", model, MIX)
    pricer.price("openai", "o3-mini", MIX)  # evicts gpt-4o-mini, the least recently used
    assert pricer.cache_info().size == 2
    pricer.price("openai", "gpt-4o", MIX)
    assert pricer.cache_info().hits == 2
    pricer.price("openai", "gpt-4o-mini", MIX)
    assert pricer.cache_info().misses == 4
    uncached = Pricer(cache_size=0)
    assert uncached.price("openai", "gpt-4o", MIX) == pricer.price("openai", "gpt-4o", MIX)
    assert uncached.cache_info().size == 0
    with pytest.raises(ValueError, match="cache_size"):
        Pricer(cache_size=-1)


def test_cheaper_alternatives_same_provider(pricer: Pricer) -> None:
    usage = TokenUsage(input=20_000, cached_input=5_000, output=2_000)
    current = pricer.price("openai", "gpt-4o", usage)
    assert current is not None
    alternatives = pricer.cheaper_alternatives("openai", usage, model="gpt-4o", limit=5)
    assert len(alternatives) == 5
    totals = [usd for _, _, usd in alternatives]
    assert totals == sorted(totals)
    for provider, model, usd in alternatives:
        assert provider == "openai"
        assert 0 < usd < current.total_usd
        again = pricer.price(provider, model, usage)
        assert again is not None
        assert again.total_usd == pytest.approx(usd)
        assert again.matched_model != current.matched_model
    assert pricer.cheaper_alternatives("openai", usage, model="no-such-model") == []
    assert pricer.cheaper_alternatives("openai", usage, model="gpt-4o", limit=0) == []
    with pytest.raises(ValueError, match="provider"):
        pricer.cheaper_alternatives(None, usage, model="gpt-4o")


def test_cheaper_alternatives_across_providers_and_overrides() -> None:
    usage = TokenUsage(input=20_000, output=2_000)
    cheap = ModelPriceOverride("ollama", "llama3", {"input": 0.000001, "output": 0.000001})
    pricer = Pricer(PriceOverrides(models=(cheap,)))
    everywhere = pricer.cheaper_alternatives(None, usage, limit=3)
    assert everywhere[0][:2] == ("ollama", "llama3")
    assert (
        len({provider for provider, _, _ in pricer.cheaper_alternatives(None, usage, limit=50)}) > 1
    )
    current = pricer.price("anthropic", "claude-sonnet-4-5", usage)
    assert current is not None
    same = pricer.cheaper_alternatives("anthropic", usage, model="claude-sonnet-4-5", limit=50)
    assert same
    assert all(p == "anthropic" and usd < current.total_usd for p, _, usd in same)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    attempts: list[str] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(repr(args))
        raise OSError("network disabled by test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


def test_no_network_and_no_updater(no_network: list[str]) -> None:
    pricer = Pricer(catalogue=Catalogue(genai_providers))
    for provider, model, _, _ in KNOWN:
        assert pricer.price(provider, model, MIX) is not None
    assert pricer.cheaper_alternatives(None, MIX)
    assert no_network == []
    assert not any(t.name == "genai_prices:update" for t in threading.enumerate())
    assert update_prices._shared_updater.ref_count == 0


def test_independent_of_genai_prices_custom_snapshot() -> None:
    """If another library installs an auto-updated snapshot, tokenbook keeps the bundled one."""
    before = Pricer().price("openai", "gpt-4o", MIX)
    data_snapshot.set_custom_snapshot(
        data_snapshot.DataSnapshot(providers=[], from_auto_update=True)
    )
    try:
        with pytest.raises(LookupError):
            genai_prices.calc_price(genai_usage(MIX), "gpt-4o", provider_id="openai")
        assert Pricer().price("openai", "gpt-4o", MIX) == before
    finally:
        data_snapshot.set_custom_snapshot(None)
    assert before is not None
