"""genai-prices' bundled price snapshot, read-only, resolved into tokenbook `RateCard` s.

**No network, ever.** genai-prices can replace its prices at run time: ``genai_prices.UpdatePrices``
(also ``genai-prices calc --update-prices``) starts a background thread that downloads
``prices/new_data/v2/data.json`` from GitHub every hour and installs it process-wide with
``data_snapshot.set_custom_snapshot``; ``genai_prices.calc_price`` then uses that download.
tokenbook never starts ``UpdatePrices`` and never calls ``calc_price`` or ``get_snapshot``: it reads
the provider list that ships inside the installed wheel (``genai_prices.data.providers``) once,
and keeps its own reference to it. So even if another library in the same process starts an
updater, tokenbook's prices stay those of the installed genai-prices version; updating prices
means upgrading the package (and the test suite re-checks the corpus models). The snapshot's own
lookup caches (``DataSnapshot._lookup_cache`` and friends) are unbounded and keyed by model name,
which a client can choose, so they are not used either; `Pricer` keeps a bounded LRU instead.

Mapping onto genai-prices' usage model (``genai_prices.data_units``): its ``input_tokens`` is the
*whole* prompt, cache reads and writes included (``cache_read_tokens`` and ``cache_write_tokens``
are sub-units of it, priced as leaves), and its ``output_tokens`` includes
``output_reasoning_tokens``. tokenbook's `TokenUsage` is disjoint, so each tokenbook type gets
one rate:

=============  =====================================================================
input          ``input_mtok``
cached_input   ``cache_read_mtok``; the input rate where the entry has none (genai-prices
               does the same: unpriced cache reads stay in ``input_tokens``)
cache_write    ``cache_write_mtok`` (Anthropic's 5-minute write); the input rate where none
output         ``output_mtok``
reasoning      ``output_reasoning_mtok`` where the entry has one, else the output rate
=============  =====================================================================

Tiers (e.g. Anthropic's and Gemini's >200k-token prompts) are resolved on the full prompt,
``input + cached_input + cache_write``, as genai-prices does. Not applied, because `TokenUsage`
does not carry them: modality rates (audio/image/video tokens are priced at the text rate), the
1-hour cache-write rate, per-request fees and tool/search fees, and service-tier or batch
variants (``price_variants``; the standard price is used). Date- and time-of-day-dependent prices
(``ConditionalPrice``, e.g. DeepSeek's off-peak hours) are resolved at the request time, and every
match says until when it holds so that the pricer's cache can expire it at that boundary.

An entry with no price at all (OpenRouter ``:free`` variants, Gemma on the Gemini API) is free:
genai-prices prices it at $0 and so does tokenbook. An entry priced only in other units (Whisper
per audio hour, TTS per character, OCR per page) has no token price and is treated as unknown.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

from tokenbook.pricing.model import SOURCE_GENAI_PRICES
from tokenbook.pricing.names import bedrock_candidates, generic_candidates
from tokenbook.pricing.providers import HUGGINGFACE_PREFIX, ROUTES, Route
from tokenbook.pricing.rates import FREE, Rate, RateCard, Rates

# Offers that are not a like-for-like alternative to an interactive request.
_NOT_ALTERNATIVE_SUFFIXES = (":batch",)


@dataclass(frozen=True, slots=True)
class Match:
    """A resolved rate card and the instant (epoch seconds) until which it holds."""

    card: RateCard
    valid_until: float = math.inf


@dataclass(frozen=True, slots=True)
class Offer:
    """One priced model a tokenbook provider sells (for cheaper-alternative searches)."""

    provider: str  # tokenbook provider id
    model: str  # the id to show, and to pass to `Pricer.price`
    info: Any  # genai_prices.types.ModelInfo
    genai_provider: str


class Catalogue:
    """Read-only view of a genai-prices provider list, for tokenbook provider ids."""

    def __init__(self, providers: Sequence[Any], version: str = "") -> None:
        # Imported here, not at module level: genai_prices pulls in pydantic and httpx2 (~0.3 s),
        # which commands that never price anything should not pay for.
        from genai_prices import data_snapshot, types

        self.version = version
        self._types = types
        self._find_provider_by_id = data_snapshot.find_provider_by_id
        self._providers = list(providers)
        self._by_id: dict[str, Any] = {p.id: p for p in self._providers}
        self._huggingface: dict[str, Any] = {
            p.id.removeprefix(HUGGINGFACE_PREFIX).lower(): p
            for p in self._providers
            if p.id.startswith(HUGGINGFACE_PREFIX)
        }

    @property
    def provider_ids(self) -> frozenset[str]:
        return frozenset(self._by_id)

    # -- lookups -------------------------------------------------------------------------------

    def route(self, provider: str) -> Route:
        """The `ROUTES` row, or one built with genai-prices' own provider-id matching."""
        route = ROUTES.get(provider)
        if route is not None:
            return route
        found = self._find_provider_by_id(self._providers, provider)
        if found is None:
            return Route(cross_provider=True)
        return Route((found.id,), bedrock_ids=found.id == "aws")

    def lookup(self, provider: str, model: str, at: datetime) -> Match | None:
        """The rate card for ``model`` as ``provider`` reports it, at time ``at`` (UTC)."""
        route = self.route(provider)
        if route.local or not model.strip():
            return None
        candidates = bedrock_candidates(model) if route.bedrock_ids else generic_candidates(model)
        if route.huggingface_router:
            return self._huggingface_router(candidates, at)
        for candidate in candidates:
            for genai_id in route.genai_ids:
                info = self._by_id[genai_id].find_model(candidate, all_providers=self._providers)
                if info is not None:
                    return self.match(info, genai_id, at)
        if route.vendor_fallback:
            found = self._vendor(candidates, at)
            if found is not None:
                return found
        if route.cross_provider:
            return self._across_providers(candidates, at)
        return None

    def _vendor(self, candidates: list[str], at: datetime) -> Match | None:
        """OpenRouter ``vendor/model`` -> the vendor's own list price (OpenRouter passes it on).

        Variant ids (``:free``, ``:nitro``, ...) are not mapped: their price is not the vendor's.
        """
        for candidate in candidates:
            vendor, sep, name = candidate.partition("/")
            if not sep or ":" in name:
                continue
            found = self._find_provider_by_id(self._providers, vendor)
            if found is None or found.id == "openrouter":
                continue
            info = found.find_model(name, all_providers=self._providers)
            if info is not None:
                return self.match(info, found.id, at)
        return None

    def _across_providers(self, candidates: list[str], at: datetime) -> Match | None:
        """A provider genai-prices does not know: match the model only where unambiguous.

        First genai-prices' own inference of whose model a name is (each provider's
        ``model_match``, e.g. ``claude…`` -> anthropic, ``gpt-…`` -> openai: the maker's list
        price). Failing that, every provider that lists the model; accepted only if exactly one
        does, or all of them charge the same rates.
        """
        for candidate in candidates:
            for p in self._providers:
                if p.model_match is not None and p.model_match.is_match(candidate):
                    info = p.find_model(candidate, all_providers=self._providers)
                    if info is not None:
                        return self.match(info, p.id, at)
                    break
        for candidate in candidates:
            hits = [(p.id, info) for p in self._providers if (info := p.find_model(candidate))]
            if hits:
                return self._unambiguous(hits, at)
        return None

    def _huggingface_router(self, candidates: list[str], at: datetime) -> Match | None:
        """``org/model:backend`` -> that backend's price; without a known backend suffix (or
        with a routing policy such as ``:fastest``) only if all backends charge the same."""
        for candidate in candidates:
            name, sep, suffix = candidate.rpartition(":")
            if sep and suffix.lower() in self._huggingface:
                backend = self._huggingface[suffix.lower()]
                info = backend.find_model(name)
                return None if info is None else self.match(info, backend.id, at)
            base = name if sep else candidate
            hits = [
                (p.id, info) for p in self._huggingface.values() if (info := p.find_model(base))
            ]
            if hits:
                return self._unambiguous(hits, at)
        return None

    def _unambiguous(self, hits: list[tuple[str, Any]], at: datetime) -> Match | None:
        matches = [self.match(info, provider_id, at) for provider_id, info in hits]
        first = matches[0] if matches else None
        if first is None or any(m is None or m.card.rates != first.card.rates for m in matches):
            return None
        valid_until = min(m.valid_until for m in matches if m is not None)
        return Match(first.card, valid_until)

    # -- price entries -------------------------------------------------------------------------

    def match(self, info: Any, provider_id: str, at: datetime) -> Match | None:
        """The rate card of one genai-prices model entry at ``at``; None without a token price."""
        rates = self._rates(info.get_prices(at))
        if rates is None:
            return None
        card = RateCard(rates, SOURCE_GENAI_PRICES, info.id, provider_id)
        return Match(card, self._valid_until(info, at))

    def offers(self, provider: str | None) -> list[Offer]:
        """Models ``provider`` sells (its own catalogue entries), or those of every provider."""
        if provider is None:
            out: list[Offer] = []
            seen: set[str] = set()
            for tb_id, route in ROUTES.items():
                if route.huggingface_router:
                    key = HUGGINGFACE_PREFIX
                elif route.genai_ids:
                    key = route.genai_ids[0]
                else:
                    continue
                if key not in seen:
                    seen.add(key)
                    out.extend(self.offers(tb_id))
            return out
        route = self.route(provider)
        if route.huggingface_router:
            return [
                Offer(provider, f"{info.id}:{backend}", info, p.id)
                for backend, p in self._huggingface.items()
                for info in p.models
                if _alternative(info)
            ]
        return [
            Offer(provider, info.id, info, genai_id)
            for genai_id in route.genai_ids
            for info in self._by_id[genai_id].models
            if _alternative(info)
        ]

    def _rates(self, model_price: Any) -> Rates | None:
        stated = {
            k: v for k, v in vars(model_price).items() if v is not None and not k.startswith("_")
        }
        if not stated:
            return Rates(FREE, FREE, FREE, FREE, FREE)
        input_rate = self._rate(stated.get("input_mtok"))
        output_rate = self._rate(stated.get("output_mtok"))
        if input_rate is None and output_rate is None:
            return None
        cached = self._rate(stated.get("cache_read_mtok"))
        write = self._rate(stated.get("cache_write_mtok"))
        reasoning = self._rate(stated.get("output_reasoning_mtok"))
        return Rates(
            input=input_rate,
            cached_input=input_rate if cached is None else cached,
            cache_write=input_rate if write is None else write,
            output=output_rate,
            reasoning=output_rate if reasoning is None else reasoning,
        )

    def _rate(self, value: Any) -> Rate | None:
        if value is None:
            return None
        if isinstance(value, self._types.TieredPrices):
            return Rate.tiered(float(value.base), [(t.start, float(t.price)) for t in value.tiers])
        return Rate(float(value))

    def _valid_until(self, info: Any, at: datetime) -> float:
        """The next instant at which the entry's conditional prices may switch (or infinity)."""
        if isinstance(info.prices, self._types.ModelPrice):
            return math.inf
        at = _utc(at)
        until = math.inf
        for conditional in info.prices:
            constraint = conditional.constraint
            if isinstance(constraint, self._types.StartDateConstraint):
                boundary = datetime.combine(constraint.start_date, time(), UTC)
                if boundary > at:
                    until = min(until, boundary.timestamp())
            elif isinstance(constraint, self._types.TimeOfDateConstraint):
                for clock in (constraint.start_time, constraint.end_time):
                    until = min(until, _next_time_of_day(clock, at))
        return until


def _alternative(info: Any) -> bool:
    return not info.deprecated and not str(info.id).endswith(_NOT_ALTERNATIVE_SUFFIXES)


def _utc(at: datetime) -> datetime:
    """Naive datetimes are UTC (as in genai-prices)."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _next_time_of_day(clock: time, at: datetime) -> float:
    """Epoch seconds of the next occurrence of ``clock`` (naive = UTC) strictly after ``at``."""
    if clock.tzinfo is None:
        clock = clock.replace(tzinfo=UTC)
    # Start a day early: a clock with a UTC offset can fall on the previous UTC day.
    candidate = datetime.combine(at.date(), clock).astimezone(UTC) - timedelta(days=1)
    while candidate <= at:
        candidate += timedelta(days=1)
    return candidate.timestamp()


@functools.cache
def bundled_catalogue() -> Catalogue:
    """The catalogue of the genai-prices version installed (its bundled data, never a download)."""
    import genai_prices
    from genai_prices import data

    return Catalogue(data.providers, version=genai_prices.__version__)
