"""Rate cards: USD per million tokens for each of tokenbook's token types, and the arithmetic.

A `RateCard` is what a price lookup resolves to once (from genai-prices or an override) and what
the pricer caches; turning a `TokenUsage` into a `Price` is then a handful of multiplications.

Tiers follow genai-prices' "cliff" model: a tier's rate applies to *all* tokens of the request
once the full prompt (``input + cached_input + cache_write``, which is what genai-prices calls
``input_tokens``) exceeds the tier's start, and it applies to every token type that has tiers,
output included. For example a 250k-token prompt on a model with a ">200k" tier pays the tier
rate for its input, cache and output tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from tokenbook.pricing.model import Price
from tokenbook.usage.types import TokenUsage

_PER_MTOK = 1_000_000


@dataclass(frozen=True, slots=True)
class Rate:
    """USD per million tokens, optionally tiered by prompt size."""

    base: float
    tiers: tuple[tuple[int, float], ...] = ()  # (start, USD/MTok), sorted by start, descending

    def at(self, prompt_tokens: int) -> float:
        """The rate for a request whose full prompt has ``prompt_tokens`` tokens."""
        for start, rate in self.tiers:
            if prompt_tokens > start:
                return rate
        return self.base

    @staticmethod
    def tiered(base: float, tiers: list[tuple[int, float]]) -> Rate:
        return Rate(base, tuple(sorted(tiers, key=lambda t: t[0], reverse=True)))


FREE = Rate(0.0)


@dataclass(frozen=True, slots=True)
class Rates:
    """One rate per token type; ``None`` = the price entry has no rate for it.

    A usage that states a non-zero count for a type without a rate cannot be priced (it is never
    priced as $0). The fallbacks (cache reads and writes at the input rate, reasoning at the output
    rate) are applied by whoever builds the `Rates`, so that they are visible in one place.
    """

    input: Rate | None
    cached_input: Rate | None
    cache_write: Rate | None
    output: Rate | None
    reasoning: Rate | None


# Per token type: (name, USD per token at the base rate, ((start, USD per token), ...) tiers).
_Plan = tuple[tuple[str, float | None, tuple[tuple[int, float], ...]], ...]


@dataclass(frozen=True, slots=True)
class RateCard:
    """Rates plus where they came from and the provider discount to apply."""

    rates: Rates
    source: str
    matched_model: str
    matched_provider: str
    multiplier: float = 1.0  # negotiated discount of the tokenbook provider (0.9 = 10% off)
    # Rates pre-scaled to USD per token with the multiplier applied: the hot path multiplies once.
    _plan: _Plan = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        scale = self.multiplier / _PER_MTOK
        plan = tuple(
            (name, None, ())
            if rate is None
            else (name, rate.base * scale, tuple((start, r * scale) for start, r in rate.tiers))
            for name, rate in (
                ("input", self.rates.input),
                ("cached_input", self.rates.cached_input),
                ("cache_write", self.rates.cache_write),
                ("output", self.rates.output),
                ("reasoning", self.rates.reasoning),
            )
        )
        object.__setattr__(self, "_plan", plan)

    def discounted(self, multiplier: float) -> RateCard:
        if multiplier == 1.0:
            return self
        return replace(self, multiplier=self.multiplier * multiplier)

    def price(self, usage: TokenUsage) -> Price | None:
        """USD for ``usage``; ``None`` if a stated non-zero count has no rate or is negative."""
        inp, cached, write = usage.input, usage.cached_input, usage.cache_write
        prompt = (inp or 0) + (cached or 0) + (write or 0)
        by_type: dict[str, float] = {}
        counts = (inp, cached, write, usage.output, usage.reasoning)
        for (name, per_token, tiers), count in zip(self._plan, counts, strict=True):
            if count is None:
                continue
            if count <= 0:
                if count < 0:
                    return None
                by_type[name] = 0.0
                continue
            if per_token is None:
                return None
            for start, tier_per_token in tiers:
                if prompt > start:
                    per_token = tier_per_token
                    break
            by_type[name] = count * per_token
        total = sum(by_type.values(), 0.0)
        if not math.isfinite(total):
            return None
        return Price(
            by_type=by_type,
            total_usd=total,
            source=self.source,
            matched_model=self.matched_model,
            matched_provider=self.matched_provider,
        )
