"""The value every price lookup returns.

A `Price` is what one request cost, split by DESIGN.md's disjoint token types. It is only ever
built for a usage that could be priced: "cannot be priced" is `None` at the call site, never a
`Price` of $0 (a zero total means the price entry really is free, e.g. an OpenRouter ``:free``
model, or the usage was zero tokens).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: `Price.source` values.
SOURCE_GENAI_PRICES = "genai-prices"
SOURCE_OVERRIDE = "override"


@dataclass(frozen=True, slots=True)
class Price:
    """USD cost of one usage.

    ``by_type`` holds an entry for every token type the usage stated (``TokenUsage.items()``), in
    `TOKEN_TYPES` order, and ``total_usd == sum(by_type.values())`` exactly (same summation
    order). Treat ``by_type`` as read-only; it is a plain dict so that it serialises as is.
    """

    by_type: Mapping[str, float]  # USD per token_type
    total_usd: float
    source: str  # SOURCE_GENAI_PRICES | SOURCE_OVERRIDE
    matched_model: (
        str  # id of the price entry that matched (genai-prices model id or override model)
    )
    matched_provider: str = (
        ""  # genai-prices provider id of that entry; tokenbook's id for overrides
    )
