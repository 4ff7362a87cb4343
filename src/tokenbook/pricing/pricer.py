"""`Pricer`: (provider, model, usage) -> `Price`, from overrides or genai-prices' bundled data.

Resolution order for one (provider, model):

1. an operator override entry for that provider and model (`overrides`);
2. genai-prices' bundled snapshot, through the provider table (`providers`), the model id
   normalisation (`names`) and genai-prices' own model matching (`catalogue`);
3. otherwise unknown: `price` returns ``None`` (never $0) and the caller counts it.

The provider's discount from the override file multiplies the result of 1 or 2.

Lookups are cached per (provider, model) in an LRU of ``cache_size`` entries, negative results
included, so that pricing a usage is a dict hit and five multiplications (run
``python -m tokenbook.pricing.bench``). An entry whose genai-prices price changes at a date or
time of day (``ConditionalPrice``) expires at that instant and is resolved again. The LRU bounds
memory: model ids come from provider responses and request bodies, which clients influence.
A `Pricer` is meant for one event loop (it is not locked); build one per thread otherwise.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import NamedTuple

from tokenbook.pricing.catalogue import Catalogue, Offer, bundled_catalogue
from tokenbook.pricing.errors import PriceConfigError
from tokenbook.pricing.model import SOURCE_OVERRIDE, Price
from tokenbook.pricing.names import generic_candidates
from tokenbook.pricing.overrides import ModelPriceOverride, PriceOverrides
from tokenbook.pricing.providers import ROUTES
from tokenbook.pricing.rates import Rate, RateCard, Rates
from tokenbook.usage.types import TokenUsage

_INF = math.inf
# Longer model ids are not real ones (ARNs are ~130 characters); they are neither matched
# (matching costs time per character) nor cached (the cache would hold the strings).
MAX_MODEL_ID = 512

#: The default: no operator overrides.
NO_OVERRIDES = PriceOverrides()

# (rate card or None for "cannot be priced", epoch seconds until which it holds)
_Entry = tuple[RateCard | None, float]


class CacheInfo(NamedTuple):
    hits: int
    misses: int
    size: int
    maxsize: int


class Pricer:
    """Prices usages. Never raises for traffic; ``None`` means "cannot be priced"."""

    def __init__(
        self,
        overrides: PriceOverrides = NO_OVERRIDES,
        *,
        cache_size: int = 4096,
        catalogue: Catalogue | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self._catalogue = catalogue if catalogue is not None else bundled_catalogue()
        self._clock = clock
        self._cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._hits = 0
        self._misses = 0
        self._discounts = dict(overrides.discounts)
        self._overrides = {
            (o.provider, o.model.lower()): _override_card(o) for o in overrides.models
        }
        self._override_models = overrides.models
        self._offer_cache: dict[str | None, tuple[list[tuple[Offer, RateCard]], float]] = {}

    @property
    def catalogue_version(self) -> str:
        """The genai-prices version whose bundled prices are used (for logs and the audit)."""
        return self._catalogue.version

    def price(
        self, provider: str, model: str, usage: TokenUsage, *, at: datetime | None = None
    ) -> Price | None:
        """USD for ``usage`` of ``model`` at ``provider``; ``None`` if it cannot be priced.

        ``at`` (default: now) prices at another instant, e.g. when re-pricing a ledger; such
        lookups bypass the cache.
        """
        if at is None:
            card = self._card(provider, model)
        elif len(model) > MAX_MODEL_ID:
            card = None
        else:
            ts = at.replace(tzinfo=UTC) if at.tzinfo is None else at
            card = self._resolve(provider, model, ts.timestamp())[0]
        return None if card is None else card.price(usage)

    def known(self, provider: str, model: str) -> bool:
        """Whether ``model`` at ``provider`` has a price (override or genai-prices)."""
        return self._card(provider, model) is not None

    def cheaper_alternatives(
        self,
        provider: str | None,
        usage: TokenUsage,
        *,
        model: str | None = None,
        limit: int = 5,
    ) -> list[tuple[str, str, float]]:
        """(provider, model, total_usd) of models that would cost less for this token mix.

        With ``model``, only models cheaper than it (at ``provider``) are returned, and none if
        it cannot be priced; without, the cheapest models for the mix. ``provider`` limits the
        search to that provider's own catalogue (its genai-prices entries plus its override
        entries); ``None`` searches every provider tokenbook routes to. Cheapest first. Free
        entries ($0: OpenRouter ``:free`` variants and the like), deprecated models and batch
        variants are left out: they are not a like-for-like replacement for a paid interactive
        request.
        """
        if limit <= 0:
            return []
        current: Price | None = None
        if model is not None:
            if provider is None:
                raise ValueError("cheaper_alternatives: 'model' needs its 'provider'")
            current = self.price(provider, model, usage)
            if current is None:
                return []
        found: list[tuple[str, str, float]] = []
        for offer, card in self._offer_cards(provider):
            price = card.price(usage)
            if price is None or price.total_usd <= 0:
                continue
            if current is not None:
                if price.total_usd >= current.total_usd:
                    continue
                if offer.provider == provider and card.matched_model == current.matched_model:
                    continue
            found.append((offer.provider, offer.model, price.total_usd))
        for entry in self._override_models:
            if provider is not None and entry.provider != provider:
                continue
            price = self.price(entry.provider, entry.model, usage)
            if price is None or price.total_usd <= 0:
                continue
            if current is not None and price.total_usd >= current.total_usd:
                continue
            found.append((entry.provider, entry.model, price.total_usd))
        found.sort(key=lambda item: (item[2], item[0], item[1]))
        return found[:limit]

    def cache_info(self) -> CacheInfo:
        return CacheInfo(self._hits, self._misses, len(self._cache), self._cache_size)

    # -- internals -----------------------------------------------------------------------------

    def _card(self, provider: str, model: str) -> RateCard | None:
        if len(model) > MAX_MODEL_ID:
            return None
        key = (provider, model)
        cache = self._cache
        entry = cache.get(key)
        if entry is not None and (entry[1] == _INF or self._clock() < entry[1]):
            cache.move_to_end(key)
            self._hits += 1
            return entry[0]
        self._misses += 1
        entry = self._resolve(provider, model, self._clock())
        if self._cache_size:
            cache[key] = entry
            cache.move_to_end(key)
            if len(cache) > self._cache_size:
                cache.popitem(last=False)
        return entry[0]

    def _resolve(self, provider: str, model: str, now: float) -> _Entry:
        discount = self._discounts.get(provider, 1.0)
        if self._overrides:
            for candidate in generic_candidates(model):
                card = self._overrides.get((provider, candidate.lower()))
                if card is not None:
                    return card.discounted(discount), _INF
        match = self._catalogue.lookup(provider, model, datetime.fromtimestamp(now, UTC))
        if match is None:
            return None, _INF
        return match.card.discounted(discount), match.valid_until

    def _offer_cards(self, provider: str | None) -> list[tuple[Offer, RateCard]]:
        """Every offer of ``provider`` with its discounted card, cached until a price changes."""
        now = self._clock()
        cached = self._offer_cache.get(provider)
        if cached is not None and now < cached[1]:
            return cached[0]
        at = datetime.fromtimestamp(now, UTC)
        cards: list[tuple[Offer, RateCard]] = []
        valid_until = _INF
        for offer in self._catalogue.offers(provider):
            match = self._catalogue.match(offer.info, offer.genai_provider, at)
            if match is None:
                continue
            valid_until = min(valid_until, match.valid_until)
            cards.append((offer, match.card.discounted(self._discounts.get(offer.provider, 1.0))))
        # Only tokenbook's own provider ids (and None) are kept: a bounded set of keys.
        if provider is None or provider in ROUTES:
            self._offer_cache[provider] = (cards, valid_until)
        return cards


def _override_card(entry: ModelPriceOverride) -> RateCard:
    """Rates of an override entry, with the documented fallbacks for unstated types."""
    per = entry.per_mtok
    missing = [name for name in ("input", "output") if name not in per]
    if missing:
        raise PriceConfigError(
            f"price override {entry.provider}/{entry.model}: missing {', '.join(missing)}"
        )
    input_rate = Rate(per["input"])
    output_rate = Rate(per["output"])
    rates = Rates(
        input=input_rate,
        cached_input=Rate(per["cached_input"]) if "cached_input" in per else input_rate,
        cache_write=Rate(per["cache_write"]) if "cache_write" in per else input_rate,
        output=output_rate,
        reasoning=Rate(per["reasoning"]) if "reasoning" in per else output_rate,
    )
    return RateCard(rates, SOURCE_OVERRIDE, entry.model, entry.provider)
