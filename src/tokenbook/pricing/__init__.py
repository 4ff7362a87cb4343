"""Pricing: genai-prices' bundled snapshot (no network at run time) plus operator overrides.

Entry points: `Pricer` (``price``, ``known``, ``cheaper_alternatives``), `load_overrides` /
`parse_overrides` for the override file, and the `Price` value. How prices are found and why no
price is ever downloaded: see `tokenbook.pricing.catalogue`; the override file format:
`tokenbook.pricing.overrides` and ``deploy/prices.example.yaml``.
"""

from tokenbook.pricing.errors import PriceConfigError
from tokenbook.pricing.model import SOURCE_GENAI_PRICES, SOURCE_OVERRIDE, Price
from tokenbook.pricing.overrides import (
    ModelPriceOverride,
    PriceOverrides,
    load_overrides,
    parse_overrides,
)
from tokenbook.pricing.pricer import NO_OVERRIDES, CacheInfo, Pricer

__all__ = [
    "NO_OVERRIDES",
    "SOURCE_GENAI_PRICES",
    "SOURCE_OVERRIDE",
    "CacheInfo",
    "ModelPriceOverride",
    "Price",
    "PriceConfigError",
    "PriceOverrides",
    "Pricer",
    "load_overrides",
    "parse_overrides",
]
